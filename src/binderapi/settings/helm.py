"""Read a whole BinderHub Helm chart values file as configuration, saying what it leaves out.

The chart's ``config:`` block is BinderHub configuration as it is. Around it, a few chart values
end up in BinderHub's configuration through the chart's ``binderhub_config.py`` or its Secrets:
those are translated here. Everything else describes Kubernetes objects the chart creates
(Deployment, Service, Ingress, DaemonSets, the JupyterHub sub-chart): binderapi cannot act on it,
so each such key is named in a warning instead of being dropped silently.
"""

from __future__ import annotations

from typing import Any

# Top-level keys of the BinderHub chart's values (helm-chart/binderhub/values.yaml); one of them
# without any binderapi section name marks a file as a values file.
CHART_KEYS = frozenset({
    "config", "extraConfig", "registry", "cors", "imageBuilderType", "jupyterhub", "service", "ingress",
    "image", "replicas", "resources", "rbac", "nodeSelector", "tolerations", "pdb", "deployment",
    "dind", "pink", "imageCleaner", "extraEnv", "extraFiles", "extraPodSpec", "extraVolumes",
    "extraVolumeMounts", "initContainers", "lifecycle", "podAnnotations", "global", "custom",
    "networkPolicy", "serviceAccount", "buildPodsRegistryCredentials", "nameOverride", "fullnameOverride",
})

# imageBuilderType -> (values block with hostSocketDir, its default, the socket's file name)
BUILDER_SOCKETS = {"dind": ("dind", "/var/run/dind", "docker.sock"), "pink": ("pink", "/var/run/pink", "podman.sock")}
HUB_TOKEN_PATH = ("hub", "services", "binder", "apiToken")


def is_values_file(data: dict[str, Any], sections: set[str]) -> bool:
    """A chart values file: chart keys, and no top-level key naming a binderapi section."""
    lowered = {str(key).lower() for key in data}
    return not lowered & {name.lower() for name in sections} and bool(set(map(str, data)) & CHART_KEYS)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


def translate(values: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Configuration sections from a chart values file, and a notice naming each key ignored.

    The ``config:`` block wins over a translated value for the same option, as an explicit setting.
    """
    config: dict[str, dict[str, Any]] = {}
    for section, options in (values.get("config") or {}).items():
        config[section] = dict(options) if isinstance(options, dict) else options  # else: the loader explains
    notices: list[str] = []
    ignored: list[str] = []

    def put(section: str, option: str, value: Any, key: str) -> None:
        current = config.setdefault(section, {})
        if not isinstance(current, dict):
            return
        if option in current and current[option] != value:
            notices.append(f"Helm values: {key} ignored: config.{section}.{option} is set")
        else:
            current.setdefault(option, value)  # translated quietly: --show-config shows where it went

    registry = values.get("registry")
    if isinstance(registry, dict):
        if not _empty(registry.get("url")):
            # the chart's url is a docker config.json `auths` key, e.g. Docker Hub's v1 one
            from ..registry.dockerconfig import derive_url

            put("DockerRegistry", "url", derive_url({str(registry["url"]): {}}), "registry.url")
        for key in ("username", "password"):
            if not _empty(registry.get(key)):
                put("DockerRegistry", key, registry[key], f"registry.{key}")
        if not _empty(registry.get("username")) and not _empty(registry.get("password")):
            # the chart turns these into the build pods' push Secret; binderapi hands them to repo2docker
            credentials = {"registry": registry.get("url") or "", "username": registry["username"],
                           "password": registry["password"]}
            put("BuildExecutor", "registry_credentials", credentials, "registry.username/password")
        ignored += [f"registry.{key}" for key, value in registry.items()
                    if key not in ("url", "username", "password") and not _empty(value)]
    elif not _empty(registry):
        ignored.append("registry")

    # the 2i2c binderhub-service chart's form of the same credentials
    pods = values.get("buildPodsRegistryCredentials")
    if isinstance(pods, dict) and not any(_empty(pods.get(key)) for key in ("server", "username", "password")):
        from ..registry.dockerconfig import derive_url

        put("DockerRegistry", "url", derive_url({str(pods["server"]): {}}), "buildPodsRegistryCredentials.server")
        put("DockerRegistry", "username", pods["username"], "buildPodsRegistryCredentials.username")
        put("DockerRegistry", "password", pods["password"], "buildPodsRegistryCredentials.password")
        put("BuildExecutor", "registry_credentials",
            {"registry": pods["server"], "username": pods["username"], "password": pods["password"]},
            "buildPodsRegistryCredentials")
    elif not _empty(pods):
        ignored.append("buildPodsRegistryCredentials (needs server, username and password)")

    cors = values.get("cors")
    if isinstance(cors, dict):
        if not _empty(cors.get("allowOrigin")):
            put("BinderHub", "cors_allow_origin", cors["allowOrigin"], "cors.allowOrigin")
        ignored += [f"cors.{key}" for key, value in cors.items() if key != "allowOrigin" and not _empty(value)]
    elif not _empty(cors):
        ignored.append("cors")

    builder = values.get("imageBuilderType")
    if builder in BUILDER_SOCKETS:
        block, default_dir, socket = BUILDER_SOCKETS[builder]
        block_values = values.get(block) if isinstance(values.get(block), dict) else {}
        socket_dir = block_values.get("hostSocketDir") or default_dir
        put("KubernetesBuildExecutor", "docker_host", f"unix://{socket_dir.rstrip('/')}/{socket}", "imageBuilderType")
        notices.append(f"Helm values: imageBuilderType {builder}: binderapi does not create the {builder} "
                       "DaemonSet the chart runs; deploy it yourself (docs/kubernetes.md)")
    elif builder not in (None, "", "host"):
        ignored.append(f"imageBuilderType ({builder!r}: known values are host, dind, pink)")

    hub = values.get("jupyterhub")
    token = _get(hub, HUB_TOKEN_PATH)
    if not _empty(token):
        put("BinderHub", "hub_api_token", token, "jupyterhub." + ".".join(HUB_TOKEN_PATH))
    rest = _prune(hub, HUB_TOKEN_PATH)
    if rest:
        keys = ", ".join(f"jupyterhub.{key}" for key in rest) if isinstance(rest, dict) else "jupyterhub"
        ignored.append(f"{keys} (the JupyterHub chart's values: deploy JupyterHub with z2jh, docs/kubernetes.md)")

    if not _empty(values.get("extraConfig")):
        ignored.append("extraConfig (Python snippets, which binderapi never runs: write their "
                       "c.<Class>.<option> lines as config sections)")
    handled = {"config", "registry", "buildPodsRegistryCredentials", "cors", "imageBuilderType", "jupyterhub",
               "extraConfig"}
    if builder in BUILDER_SOCKETS:
        handled.add(BUILDER_SOCKETS[builder][0])
    others = [str(key) for key, value in values.items() if key not in handled and not _empty(value)]
    chart = [key for key in others if key in CHART_KEYS]
    unknown = [key for key in others if key not in CHART_KEYS]
    if chart:
        ignored.append(", ".join(chart) + " (Kubernetes objects the chart creates, not binderapi settings)")
    if unknown:
        ignored.append(", ".join(unknown) + " (neither a chart value nor a binderapi section)")
    notices += [f"Helm values: ignored: {item}" for item in ignored]
    return config, notices


def _get(value: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _prune(value: Any, drop: tuple[str, ...] = ()) -> Any:
    """``value`` without empty leaves, nor the leaf at path ``drop``: what is left is ignored."""
    if not isinstance(value, dict):
        return None if _empty(value) else value
    out = {}
    for key, item in value.items():
        if drop and key == drop[0] and len(drop) == 1:
            continue
        kept = _prune(item, drop[1:] if drop and key == drop[0] else ())
        if not _empty(kept):
            out[key] = kept
    return out
