"""Backend kinds (src/binderapi/backends/): a kind registered from here, with no file in src/
touched, serves a ``/build`` in process; everything else about the kind in use (its settings
sections, its engine client, its health checks, its quota) follows from the one object.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from binderapi.app import create_app
from binderapi.backends import KINDS, BackendKind, open_kind, register_kind
from binderapi.errors import StartupError
from binderapi.executors.base import BuildBackend, BuildExistsError, BuildInfo, BuildJob
from binderapi.providers.base import RepoProvider
from binderapi.quota import LaunchQuota
from binderapi.services import Services
from binderapi.settings import Settings, load_settings
from binderapi.supervisor import Supervisor

# -- a minimal backend kind, as a third package in src/binderapi/backends/ would define it ---------


class FakeEngine:
    """The kind's shared client: made once per service, closed once after every part using it."""

    made: list[FakeEngine] = []

    def __init__(self, settings: Settings) -> None:
        self.closed = False
        FakeEngine.made.append(self)

    async def close(self) -> None:
        self.closed = True

    async def ping(self) -> dict[str, Any]:
        return {"ok": not self.closed}


class FakeBuildBackend(BuildBackend):
    """Builds that succeed at once, with two lines of output."""

    kind = "fake"
    made: list[FakeBuildBackend] = []

    def __init__(self, settings: Settings, engine: FakeEngine | None = None) -> None:
        self.engine = engine
        self.jobs: list[BuildJob] = []
        self.builds: dict[str, BuildInfo] = {}
        FakeBuildBackend.made.append(self)

    @property
    def builder_info(self) -> dict[str, Any]:
        return {"build_image": "fake-builder"}

    async def start(self, job: BuildJob) -> None:
        if job.name in self.builds:
            raise BuildExistsError(job.name)
        self.jobs.append(job)
        self.builds[job.name] = BuildInfo(job.name, job.image_name, job.repo_url, running=True, started_at=time.time())

    async def inspect(self, name: str) -> BuildInfo | None:
        return self.builds.get(name)

    async def follow_logs(self, name: str, tail: int | None = None) -> AsyncIterator[str]:
        yield "Step 1/2 : fake build of " + self.builds[name].repo_url
        yield json.dumps({"phase": "building", "message": "Step 2/2 : done\n"})
        self.builds[name].running, self.builds[name].exit_code = False, 0

    async def wait(self, name: str) -> int | None:
        return self.builds[name].exit_code

    async def stop(self, name: str) -> None:
        self.builds.pop(name, None)

    async def list_builds(self) -> list[BuildInfo]:
        return list(self.builds.values())

    async def check(self) -> dict[str, Any]:
        return {"ok": True, "backend": self.kind}


class FakeImages:
    """``use_registry: false``: images are "in the engine" once built."""

    def __init__(self, settings: Settings, engine: FakeEngine) -> None:
        self.engine = engine
        self.closed = False

    async def image_exists(self, image_name: str) -> bool:
        return False

    async def health(self) -> dict[str, Any]:
        return {"ok": True}

    async def close(self) -> None:
        self.closed = True


def fake_health_checks(active: Any, backend: BuildBackend) -> list[tuple[str, Any]]:
    return [("Builder", backend.check), ("Fake engine", active.engine.ping)]


FAKE_KIND = BackendKind(
    name="fake",
    build_backend=FakeBuildBackend,
    executor_section="DockerBuildExecutor",  # reuses an existing section: log_tail_lines, appendix
    cleaner_section="DockerCleaner",
    engine=FakeEngine,
    local_images=FakeImages,
    health_checks=fake_health_checks,
)


class InstantProvider(RepoProvider):
    """Resolves any spec at once, with no upstream."""

    name = "Instant"

    async def get_resolved_ref(self) -> str | None:
        return "a" * 40

    async def get_resolved_spec(self) -> str:
        return self.spec

    async def get_resolved_ref_url(self) -> str:
        return f"instant:{self.spec}"

    def get_repo_url(self) -> str:
        return f"instant:{self.spec}"  # not a URL git fetches: no address check, no DNS

    def get_build_slug(self) -> str:
        return self.spec.replace("/", "-")


class UnregisteredBackend(FakeBuildBackend):
    kind = "podman"  # no such kind is registered


@pytest.fixture
def fake_kind() -> Iterator[BackendKind]:
    FakeEngine.made.clear()
    FakeBuildBackend.made.clear()
    register_kind(FAKE_KIND)
    try:
        yield FAKE_KIND
    finally:
        KINDS.pop(FAKE_KIND.name, None)


def settings_for(**binderhub: Any) -> Settings:
    options = {"enable_api_only_mode": True, "use_registry": False, "builder_required": True,
               "repo_providers": {"inst": f"{__name__}:InstantProvider"}, **binderhub}
    return load_settings(cli={"BinderHub": options}, environ={}, dotenv_path=None)


async def build_events(settings: Settings, spec: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A ``/build`` (build_only) and ``/health`` in process: the ASGI app with its lifespan, no socket."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://binderapi.test", timeout=30) as client:
            response = await client.get(f"/build/inst/{spec}", params={"build_only": "true"},
                                        headers={"Accept": "text/event-stream"})
            health = (await client.get("/health")).json()
    assert response.status_code == 200, response.text
    events = [json.loads(line[len("data:"):]) for line in response.text.splitlines() if line.startswith("data:")]
    return events, health


async def test_a_kind_registered_from_the_tests_serves_a_build(fake_kind):
    settings = settings_for(build_class="fake")
    # left unset, the quota and cleaner follow the kind; its quota is the generic one (no limits)
    assert settings.BinderHub.launch_quota_class == settings.BinderHub.build_cleaner_class == "fake"

    events, health = await build_events(settings, "owner/repo")

    assert events[-1]["phase"] == "ready", events
    assert events[-1]["message"] == "Done! Image built\n"
    assert "Step 1/2 : fake build of instant:owner/repo" in "".join(e.get("message", "") for e in events)
    [backend] = FakeBuildBackend.made
    [job] = backend.jobs
    assert job.repo_url == "instant:owner/repo" and job.ref == "a" * 40
    assert events[-1]["imageName"] == job.image_name
    # one engine client, shared by the backend, closed once at shutdown
    [engine] = FakeEngine.made
    assert backend.engine is engine and engine.closed
    checks = {c["service"]: c for c in health["checks"]}
    assert checks["Builder"]["ok"] and checks["Fake engine"]["ok"], checks


async def test_a_dotted_path_to_a_kind_or_to_a_class_of_a_registered_kind(fake_kind):
    for build_class in (f"{__name__}:FAKE_KIND", f"{__name__}:FakeBuildBackend"):
        settings = settings_for(build_class=build_class, launch_quota_class="none")
        services = await Services.start(settings)
        try:
            assert services.kind.kind is FAKE_KIND
            assert isinstance(services.backend, FakeBuildBackend)
            assert isinstance(services.quota, LaunchQuota) and type(services.quota) is LaunchQuota
            assert services.executor_settings is settings.DockerBuildExecutor
        finally:
            await services.close()


@pytest.mark.parametrize(("build_class", "message"), [
    # a class whose kind nobody registered used to read the KubernetesBuildExecutor settings silently
    (f"{__name__}:UnregisteredBackend",
     r"^BinderHub.build_class: '.*UnregisteredBackend' has kind 'podman', which is not a registered backend kind "
     r"\(docker, kubernetes\): set its `kind` class attribute to one of them, or register its own"),
    ("podman", r"^BinderHub.build_class: unknown build backend 'podman'; use one of DockerBuildBackend, "
               r"DockerBuildExecutor, KubernetesBuildBackend, KubernetesBuildExecutor, docker, kubernetes or a dotted"),
])
async def test_a_build_class_of_no_registered_kind_is_a_clear_start_up_error(build_class, message):
    with pytest.raises(StartupError, match=message):
        await Services.start(settings_for(build_class=build_class, launch_quota_class="none"))


async def test_the_docker_kind_shares_one_engine_client():
    """The build backend, the launch quota and ``use_registry: false`` talk to the engine through
    one aiodocker client (three before), which only the kind closes."""
    settings = settings_for(build_class="docker", launch_quota_class="docker")
    kind = open_kind(settings)
    from binderapi.backends import launch_quota_class

    backend = kind.build_backend()
    quota = kind.launch_quota(launch_quota_class("docker"), Supervisor())
    images = kind.local_images()
    try:
        assert backend.docker is quota.docker is images._client() is kind.engine  # type: ignore[attr-defined]
        for part in (quota, images, backend):
            await part.close()
        assert not kind.engine.session.closed  # still the kind's
    finally:
        await kind.close()
    assert kind.engine.session.closed
