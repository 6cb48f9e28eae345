"""A bounded schemathesis run against the live service: every operation in ``/openapi.json`` is
called with generated requests (valid and invalid) on a real uvicorn socket, with every check on:
no 5xx, no hang, status codes, content types, headers and bodies as documented (for ``/build``,
every ``data:`` frame against the event union).

The service runs twice: BinderHub's default (anonymous) under the prefix of a JupyterHub service
named ``build``, and auth mode at the root. Nothing leaves this machine and no build starts: every
provider's API and the hub are closed loopback ports, `git`/`ckan` specs are allowed for loopback
URLs only (they carry their own host), the Docker engine is a socket that does not exist, and there
is no registry. A `/build` request therefore ends in one `failed` event, at the latest after the
provider is asked.

Bounded and repeatable: at most ``MAX_EXAMPLES`` generated requests per operation (the coverage
phase adds its boundary cases), a fixed seed and derandomized generation, so every run sends the
same requests; a request slower than 10 s fails the run and one that hangs is cut at 20 s.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import BaseModel, TypeAdapter, ValidationError

from binderapi.app import create_app
from binderapi.events import (
    BuildingEvent,
    BuildReadyEvent,
    BuildStreamEvent,
    BuiltEvent,
    FailedEvent,
    FetchingEvent,
    LaunchingEvent,
    LaunchReadyEvent,
    LogEvent,
    PushingEvent,
    UnknownEvent,
    WaitingEvent,
    encode,
)
from binderapi.settings.models import DEFAULT_REPO_PROVIDERS
from fixtures.server import EVENT_STREAM, free_port, make_settings, read_events, serve
from fixtures.stack import BASE_IMAGE, docker_settings, git_spec, unique

#: examples per operation (the coverage phase adds its own boundary cases on top)
MAX_EXAMPLES = 100
SEED = 1010
PROVIDERS = sorted(DEFAULT_REPO_PROVIDERS)


def closed_port_url() -> str:
    """A loopback URL nothing listens on: an upstream call fails at once, locally."""
    return f"http://127.0.0.1:{free_port()}"


#: the two services fuzzed: BinderHub's default, under the prefix of a JupyterHub service named
#: ``build`` (a base URL holding ``/build/``), and auth mode at the root, its hub a closed port too
MODES: dict[str, dict[str, Any]] = {
    "anonymous": {"base_url": "/services/build/"},
    "auth": {"auth_enabled": True, "hub_api_token": "schemathesis"},
}


def service_settings(mode: str):
    nowhere = closed_port_url()
    loopback_only = [r"https?%3A%2F%2F127\.0\.0\.1[%:/]"]
    fast = {"retries": 1, "request_timeout": 2}
    return make_settings(
        {
            "DockerBuildExecutor": {"docker_host": "unix:///nonexistent/binderapi-schemathesis.sock"},
            "RepoProvider": fast,
            "GitHubRepoProvider": {"api_base_path": nowhere},
            "GistRepoProvider": {"api_base_path": nowhere},
            "GitLabRepoProvider": {"api_base_url": nowhere},
            "GitRepoProvider": {"allowed_specs": loopback_only, "ls_remote_timeout": 5},
            "CKANProvider": {"allowed_specs": loopback_only},
            "ZenodoProvider": {"doi_resolver_url": nowhere},
            "FigshareProvider": {"doi_resolver_url": nowhere, "api_base_url": nowhere},
            "HydroshareProvider": {"doi_resolver_url": nowhere, "base_url": nowhere},
            "DataverseProvider": {"doi_resolver_url": nowhere},
            "SwhidProvider": {"api_base_url": nowhere},
            "RateLimiter": {"limit": 0},  # else after 10 requests every /build is a rate-limit refusal
        },
        build_class="docker",
        use_registry=False,
        builder_required=False,
        launch_quota_class="none",
        enable_api_only_mode=True,
        hub_url=nowhere,
        **MODES[mode],
    )


class LiveService(threading.Thread):
    """binderapi on its own event loop in a thread: schemathesis calls it synchronously."""

    def __init__(self, mode: str) -> None:
        super().__init__(name=f"binderapi-schemathesis-{mode}", daemon=True)
        self.mode = mode
        self.url = ""
        self.server = ""  # the document's server (base_url) on this host: paths are relative to it
        self.app: Any = None
        self.started = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported to the test thread
            self.error = e
            self.started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        settings = service_settings(self.mode)
        async with serve(settings) as svc:
            self.url, self.app = svc.url, svc.app
            self.server = svc.url.removesuffix("/")
            self.started.set()
            await self._stopping.wait()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(30)


def running(mode: str) -> Iterator[LiveService]:
    """The service of ``mode``, checked to serve the document its cases were generated from."""
    service = LiveService(mode)
    service.start()
    assert service.started.wait(30), "binderapi did not start"
    if service.error:
        raise service.error
    try:
        assert httpx.get(service.url + "openapi.json", timeout=10).json() == DOCUMENTS[mode]
        yield service
    finally:
        service.stop()
    assert not service.is_alive(), "binderapi did not shut down"


@pytest.fixture(scope="module")
def anonymous_service() -> Iterator[LiveService]:
    yield from running("anonymous")


@pytest.fixture(scope="module")
def auth_service() -> Iterator[LiveService]:
    yield from running("auth")


CONFIG = schemathesis.Config.from_dict({
    "seed": SEED,
    "request-timeout": 20,  # a hang is a failure, not a stuck suite
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "checks": {"enabled": True, "max_response_time": 10},
    "operations": [
        # /health answers its documented 503 here, truthfully: the Docker engine does not exist
        {"include-path-regex": "/health$",
         "checks": {"not_a_server_error": {"expected-statuses": ["2XX", "3XX", "4XX", "503"]}}},
        # the callback needs `code` and `state` unless the hub sent `error` (OpenAPI cannot say
        # "required unless"), and the state cookie /oauth_login set, which no parameter can carry:
        # without them it answers 400 as JupyterHub's own callback does
        # /build refuses with a `failed` event on HTTP 200 (an EventSource cannot read a status), so a
        # request the document calls invalid (no `Accept`, an unknown parameter) is "accepted" with a
        # 200 whose one event says why; `build_only` is a documented boolean parsed leniently, as
        # BinderHub does (tests below); every frame is still checked against the event union
        {"include-path-regex": "^/build/",
         "checks": {"negative_data_rejection": {"enabled": False}, "missing_required_header": {"enabled": False}}},
        # /api/v1 answers an unreachable upstream (every provider's API is a closed port here) with
        # its documented 502/503 problem, truthfully; a spec valid by the schema may still name an
        # unknown provider (400), a missing ref (404), a build that finished (409) or need rights (403)
        {"include-path-regex": "^/api/v1/",
         "checks": {"not_a_server_error": {"expected-statuses": ["2XX", "3XX", "4XX", "502", "503"]},
                    "positive_data_acceptance": {"expected-statuses": ["2XX", "400", "401", "403", "404", "409", "429",
                                                                      "502", "503"]}}},
        {"include-path-regex": "/oauth_callback$",
         "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", "3XX", "400", "401", "403", "404"]}}},
    ],
})
#: each mode's document as the app builds it, so tests are collected without a service running
DOCUMENTS = {mode: create_app(service_settings(mode)).openapi() for mode in MODES}
SCHEMAS = {mode: schemathesis.openapi.from_dict(document, config=CONFIG) for mode, document in DOCUMENTS.items()}
OPENAPI = DOCUMENTS["auth"]  # at the root
FUZZ = settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def call_and_validate(case, service: LiveService) -> None:
    case.call_and_validate(base_url=service.server)
    if "/build/{prefix}/" in case.operation.path:
        # as an EventSource asks, so the request reaches the pipeline; then with the generated spec
        # given to one of the providers (a random prefix is only ever "unknown provider")
        case.call_and_validate(base_url=service.server, headers=EVENT_STREAM)
        spec = str(case.path_parameters.get("spec", ""))
        case.path_parameters = {**case.path_parameters, "prefix": PROVIDERS[zlib.crc32(spec.encode()) % len(PROVIDERS)]}
        case.call_and_validate(base_url=service.server, headers=EVENT_STREAM)


@SCHEMAS["anonymous"].parametrize()
@FUZZ
def test_api_conforms_to_its_schema(case, anonymous_service):
    call_and_validate(case, anonymous_service)


@SCHEMAS["auth"].parametrize()
@FUZZ
def test_api_conforms_to_its_schema_in_auth_mode(case, auth_service):
    call_and_validate(case, auth_service)


#: a spec each provider accepts, so the request gets as far as asking the provider's upstream
#: (a closed loopback port here; ``git`` and ``ckan`` name it in the spec)
UPSTREAM_SPECS = {
    "gh": "binder-examples/requirements/HEAD",
    "gist": "someone/0123456789abcdef0123/HEAD",
    "gl": "group%2Fproject/HEAD",
    "git": "http%3A%2F%2F127.0.0.1%3A{port}%2Frepo.git/HEAD",
    "zenodo": "10.5281/zenodo.3242074",
    "figshare": "10.6084/m9.figshare.9782777.v1",
    "hydroshare": "b8f6eae9d89241cf8b5904033460af61",
    "dataverse": "10.7910/DVN/TJCLKP",
    "ckan": "http%3A%2F%2F127.0.0.1%3A{port}%2Fdataset%2Fx",
    "swhid": "swh:1:dir:" + "0" * 40,
}


@pytest.mark.parametrize("prefix", sorted(UPSTREAM_SPECS))
def test_an_unreachable_upstream_is_one_documented_failed_event(anonymous_service, prefix):
    """Every provider under a base URL holding ``/build/``: the spec reaches the provider whole."""
    spec = UPSTREAM_SPECS[prefix].format(port=free_port())
    operation = SCHEMAS["anonymous"]["/build/{prefix}/{spec}"]["GET"]
    case = operation.Case(path_parameters={"prefix": prefix, "spec": spec})
    response = case.call_and_validate(base_url=anonymous_service.server, headers=EVENT_STREAM)
    frames = [line for line in response.text.split("\n") if line.startswith("data:")]
    assert len(frames) == 1 and '"phase":"failed"' in frames[0] and "unreachable" in frames[0], response.text
    assert anonymous_service.app.state.services.builds.builds == {}  # nothing was started


# -- the event union in the OpenAPI document ------------------------------------------------------

def event_schema_errors(event: dict) -> list[str]:
    """What the OpenAPI document's ``BuildStreamEvent`` finds wrong with one event (a ``oneOf``:
    valid means exactly one branch matched)."""
    document = {"$ref": "#/components/schemas/BuildStreamEvent", "components": OPENAPI["components"]}
    return [error.message for error in jsonschema.Draft202012Validator(document).iter_errors(event)]


def sent(event: BaseModel | dict) -> dict:
    """The JSON an event goes out as."""
    return json.loads(encode(event)[len(b"data: "):])


EVERY_MODEL = [
    WaitingEvent(message="Waiting for build to start...\n", queue_position=1, queue_length=1),
    FetchingEvent(message="Cloning...\n"),
    BuildingEvent(message="Step 1/9\n"),
    PushingEvent(message="Pushing\n", progress={"layer": {"current": 1}}, layers={}),
    LogEvent(message="Picked Git content provider.\n"),
    UnknownEvent(message="warnings.warn(\n"),
    BuiltEvent(message="Built image, launching...\n", imageName="registry/image:tag"),
    LaunchingEvent(message="Launching server...\n"),
    BuildReadyEvent(message="Done! Image built\n", imageName="registry/image:tag"),
    LaunchReadyEvent(message="server running at http://hub/user/x/\n", url="http://hub/user/x/", token="t",
                     image="registry/image:tag", repo_url="https://github.com/a/b", binder_ref_url="https://github.com/a/b/tree/c",
                     binder_launch_host="http://binder/", binder_request="v2/gh/a/b/HEAD",
                     binder_persistent_request="v2/gh/a/b/c", binder_client_ip="127.0.0.1"),
    FailedEvent(message="Build failed\n", status_code=500),
]


def test_every_event_binderapi_sends_matches_exactly_one_documented_model():
    recording = Path(__file__).parent / "data" / "binderhub-fullbuild.eventsource"
    recorded = [json.loads(line[5:]) for line in recording.read_text().splitlines() if line.startswith("data:")]
    builder_lines = [{"message": "Picked Git content provider.\n"}, {"message": "x\n", "phase": None},
                     {"message": "x\n", "phase": ""}]  # as repo2docker may write them: all sent as `log`
    assert [sent(line)["phase"] for line in builder_lines] == ["log"] * 3
    for event in [*EVERY_MODEL, *recorded, *builder_lines]:
        payload = sent(event)
        assert "phase" in payload and event_schema_errors(payload) == [], payload
    mapping = OPENAPI["components"]["schemas"]["BuildStreamEvent"]["discriminator"]["mapping"]
    assert sorted(mapping) == sorted({model.phase for model in EVERY_MODEL})


@pytest.mark.parametrize("event", [
    {"message": "no phase\n"},
    {"phase": None, "message": "null phase\n"},
    {"phase": "other", "message": "a phase nobody documented\n"},
    {"phase": "ready", "message": "neither a launch's (url) nor a build's (imageName)\n"},
    {"phase": "built", "message": "no image name\n"},
])
def test_no_branch_of_the_event_union_accepts_an_event_it_does_not_describe(event):
    assert event_schema_errors(event)
    if event.get("phase") is not None:  # pydantic fills in `log` only where the phase is missing
        with pytest.raises(ValidationError):
            TypeAdapter(BuildStreamEvent).validate_python(event)


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaked_build_containers")
async def test_a_real_build_stream_matches_the_documented_union(git_server):
    """repo2docker's real output, as binderapi sends it, frame by frame against the document: its
    phase-less lines arrive as `log`."""
    repo = unique("schema")
    git_server.create_repo(repo, {"Dockerfile": f"FROM {BASE_IMAGE}\nRUN echo {uuid.uuid4().hex}\n"})
    async with serve(docker_settings()) as svc, httpx.AsyncClient(timeout=300) as client:
        url = svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main")
        events = await read_events(client, url, params={"build_only": "true"})
    assert events[-1]["phase"] == "ready"
    assert "log" in {event["phase"] for event in events}
    for event in events:
        assert event_schema_errors(event) == [], event


def test_metrics_and_login_routes_are_documented_as_they_answer():
    paths = OPENAPI["paths"]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    for route in ("/oauth_login", "/oauth_callback"):
        not_found = paths[route]["get"]["responses"]["404"]
        assert not_found["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorDetail"}


# -- the schema as a contract (issue #12): what an SDK generator needs --------------------------

def operations(document: dict) -> list[tuple[str, str, dict]]:
    return [(method, path, operation) for path, item in document["paths"].items() for method, operation in item.items()]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_operation_has_a_unique_camel_case_operation_id(mode):
    ids = [operation.get("operationId") for _, _, operation in operations(DOCUMENTS[mode])]
    assert all(ids) and len(set(ids)) == len(ids), ids
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z0-9]*)*", i) for i in ids), ids
    by_route = {(method, path): operation["operationId"] for method, path, operation in operations(OPENAPI)}
    assert by_route == {
        ("get", "/build/{prefix}/{spec}"): "streamBuild",
        ("get", "/health"): "getHealth",
        ("get", "/versions"): "getVersions",
        ("get", "/_config"): "getConfig",
        ("get", "/api/repoproviders"): "listRepoProviders",
        ("get", "/metrics"): "getMetrics",
        ("get", "/oauth_login"): "oauthLogin",
        ("get", "/oauth_callback"): "oauthCallback",
        ("post", "/api/v1/builds"): "createBuild",
        ("get", "/api/v1/builds"): "listBuilds",
        ("get", "/api/v1/builds/{build_id}"): "getBuild",
        ("delete", "/api/v1/builds/{build_id}"): "cancelBuild",
        ("get", "/api/v1/builds/{build_id}/events"): "streamBuildEvents",
        ("get", "/api/v1/builds/{build_id}/logs"): "getBuildLogs",
        ("get", "/api/v1/images/{prefix}/{spec}"): "getImageStatus",
    }


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_tag_used_is_described(mode):
    document = DOCUMENTS[mode]
    described = {tag["name"]: tag.get("description") for tag in document.get("tags", [])}
    used = {tag for _, _, operation in operations(document) for tag in operation.get("tags", [])}
    assert used and all(operation.get("tags") for _, _, operation in operations(document))
    assert used <= set(described) and all(described[tag] for tag in used), (used, described)


def test_the_build_credentials_are_security_schemes_and_anonymous_stays_valid():
    for mode, document in DOCUMENTS.items():
        schemes = document["components"]["securitySchemes"]
        assert schemes["buildToken"] == {**schemes["buildToken"], "type": "apiKey", "in": "query", "name": "build_token"}
        assert schemes["hubToken"] == {**schemes["hubToken"], "type": "http", "scheme": "bearer"}
        assert schemes["hubLogin"] == {**schemes["hubLogin"], "type": "apiKey", "in": "cookie", "name": "binderapi-session"}
        assert all(scheme.get("description") for scheme in schemes.values()), mode
        build = document["paths"]["/build/{prefix}/{spec}"]["get"]
        assert {} in build["security"]  # anonymous stays valid: refusals are `failed` events anyway
        referenced = {name for requirement in build["security"] for name in requirement}
        assert referenced == set(schemes) - {"operatorToken"}, mode  # operator rights are /api/v1's
    renamed = create_app(make_settings({"HubOAuth": {"cookie_name": "my-login"}}, use_registry=False)).openapi()
    assert renamed["components"]["securitySchemes"]["hubLogin"]["name"] == "my-login"


def test_servers_carry_the_base_url_and_paths_are_relative_to_it():
    assert OPENAPI["servers"] == [{"url": "/"}]
    anonymous = DOCUMENTS["anonymous"]
    assert anonymous["servers"] == [{"url": MODES["anonymous"]["base_url"].rstrip("/")}]
    assert sorted(anonymous["paths"]) == sorted(OPENAPI["paths"])  # `/health`, not `/services/build/health`


def build_operation(document: dict = OPENAPI) -> dict:
    return document["paths"]["/build/{prefix}/{spec}"]["get"]


def test_build_only_is_a_boolean_and_accept_a_documented_header():
    parameters = {p["name"]: p for p in build_operation()["parameters"]}
    assert parameters["build_only"]["in"] == "query" and parameters["build_only"]["schema"]["type"] == "boolean"
    accept = parameters["Accept"]
    assert accept["in"] == "header" and accept["required"] and "build_only" in accept["description"]
    assert "text/event-stream" in accept["schema"]["pattern"] and accept["schema"]["default"] == "text/event-stream"


def test_build_only_stays_lenient_as_in_binderhub(anonymous_service):
    """Documented as a boolean, parsed as BinderHub parses it: `true` in any case, anything else false.
    Without `Accept`, only a build_only request with an Authorization header streams."""
    url = anonymous_service.url + "build/nope/a/b"
    for build_only in ("true", "TRUE", "True", "false", "yes", "1", ""):
        response = httpx.get(url, params={"build_only": build_only}, headers={"Authorization": "Bearer x"}, timeout=10)
        failed = json.loads(response.text.partition("data: ")[2])
        assert response.status_code == 200 and failed["phase"] == "failed"
        assert ("Missing Accept header" in failed["message"]) == (build_only.lower() != "true"), (build_only, failed)


def test_the_main_operations_have_examples():
    stream = build_operation()["responses"]["200"]["content"]["text/event-stream"]
    assert stream["example"].startswith("data: {") and '"phase":"ready"' in stream["example"]
    for path in ("/health", "/versions"):
        content = OPENAPI["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        assert content["example"], path
        assert jsonschema.Draft202012Validator(
            {**content["schema"], "components": OPENAPI["components"]}).is_valid(content["example"]), path


# -- /api/v1 (issue #12): problems, security, media types -------------------------------------------

def v1_operations(document: dict = OPENAPI) -> list[tuple[str, str, dict]]:
    return [(method, path, op) for method, path, op in operations(document) if path.startswith("/api/v1/")]


def test_every_api_v1_error_is_a_documented_problem():
    problem = OPENAPI["components"]["schemas"]["Problem"]
    assert set(problem["required"]) >= {"title", "status"}
    assert {"type", "title", "status", "detail", "instance"} <= set(problem["properties"])
    assert len(v1_operations()) == 7
    for method, path, operation in v1_operations():
        errors = {status: response for status, response in operation["responses"].items() if status >= "400"}
        assert {"403", "422", "500", "503"} <= set(errors), (method, path, sorted(errors))
        for status, response in errors.items():
            assert response["content"] == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}, (
                method, path, status)
        assert "HTTPValidationError" not in json.dumps(operation), (method, path)
    assert "409" in OPENAPI["paths"]["/api/v1/builds/{build_id}"]["delete"]["responses"]
    assert "Retry-After" in OPENAPI["paths"]["/api/v1/builds"]["post"]["responses"]["429"]["headers"]


def test_api_v1_security_media_types_and_examples():
    schemes = OPENAPI["components"]["securitySchemes"]
    assert schemes["operatorToken"] == {**schemes["operatorToken"], "type": "http", "scheme": "bearer"}
    for _method, path, operation in v1_operations():
        assert operation["security"] and all(name in schemes for req in operation["security"] for name in req), path
        assert operation["tags"] in (["builds"], ["images"]), path
    cancel = OPENAPI["paths"]["/api/v1/builds/{build_id}"]["delete"]
    assert {} not in cancel["security"] and {"operatorToken": []} in cancel["security"]  # never anonymous
    create = OPENAPI["paths"]["/api/v1/builds"]["post"]
    assert {"buildToken": []} in create["security"] and {} in create["security"]
    assert create["responses"]["201"]["headers"]["Location"]
    assert len(create["requestBody"]["content"]["application/json"]["examples"]) >= 2
    events = OPENAPI["paths"]["/api/v1/builds/{build_id}/events"]["get"]
    stream = events["responses"]["200"]["content"]["text/event-stream"]
    assert stream["example"].startswith("id: 1\ndata: {") and stream["schema"]["properties"]["id"]
    assert {p["name"] for p in events["parameters"]} >= {"last_event_id", "Last-Event-ID"}
    logs = OPENAPI["paths"]["/api/v1/builds/{build_id}/logs"]["get"]
    assert list(logs["responses"]["200"]["content"]) == ["text/plain"]
    schemas = OPENAPI["components"]["schemas"]
    for name in ("BuildResource", "ImageStatus", "BuildList", "CreateBuild"):
        example = schemas[name]["examples"][0]
        assert jsonschema.Draft202012Validator({**schemas[name], "components": OPENAPI["components"]}).is_valid(example), name
    assert schemas["BuildResource"]["properties"]["state"]["$ref"] == "#/components/schemas/BuildState"
    assert schemas["BuildState"]["enum"] == ["queued", "building", "built", "failed", "cancelled"]
