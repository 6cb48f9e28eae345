"""One pydantic model per BinderHub configurable class.

The models carry BinderHub's option names, meanings and defaults, so that the ``config:`` block of a
BinderHub Helm chart works unchanged. Options that only made sense for BinderHub's HTML pages are
accepted and documented as having no effect here. Each field's description is the configuration
reference: README.md's is generated from it (:mod:`binderapi.settings.docs`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .types import ByteSize, ClassRef, LogLevel, Network


def secret(default: Any = "", description: str = "") -> Any:
    """A field whose value is never shown by ``--show-config`` or written to logs."""
    return Field(default, description=description, json_schema_extra={"secret": True})


def deprecated(default: Any, *targets: str, description: str = "") -> Any:
    """A BinderHub option kept for compatibility that forwards to its new home(s)."""
    return Field(default, description=description, json_schema_extra={"deprecated_to": list(targets)})


def ui_only(default: Any, description: str) -> Any:
    """A BinderHub option about its HTML pages: accepted, without effect in an API-only service."""
    return Field(default, description=description + " (BinderHub UI option: accepted, no effect in binderapi.)",
                 json_schema_extra={"no_effect": True})


class Section(BaseModel):
    """Base of every configuration section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=False)


DEFAULT_REPO_PROVIDERS = {
    "gh": "GitHubRepoProvider",
    "gist": "GistRepoProvider",
    "git": "GitRepoProvider",
    "gl": "GitLabRepoProvider",
    "zenodo": "ZenodoProvider",
    "figshare": "FigshareProvider",
    "hydroshare": "HydroshareProvider",
    "dataverse": "DataverseProvider",
    "ckan": "CKANProvider",
    "swhid": "SwhidProvider",
}


class BinderHub(Section):
    """The application: HTTP service, naming, policy and which backends to use."""

    # -- service ---------------------------------------------------------------------------------
    ip: str = Field("", description="Address to listen on. Empty means every interface.")
    port: int = Field(8585, ge=0, le=65535, description="Port to listen on.")
    workers: int = Field(1, ge=1, le=64, description="Processes serving the port (`--workers`). More than one needs a shared build store (`BuildStore.url` on PostgreSQL): each worker runs its own builds, quotas and clean-ups, see docs/scaling.md.")
    max_request_header_size: ByteSize = Field(64 * 1024, ge=1024, description="Largest request head (request line and header fields) accepted; a larger one is answered 431 before the app sees it. The service is served by uvicorn directly, so it protects itself.")
    max_request_headers: int = Field(100, ge=1, description="Most header fields in one request; more are answered 431.")
    request_header_timeout: float = Field(10.0, gt=0, description="Seconds a client has, from connecting (or from the first byte of its next request), to send a complete request head; a slower one (slow-loris) is answered 408 and disconnected.")
    base_url: str = Field("/", description="URL prefix of every route (a leading and trailing slash are added). Unset, a service JupyterHub manages takes it from JupyterHub's environment: `JUPYTERHUB_SERVICE_PREFIX` (`/services/<name>/`), else `JUPYTERHUB_BASE_URL` + `services/` + `JUPYTERHUB_SERVICE_NAME`.")
    debug: bool = Field(False, description="Debug mode: log level DEBUG and tracebacks in the log.")
    config_file: str = Field("", description="Configuration file (YAML, JSON or TOML) to load; relative to the current directory.")
    show_config: bool = Field(False, description="Print the effective configuration (YAML, secrets redacted) and exit.")
    show_config_json: bool = Field(False, description="Print the effective configuration as JSON (secrets redacted) and exit.")
    enable_api_only_mode: bool = Field(
        False,
        description="API-only mode. binderapi never serves HTML; this switch keeps BinderHub's meaning for "
        "`build_only=true`, which is honoured only when it is on.",
    )
    cors_allow_origin: str = Field("", description="Value of `Access-Control-Allow-Origin` on every response (e.g. `*`). Empty sends none.")
    executor_threads: int = Field(5, ge=1, description="Size of BinderHub's thread pool for blocking calls. Accepted for compatibility, without effect: binderapi has no thread pool of its own.")
    keepalive_interval: float = Field(25.0, gt=0, description="Seconds between `:keepalive` comments on an event stream with nothing else to say.")
    ready_hold_seconds: float = Field(60.0, ge=0, description="Seconds a stream stays open (keepalives only) after the `ready` of a launch whose image this request had to build, as BinderHub does, so an EventSource that reconnects instead of closing does not start another launch. The client closing ends it at once; 0 ends the stream right after `ready`.")
    trusted_proxies: list[Network] = Field(
        default_factory=list,
        description="Networks of reverse proxies whose `X-Forwarded-For` header is believed. Requests from any "
        "other peer are identified by the peer address, so a banned client cannot walk around `ban_networks`.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names this service answers to (the `Host` header, port ignored, e.g. `binder.example.org`). "
        "Empty: any well-formed `host[:port]`. A malformed or unlisted `Host` is refused with 400 before any work, "
        "because the host becomes `binder_launch_host`, the build appendix's `binder_url` and the build token origin "
        "(set `badge_base_url` so that no request header reaches them at all).",
    )

    # -- logging ---------------------------------------------------------------------------------
    log_level: LogLevel = Field(30, description="Log level, by name (`INFO`) or number (`20`).")
    log_format: str = Field("[%(name)s]%(highlevel)s %(message)s", description="Format of log lines; `%(highlevel)s` is ` [L time name]`-style context for warnings and above.")
    log_datefmt: str = Field("%Y-%m-%d %H:%M:%S", description="Date format for `%(asctime)s`.")
    logging_config: dict[str, Any] = Field(default_factory=dict, description="A `logging.config.dictConfig` dictionary merged into the base configuration (handler `console`, formatter `console`).")

    # -- JupyterHub -----------------------------------------------------------------------------
    hub_url: str = Field("", description="Public base URL of JupyterHub; launch URLs handed to clients start with it.")
    hub_url_local: str = Field("", description="Base URL binderapi itself uses to reach JupyterHub; defaults to `hub_url`.")
    hub_api_token: str = secret("", "API token of the `binder` JupyterHub service (env `JUPYTERHUB_API_TOKEN`).")
    auth_enabled: bool = Field(False, description="Require a JupyterHub login (token or OAuth cookie) and start the user's own server instead of a temporary user's.")

    # -- images and builds ------------------------------------------------------------------------
    image_prefix: str = Field("", description="Prefix of every image name, usually `<registry>/<project>/` plus a version tag to start a fresh cache, e.g. `127.0.0.1:5000/binder-`.")
    use_registry: bool = Field(True, description="Check for and push images to a registry. Off: look in the local Docker engine and never push (one-node set-ups).")
    build_class: ClassRef = Field("kubernetes", description="Build backend: `kubernetes` (build pods), `docker` (builder containers on a Docker engine), or a dotted import path.")
    build_cleaner_class: ClassRef = Field("kubernetes", description="Build cleaner: `kubernetes`, `docker` or a dotted path. Left at its default, it follows `build_class`.")
    registry_class: ClassRef = Field("docker", description="Registry client: `docker` (Docker Registry HTTP API v2) or a dotted import path.")
    launch_quota_class: ClassRef = Field("kubernetes", description="Launch quota: `kubernetes`, `docker`, `none` or a dotted path. Left at its default, it follows `build_class`.")
    health_handler_class: ClassRef | None = Field(None, description="Accepted for compatibility; the `/health` checks follow the configured backends.")
    concurrent_build_limit: int = Field(32, ge=1, description="Builds running at once in this process. Further builds wait in a FIFO queue and their clients are told their position.")
    build_cleanup_interval: int = Field(60, ge=1, description="Seconds between passes of the build cleaner (finished and overlong builds, orphans included).")
    builder_required: bool = Field(True, description="Refuse to start when the build backend is unreachable. Off: start anyway and report it in `/health`.")
    repo_providers: dict[str, ClassRef] = Field(
        default_factory=lambda: dict(DEFAULT_REPO_PROVIDERS),
        description="Spec prefixes and the provider serving each: a class name (`GitHubRepoProvider`), BinderHub's dotted name, or an import path.",
    )

    # -- quotas and abuse control ------------------------------------------------------------------
    per_repo_quota: int = Field(0, ge=0, description="Servers allowed at once per repository; 0 means no limit.")
    per_repo_quota_higher: int = Field(0, ge=0, description="Per-repository limit for specs matching a provider's `high_quota_specs`; 0 means no limit.")
    ban_networks: dict[Network, str] = Field(default_factory=dict, description="Client networks refused with 403, as CIDR -> label shown in the message. `/health` and `/versions` stay open.")
    ban_networks_min_prefix_len: int = Field(1, ge=0, description="Shortest prefix allowed in `ban_networks`, against banning the whole internet by mistake.")
    build_token_secret: str | None = secret(None, "Secret signing build tokens (HS256): hex (as env `BINDERHUB_BUILD_TOKEN_SECRET`) or text. Unset: random per process, so tokens do not survive restarts or cross replicas.")
    operator_tokens: list[str] = secret([], "Secrets giving operator rights on `/api/v1` (cancelling any build, `force` rebuilds), sent as `Authorization: Bearer <token>`. Empty: only JupyterHub admins have them, in auth mode; nobody otherwise.")
    build_token_expires_seconds: int = Field(300, ge=1, description="Lifetime of minted build tokens.")
    build_token_check_origin: bool = Field(True, description="Refuse a build token used from another origin than the one it was minted for.")
    normalized_origin: str = Field("", description="Origin written to launch events; defaults to the request's host.")

    # -- what external frontends display -------------------------------------------------------------
    badge_base_url: str = Field("", description="Base URL for launch badges and `binder_launch_host`; empty means this service's own URL.")
    banner_message: str = Field("", description="Banner text served to frontends by `/_config`.")
    about_message: str = Field("", description="About-page text served to frontends by `/_config`.")

    # -- BinderHub UI options: accepted, no effect ------------------------------------------------
    extra_footer_scripts: dict[str, str] = ui_only({}, "JavaScript added to the footer of HTML pages.")
    extra_static_path: str = ui_only("", "Directory of extra static files.")
    extra_static_url_prefix: str = ui_only("/extra_static/", "URL prefix of the extra static files.")
    google_analytics_code: str | None = ui_only(None, "Google Analytics code of the HTML pages.")
    google_analytics_domain: str = ui_only("auto", "Google Analytics domain of the HTML pages.")
    template_path: str = ui_only("", "Directory of custom Jinja templates.")
    template_variables: dict[str, Any] = ui_only({}, "Extra variables for the Jinja templates.")
    tornado_settings: dict[str, Any] = ui_only({}, "Extra Tornado settings.")
    build_docker_config: dict[str, Any] = ui_only({}, "Merged into the builders' `.docker/config.json` by BinderHub's Helm chart, not by the application.")

    # -- deprecated, forwarded to their new home -----------------------------------------------------
    appendix: str = deprecated("", "BuildExecutor.appendix", description="Docker directives appended to every build.")
    build_docker_host: str = deprecated("/var/run/docker.sock", "KubernetesBuildExecutor.docker_host", "DockerBuildExecutor.docker_host", description="Engine socket the builds use.")
    build_image: str = deprecated("", "KubernetesBuildExecutor.build_image", "DockerBuildExecutor.build_image", description="Builder image (repo2docker).")
    build_max_age: int = deprecated(14400, "KubernetesCleaner.max_age", "DockerCleaner.max_age", description="Seconds after which a running build is stopped.")
    build_memory_limit: ByteSize = deprecated(0, "BuildExecutor.memory_limit", description="Memory limit of each build.")
    build_memory_request: ByteSize = deprecated(0, "KubernetesBuildExecutor.memory_request", description="Memory requested for each build pod.")
    build_namespace: str = deprecated("", "KubernetesBuildExecutor.namespace", description="Namespace of build pods.")
    build_node_selector: dict[str, str] = deprecated({}, "KubernetesBuildExecutor.node_selector", description="Node selector of build pods.")
    log_tail_lines: int = deprecated(100, "KubernetesBuildExecutor.log_tail_lines", "DockerBuildExecutor.log_tail_lines", description="Log lines replayed to a client joining a running build.")
    pod_quota: int | None = deprecated(None, "LaunchQuota.total_quota", description="Total servers allowed at once.")
    push_secret: str = deprecated("binder-build-docker-config", "BuildExecutor.push_secret", description="Secret with registry push credentials.")
    sticky_builds: bool = deprecated(False, "KubernetesBuildExecutor.sticky_builds", description="Build each repository on the same node.")

    @field_validator("base_url")
    @classmethod
    def _slashes(cls, value: str) -> str:
        return "/" + value.strip("/") + "/" if value.strip("/") else "/"

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        from ..netutil import host_name

        names = [host_name(host) for host in value]
        bad = [host for host, name in zip(value, names, strict=True) if name is None]
        if bad:
            raise ValueError(f"not a host name: {', '.join(map(repr, bad))}")
        return [name for name in names if name]

    @field_validator("hub_url", "hub_url_local")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return value if not value or value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _check(self) -> BinderHub:
        import ipaddress

        for cidr in self.ban_networks:
            prefix = ipaddress.ip_network(cidr).prefixlen
            if prefix < self.ban_networks_min_prefix_len:
                raise ValueError(
                    f"ban_networks: {cidr} has prefix length {prefix}, shorter than "
                    f"ban_networks_min_prefix_len ({self.ban_networks_min_prefix_len})"
                )
        if not self.hub_url_local:
            self.hub_url_local = self.hub_url
        return self


class BuildExecutor(Section):
    """Options shared by every build backend (repo2docker's command line and credentials)."""

    appendix: str = Field("", description="Docker directives appended to every build (`--appendix`); `{binder_url}` and `{repo_url}` are filled in.")
    memory_limit: ByteSize = Field(0, description="Memory limit of each build, e.g. `2G`; 0 means none.")
    push_secret: str = Field("binder-build-docker-config", description="Kubernetes secret with the registry's `config.json`. Empty disables pushing (`--push`), as in BinderHub.")
    registry_credentials: dict[str, str] = secret({}, "Push credentials given to repo2docker as `CONTAINER_ENGINE_REGISTRY_CREDENTIALS` (`registry`, `username`, `password`).")
    repo2docker_extra_args: list[str] = Field(default_factory=list, description="Extra repo2docker arguments, placed before the repository URL.")


class KubernetesBuildExecutor(BuildExecutor):
    """Builds in pods through the Kubernetes API (the BinderHub default)."""

    build_image: str = Field("quay.io/jupyterhub/repo2docker:2024.07.0", description="Builder image; its entrypoint runs the `jupyter-repo2docker` command it is given.")
    namespace: str = Field("default", description="Namespace of build pods (env `BUILD_NAMESPACE`).")
    docker_host: str | None = Field("/var/run/docker.sock", description="Engine socket on the node, mounted into build pods as a hostPath; null mounts none.")
    memory_request: ByteSize = Field(0, description="Memory requested for each build pod; 0 requests none.")
    resources: dict[str, Any] = Field(default_factory=dict, description="Build pod resources (`limits`/`requests`); defaults come from `memory_limit` and `memory_request`.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector of build pods.")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
            {"key": "hub.jupyter.org_dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
        ],
        description="Tolerations of build pods.",
    )
    extra_envs: dict[str, str] = Field(default_factory=dict, description="Extra environment variables of the builder container.")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Names of secrets used to pull `build_image`.")
    log_tail_lines: int = Field(100, ge=0, description="Log lines replayed to a client joining a running build.")
    sticky_builds: bool = Field(False, description="Prefer the node chosen by rendezvous hashing of the repository URL over the image-builder nodes, to reuse its layer cache.")
    builder_pod_selector: str = Field("component=image-builder,app=binder", description="Label selector of the image-builder (dind/pink) pods sticky builds rank.")
    kubeconfig: str = Field("", description="kubeconfig file; empty tries the in-cluster service account, then `$KUBECONFIG` / `~/.kube/config`.")
    credentials_in_secret: bool = Field(True, description="Put git and registry credentials in a per-build Secret (`<build>-credentials`) referenced by the pod, instead of plain environment values. The Secret is created after the pod and owned by it (`ownerReferences`), so Kubernetes deletes it with the pod; binderapi needs only `create` and `delete` on Secrets, never `get` or `list`. Falls back to plain values when RBAC forbids creating Secrets.")
    api_timeout: float = Field(30.0, gt=0, description="Seconds before a Kubernetes API call is abandoned.")


class DockerBuildExecutor(BuildExecutor):
    """Builds in containers on a Docker engine, the way BinderHub runs a build pod."""

    build_image: str = Field("quay.io/jupyterhub/repo2docker:2024.07.0", description="Builder image; its entrypoint runs the `jupyter-repo2docker` command it is given.")
    docker_host: str = Field("unix:///var/run/docker.sock", description="Engine binderapi drives and the builder builds with (a socket path or `unix://`/`tcp://` URL); a socket is mounted into the builder.")
    log_tail_lines: int = Field(100, ge=0, description="Log lines replayed to a client joining a running build.")
    network_mode: str = Field("host", description="Network of builder containers (repo2docker builds inherit the engine's own settings).")
    namespace: str = Field("binderapi", description="Label value marking this deployment's builder containers, so several deployments can share an engine without cleaning up each other's builds.")
    extra_envs: dict[str, str] = Field(default_factory=dict, description="Extra environment variables of the builder container.")
    docker_config_path: str = Field("", description="A docker `config.json` on this host mounted into builders for push credentials.")


class KubernetesCleaner(Section):
    """Removes finished build pods and stops those running too long."""

    max_age: int = Field(14400, ge=0, description="Seconds after which a running build is stopped and removed; 0 means never.")


class DockerCleaner(Section):
    """Removes finished builder containers and stops those running too long."""

    max_age: int = Field(14400, ge=0, description="Seconds after which a running build is stopped and removed; 0 means never.")


class DockerRegistry(Section):
    """The registry images are pushed to, checked through the Docker Registry HTTP API v2.

    Every option left empty is derived from the docker `config.json` holding the push credentials,
    as in BinderHub, so one Secret configures both the push and the check for existing images.
    """

    url: str = Field("", description="Registry API base URL, e.g. `https://registry.example.org` or `http://127.0.0.1:5000` (the scheme decides http or https). Empty takes the first `auths` key of the docker `config.json` (a bare host gets `https://`, or `http://` for a loopback host); `https://index.docker.io/v1/` or no `auths` at all means Docker Hub, `https://registry-1.docker.io`.")
    auth_config_url: str = Field("", description="Key of `auths` in `config.json` holding the credentials. Empty finds the entry matching `url` (same URL, or same host and port; Docker Hub's `https://index.docker.io/v1/`).")
    token_url: str = Field("", description="Token endpoint asked for a Bearer token (basic auth with the credentials, `scope=repository:<image>:pull`) before each new scope, e.g. `https://<name>.azurecr.io/oauth2/token?service=<name>.azurecr.io` for ACR. Empty derives `https://<host>/v2/token?service=<host>` for `*.gcr.io` and `https://auth.docker.io/token?service=registry.docker.io` for `*.docker.io`; otherwise the registry's `WWW-Authenticate` challenge says where tokens come from.")
    username: str = Field("", description="Registry user (`_json_key` for a GCR service-account key). Empty reads it from the `auth` value of the matching `auths` entry.")
    password: str = secret("", "Registry password or key. Empty reads it from the `auth` value of the matching `auths` entry.")
    docker_config_path: str = Field("", description="docker `config.json` to read; empty means `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. A missing file means no credentials.")
    not_found_401: bool | None = Field(None, description="Count a 401 answered to a Bearer-authenticated manifest request as 'image missing' (Docker Hub answers 401 for repositories that do not exist). Null turns it on for Docker Hub only; elsewhere such a 401 is an error naming the registry.")
    retries: int = Field(3, ge=1, description="Attempts on a failing registry (5xx, 429, timeouts, refused connections) before the check fails with an error; a failing registry never counts as 'image missing'.")
    retry_delay: float = Field(1.0, ge=0, description="Seconds before the second attempt; doubled for each further one (at most 30). Each wait is drawn between half and all of that, so replicas do not retry in step.")
    timeout: float = Field(10.0, gt=0, description="Seconds per registry or token-server request.")
    exists_cache_seconds: float = Field(300.0, ge=0, description="Seconds an image found in the registry (or local engine) is remembered as present, sparing a round trip on every request for an image already built; 0 asks every time. Images are named after the resolved ref, so a present image does not change; only an operator deleting it makes the memory stale, for at most this long. Absent images are never remembered.")


class LaunchQuota(Section):
    """How many servers may run at once."""

    total_quota: int | None = Field(None, ge=0, description="Servers allowed at once in total; null means no limit, 0 refuses every launch (maintenance).")
    resync_interval: float = Field(300.0, gt=0, description="Seconds between full recounts; between them counts follow the engine's or cluster's events.")


class KubernetesLaunchQuota(LaunchQuota):
    """Launch quota counted from single-user pods (`app=jupyterhub,component=singleuser-server`)."""

    namespace: str = Field("", description="Namespace of single-user pods; empty means the build namespace.")
    pod_selector: str = Field("app=jupyterhub,component=singleuser-server", description="Label selector of single-user pods.")


class DockerLaunchQuota(LaunchQuota):
    """Launch quota counted from single-user containers on the Docker engine."""

    container_filter: str = Field("jupyter-", description="Name prefix of single-user containers (DockerSpawner's default `jupyter-`).")


class Launcher(Section):
    """The JupyterHub REST client that starts servers (create user, start server, follow progress)."""

    hub_api_url: str = Field("", description="JupyterHub API URL (env `JUPYTERHUB_API_URL`); empty means `hub_url_local` + `hub/api/`.")
    retries: int = Field(
        4, ge=1,
        description="Launch attempts, each with a fresh user (or named server) name. Only a spawn that failed is "
        "tried again, and not when it failed for the same reason as the attempt before; a refusal by the hub "
        "(4xx), `pre_launch_hook`, an unreachable hub and `launch_timeout` end the launch at once.",
    )
    retry_delay: float = Field(4.0, ge=0, description="Seconds before the second launch attempt; doubled before each further one (at most 30). Each wait is drawn between half and all of that, so replicas do not retry in step.")
    launch_timeout: float = Field(
        600.0, gt=0,
        description="Seconds a launch may take in all, from creating the user to the server being ready, retries "
        "included. When it runs out the launch fails and the server and temporary user are removed.",
    )
    allow_named_servers: bool = Field(False, description="In auth mode, start a named server per launch (env `JUPYTERHUB_ALLOW_NAMED_SERVERS`).")
    named_server_limit_per_user: int = Field(0, ge=0, description="Named servers a user may have; 0 means no limit (env `JUPYTERHUB_NAMED_SERVER_LIMIT_PER_USER`).")
    pre_launch_hook: str | None = Field(None, description="Dotted path of a callable `(launcher, image, username, server_name, repo_url)`, sync or async, run before each launch attempt starts a server; raising aborts the launch with the error's message.")
    request_timeout: float = Field(20.0, gt=0, description="Seconds per JupyterHub API request. The progress stream has no overall limit but `launch_timeout`; a silence longer than this (30 s at least) ends it.")
    api_retries: int = Field(
        3, ge=1,
        description="Attempts per JupyterHub API request. Only connection failures and gateway errors (502, 503, 504) "
        "are tried again, and any 5xx for reads and deletes; answers from the hub are never repeated.",
    )
    api_retry_delay: float = Field(0.5, ge=0, description="Seconds before the second attempt of a JupyterHub API request; doubled before each further one (at most 30). Each wait is drawn between half and all of that, so replicas do not retry in step.")
    cleanup_timeout: float = Field(
        20.0, ge=0,
        description="Seconds a graceful stop waits, before it closes the hub client, for launches to end and for their "
        "servers and temporary users to be removed (clean-ups that failed while the hub was down are tried once more). "
        "Anything still left is logged and removed by the next start.",
    )
    orphan_sweep_interval: float = Field(
        300.0, ge=0,
        description="Seconds between looks for temporary users a crashed binderapi left behind (anonymous mode; "
        "the first look is at start-up); 0 turns the sweep off. Only users binderapi named (their name's last "
        "characters are a checksum), without a ready server, created more than `launch_timeout` + 10 s ago are "
        "removed, so replicas sharing a hub (with the same `launch_timeout`) never remove each other's launches.",
    )


class HubOAuth(Section):
    """Browser logins in auth mode: binderapi is an OAuth client of JupyterHub, as BinderHub is through JupyterHub's `HubOAuth` (same class name and options)."""

    oauth_client_id: str = Field("service-binder", description="OAuth client id of the `binder` service on the hub (its `oauth_client_id`; JupyterHub requires the `service-` prefix) (env `JUPYTERHUB_CLIENT_ID`).")
    oauth_redirect_uri: str = Field("", description="The callback URL registered on the hub as the service's `oauth_redirect_uri`, e.g. `https://binder.example.org/oauth_callback` (env `JUPYTERHUB_OAUTH_CALLBACK_URL`). binderapi serves it at `<base_url>oauth_callback`. Empty: that path on the host the browser used.")
    hub_host: str = Field("", description="Scheme and host browsers reach the hub at, for the authorize redirect; empty takes them from `BinderHub.hub_url`.")
    hub_prefix: str = Field("", description="The hub's URL prefix (`/hub/` under JupyterHub's `base_url`); empty takes the path of `BinderHub.hub_url` + `hub/`.")
    api_url: str = Field("", description="Hub API URL binderapi exchanges login codes at (`<api_url>oauth2/token`); empty means `Launcher.hub_api_url`.")
    api_token: str = secret("", "Client secret sent with login codes: the service's API token. Empty means `BinderHub.hub_api_token`.")
    base_url: str = Field("", description="Accepted for compatibility with BinderHub's `HubOAuth` settings; binderapi's routes and cookies follow `BinderHub.base_url`.")
    cookie_name: str = Field("binderapi-session", description="Cookie holding the user's hub token after a login (signed, HttpOnly, SameSite=Lax); the login state cookie is this name + `-oauth-state`.")
    cookie_secret: str = secret("", "Key signing the login cookies: hex or text. Empty derives one from `BinderHub.build_token_secret`; when that is unset too, a random key per process (logins do not survive a restart or cross replicas).")
    access_scopes: list[str] = Field(default_factory=list, description="Auth mode: a hub token (or login) is accepted only when the hub lists one of these scopes for it, as JupyterHub's `HubAuth.access_scopes`; `access:services` also covers `access:services!service=<name>`. Empty: `access:services!service=<name>`, the name taken from `oauth_client_id` (`service-<name>`). Grant it to users with a role (`{name: user, scopes: [self, \"access:services!service=binder\"]}`) and to service tokens that build (e.g. tljh-repo2docker's).")


class EventLog(Section):
    """Where launch events (schema `binderhub.jupyter.org/launch`) are written."""

    path: str = Field("", description="JSON-lines file for events; `-` writes to stdout; empty drops events (BinderHub's default).")
    handlers_maker: str | None = Field(None, description="Dotted path of a callable returning `logging.Handler`s, as in BinderHub.")


class RateLimiter(Section):
    """Per-client fixed-window limit on `/build` (an IPv6 client is its /64); over it, HTTP 429 with `Retry-After`."""

    limit: int = Field(10, ge=0, description="Requests per window; 0 disables the limit.")
    period_seconds: int = Field(3600, ge=1, description="Window length in seconds.")
    clean_seconds: int = Field(600, ge=1, description="Seconds between sweeps of expired windows.")


#: what providers and builds may never reach unless the operator says otherwise
DEFAULT_DENIED_NETWORKS = (
    "127.0.0.0/8", "::1/128",  # this host
    "0.0.0.0/8", "::/128",  # unspecified ("this host" when connected to)
    "169.254.0.0/16", "fe80::/10",  # link-local, where 169.254.169.254 answers for most clouds
    "100.100.100.200/32", "fd00:ec2::254/128",  # Alibaba Cloud and AWS (IPv6) metadata
)


class RepoProvider(Section):
    """Options shared by every repository provider (set on a provider's own section to override)."""

    banned_specs: list[str] = Field(default_factory=list, description="Regular expressions of specs refused (matched from the start of the unresolved spec, case-insensitive).")
    allowed_specs: list[str] = Field(default_factory=list, description="If set, only specs matching one of these expressions are allowed (same matching as `banned_specs`).")
    high_quota_specs: list[str] = Field(default_factory=list, description="Specs given `BinderHub.per_repo_quota_higher` instead of `per_repo_quota`.")
    spec_config: list[dict[str, Any]] = Field(default_factory=list, description="`{pattern, config}` entries; the config of every matching pattern applies, last wins (e.g. `{quota: 50}`).")
    git_credentials: str = secret("", "Credentials for private repositories, `username=...\\npassword=...` (a literal backslash-n), given to builds as `GIT_CREDENTIAL_ENV`. Empty: GitHub and GitLab derive them from their tokens.")
    cache_size: int = Field(1024, ge=0, description="Resolutions kept in memory per provider (least recently used evicted first); 0 disables caching (concurrent identical lookups still share one upstream call).")
    cache_ttl: float = Field(60.0, ge=0, description="Seconds a resolution of a moving ref (branch, tag, `HEAD`, latest record version) is reused; afterwards it is revalidated (GitHub: with its ETag, a free `304` when unchanged). Commit SHAs and explicit record versions are kept for good.")
    cache_404_ttl: float = Field(300.0, ge=0, description="Seconds a 'not found' answer is reused (a branch created meanwhile is seen after this).")
    request_timeout: float = Field(10.0, gt=0, description="Seconds one attempt of an upstream HTTP request may take in all (connecting, the answer's headers and its whole body), not per read: an upstream dripping a byte at a time is cut off.")
    request_deadline: float = Field(60.0, gt=0, description="Seconds one upstream call may take in all: every attempt, the waits between them and every redirect hop included. When it runs out the build fails naming the upstream.")
    max_response_size: ByteSize = Field(10 * 1024**2, gt=0, description="Largest upstream HTTP answer body read (after decompression), e.g. `10M`. A larger one is cut off and the build fails naming the upstream and the limit.")
    retries: int = Field(3, ge=1, description="Attempts per upstream request on 5xx answers, timeouts and failed connections (4xx answers are never retried).")
    retry_delay: float = Field(0.5, ge=0, description="Seconds before the second attempt; doubled before each further one (at most 30). Each wait is drawn between half and all of that, so replicas do not retry in step.")
    denied_networks: list[Network] = Field(
        default_factory=lambda: list(DEFAULT_DENIED_NETWORKS),
        description="Networks that provider requests (every redirect hop included), git URLs and the builds' clones may never reach, checked on every address a host name resolves to; the connection is then pinned to the checked address, so a name that resolves elsewhere later (DNS rebinding) gains nothing. An unspecified address (`0.0.0.0`, `::`) counts as loopback, and IPv4-mapped IPv6 addresses as their IPv4 address. The default blocks this host (loopback and unspecified), link-local addresses and cloud metadata endpoints. Setting this option replaces the list: keep the defaults and add your cluster and private ranges (`10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, `fc00::/7`) on a public deployment so it cannot be used to probe its own network; an empty list turns the check off.",
    )

    @field_validator("spec_config")
    @classmethod
    def _spec_config(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for entry in value:
            if not isinstance(entry.get("pattern"), str) or not isinstance(entry.get("config"), dict):
                raise ValueError("each spec_config entry needs a string 'pattern' and a dict 'config'")
        return value


class GitHubRepoProvider(RepoProvider):
    """`gh/<owner>/<repo>/<ref>`."""

    hostname: str = Field("github.com", description="GitHub host (GitHub Enterprise: your host); used in repository and ref URLs.")
    api_base_path: str = Field("https://api.{hostname}", description="API base URL; `{hostname}` is filled in. GitHub Enterprise: `https://{hostname}/api/v3`.")
    access_token: str = secret("", "Token for the API and private repositories, sent as `Authorization: token ...` (env `GITHUB_ACCESS_TOKEN`).")
    client_id: str = Field("", description="OAuth app client id, sent with `client_secret` as basic auth (env `GITHUB_CLIENT_ID`).")
    client_secret: str = secret("", "OAuth app client secret (env `GITHUB_CLIENT_SECRET`).")


class GistRepoProvider(GitHubRepoProvider):
    """`gist/<user>/<gist-id>[/<ref>]`."""

    hostname: str = Field("gist.github.com", description="Gist host, used in repository and ref URLs.")
    api_base_path: str = Field("https://api.github.com", description="GitHub API base URL used for gists (`{hostname}` is filled in).")
    allow_secret_gist: bool = Field(False, description="Allow secret (unlisted) gists.")


class GitLabRepoProvider(RepoProvider):
    """`gl/<url-escaped namespace/project>/<ref>`."""

    hostname: str = Field("gitlab.com", description="GitLab host (self-hosted: your host); used in repository and ref URLs.")
    api_base_url: str = Field("https://{hostname}/api/v4", description="API base URL; `{hostname}` is filled in.")
    access_token: str = secret("", "OAuth access token, sent as `Authorization: Bearer ...` (env `GITLAB_ACCESS_TOKEN`).")
    private_token: str = secret("", "Personal access token, sent as `PRIVATE-TOKEN` and used for cloning private repositories (env `GITLAB_PRIVATE_TOKEN`).")


NEVER_ALLOWED_GIT_PROTOCOLS = frozenset({"file", "ext", "fd"})


class GitRepoProvider(RepoProvider):
    """`git/<url-escaped repository URL>/<ref>`: any git server."""

    allowed_protocols: list[str] = Field(default_factory=lambda: ["http", "https", "git", "ssh"], description="URL schemes allowed (also given to git as `GIT_ALLOW_PROTOCOL`); `file`, `ext` and `fd` are never allowed.")
    ls_remote_timeout: float = Field(30.0, gt=0, description="Seconds `git ls-remote` may take before it is stopped.")
    ls_remote_max_output: ByteSize = Field(1024**2, gt=0, description="Largest `git ls-remote` output read, e.g. `1M`; past it git is stopped and the build fails naming the git server.")
    ls_remote_memory_limit: ByteSize = Field(256 * 1024**2, ge=0, description="Address-space limit of each `git ls-remote` process (and its remote helper), e.g. `256M`, so a server advertising millions of refs cannot make git swallow the host's memory; 0 means none.")

    @field_validator("allowed_protocols")
    @classmethod
    def _safe_protocols(cls, value: list[str]) -> list[str]:
        value = [p.strip().lower() for p in value]
        unsafe = sorted(set(value) & NEVER_ALLOWED_GIT_PROTOCOLS)
        if unsafe:
            raise ValueError(f"{', '.join(unsafe)} would let users read this server's files or run commands; they cannot be allowed")
        return value


class DoiProvider(RepoProvider):
    """Options shared by the DOI-based providers."""

    doi_resolver_url: str = Field("https://doi.org", description="DOI resolver; `<doi_resolver_url>/<DOI>` must redirect to the record's landing page. Also the base of resolved-ref URLs.")
    max_redirects: int = Field(10, ge=0, description="Redirects followed from the resolver to the landing page (each hop is checked against `denied_networks`).")


class ZenodoProvider(DoiProvider):
    """`zenodo/<DOI>`."""

    hosts: list[str] = Field(default_factory=lambda: ["zenodo.org", "sandbox.zenodo.org", "data.caltech.edu"], description="Hosts a Zenodo DOI may resolve to (Invenio installations); a DOI landing elsewhere is refused.")


class FigshareProvider(DoiProvider):
    """`figshare/<DOI>`."""

    api_base_url: str = Field("https://api.figshare.com/v2", description="Figshare API base URL, asked for an article's latest version when the DOI names none.")
    hosts: list[str] = Field(default_factory=lambda: ["figshare.com"], description="Hosts a Figshare DOI may resolve to; a DOI landing elsewhere is refused (repo2docker fetches articles from figshare.com only).")


class HydroshareProvider(DoiProvider):
    """`hydroshare/<resource URL or DOI>`."""

    base_url: str = Field("https://www.hydroshare.org", description="HydroShare site: its API is asked for a resource's modification date, and `<base_url>/resource/<id>` is what repo2docker fetches.")


class DataverseProvider(DoiProvider):
    """`dataverse/<DOI>`: any Dataverse installation the DOI resolves to."""


class CKANProvider(RepoProvider):
    """`ckan/<url-escaped dataset URL>`: any CKAN site (its API is found from the dataset URL)."""


class SwhidProvider(RepoProvider):
    """`swhid/<swh:1:...>`: Software Heritage archive identifiers (not in BinderHub)."""

    api_base_url: str = Field("https://archive.softwareheritage.org/api/1", description="Software Heritage API base URL; the web archive (for resolved-ref URLs) is this URL without `/api/1`.")
    access_token: str = secret("", "Bearer token raising the archive's rate limit.")


class WarmPool(Section):
    """Servers started ahead of demand so a launch hands one over instead of spawning."""

    enabled: bool = Field(False, description="Keep warm servers for the images below (docs/warm-pool.md). Ignored in auth mode, where servers belong to users.")
    images: dict[str, int] = Field(default_factory=dict, description="Full image name as launched (`image_prefix` + slug + `:` + ref) -> servers kept ready.")
    top_n: int = Field(0, ge=0, description="Also keep `top_n_size` servers for each of the N most launched images.")
    top_n_size: int = Field(1, ge=1, description="Servers kept per image chosen by `top_n`.")
    max_server_age: float = Field(540.0, gt=0, description="Seconds after which an unused warm server is stopped and replaced. Keep it below the hub culler's idle timeout (600 s in BinderHub's chart), which would otherwise take warm servers first.")
    idle_shrink_after: float = Field(1800.0, gt=0, description="Seconds without a launch of an image after which its pool shrinks to zero.")
    refill_concurrency: int = Field(2, ge=1, description="Warm servers started at once.")



class BuildStore(Section):
    """Where builds are kept beyond a process's life: the history, events and logs behind `/api/v1/builds`."""

    enabled: bool = Field(True, description="Keep builds in the store. Off: builds have ids only while they run, `/api/v1` answers 503 and nothing is written to disk.")
    url: str = secret("", "SQLAlchemy URL of the store: `sqlite+aiosqlite:///<path>` or `postgresql+asyncpg://<user>:<password>@<host>/<database>` (`sqlite://` and `postgresql://` get these async drivers). Empty: the SQLite file `builds.sqlite3` in `state_dir`. Its schema is migrated at start-up.")
    state_dir: str = Field("", description="Directory of the embedded SQLite store, made if missing. Empty: `$XDG_STATE_HOME/binderapi`, else `~/.local/state/binderapi`.")
    retention_days: float = Field(30, ge=0, description="Days a finished build (its record, events and log) is kept; a periodic sweep deletes older ones. 0 keeps them forever.")
    max_log_bytes: ByteSize = Field(1024**2, ge=1024, description="Builder output kept per build, e.g. `1M`. Past it, the first and the last half are kept with a marker line between them saying how much was left out.")
    flush_interval: float = Field(0.25, gt=0, description="Seconds between batched writes of running builds' events and logs to the store (a finished build is written at once).")
    lease_seconds: float = Field(15, ge=1, description="Replicas sharing a PostgreSQL store: how long a replica's claim on a build outlives its last heartbeat (sent every third of it). A replica that stops mid-build is noticed by another within about this long, which then follows the builder to its end, or marks the build failed if the builder is gone. Unused with SQLite.")

# BinderHub's established environment variables, read as defaults (below the config file).
LEGACY_ENV: dict[str, tuple[str, str]] = {
    "JUPYTERHUB_SERVICE_PREFIX": ("BinderHub", "base_url"),
    "JUPYTERHUB_API_TOKEN": ("BinderHub", "hub_api_token"),
    "JUPYTERHUB_API_URL": ("Launcher", "hub_api_url"),
    "JUPYTERHUB_ALLOW_NAMED_SERVERS": ("Launcher", "allow_named_servers"),
    "JUPYTERHUB_NAMED_SERVER_LIMIT_PER_USER": ("Launcher", "named_server_limit_per_user"),
    "JUPYTERHUB_CLIENT_ID": ("HubOAuth", "oauth_client_id"),
    "JUPYTERHUB_OAUTH_CALLBACK_URL": ("HubOAuth", "oauth_redirect_uri"),
    "BINDERHUB_BUILD_TOKEN_SECRET": ("BinderHub", "build_token_secret"),
    "GITHUB_ACCESS_TOKEN": ("GitHubRepoProvider", "access_token"),
    "GITHUB_CLIENT_ID": ("GitHubRepoProvider", "client_id"),
    "GITHUB_CLIENT_SECRET": ("GitHubRepoProvider", "client_secret"),
    "GITLAB_ACCESS_TOKEN": ("GitLabRepoProvider", "access_token"),
    "GITLAB_PRIVATE_TOKEN": ("GitLabRepoProvider", "private_token"),
    "BUILD_NAMESPACE": ("KubernetesBuildExecutor", "namespace"),
}

SECTIONS: dict[str, type[Section]] = {
    cls.__name__: cls
    for cls in (
        BinderHub, BuildExecutor, KubernetesBuildExecutor, DockerBuildExecutor, KubernetesCleaner,
        DockerCleaner, DockerRegistry, LaunchQuota, KubernetesLaunchQuota, DockerLaunchQuota, Launcher,
        HubOAuth, EventLog, RateLimiter, RepoProvider, GitHubRepoProvider, GistRepoProvider, GitLabRepoProvider,
        GitRepoProvider, DoiProvider, ZenodoProvider, FigshareProvider, HydroshareProvider,
        DataverseProvider, CKANProvider, SwhidProvider, WarmPool, BuildStore,
    )
}


def section_parent(name: str) -> str | None:
    """The section a section inherits unset options from (traitlets' class hierarchy)."""
    base = SECTIONS[name].__mro__[1]
    return base.__name__ if base.__name__ in SECTIONS else None
