"""deploy/kubernetes: the kustomize manifests, the z2jh values and the guide (docs/kubernetes.md).

Nothing here contacts a cluster. The manifests are rendered with ``kubectl kustomize`` (these
tests skip, saying why, where kubectl is missing or too old for kustomize components), every
rendered object is validated against the Kubernetes schemas in strict mode (kubernetes-validate),
and what binderapi relies on is checked: the RBAC rules, the service account, the probes, the
config file and environment through binderapi's own loader, the Secrets the pods reference, and the
JupyterHub side (the ``binder`` service, its scopes, the spawner snippet).
"""

from __future__ import annotations

import ast
import asyncio
import copy
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import yaml

import binderapi
from binderapi.services import STORE_HEALTH_CHECK
from binderapi.settings import Settings, load_settings
from binderapi.store import store_url
from binderapi.store.sql import SQLBuildStore

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
GUIDE = ROOT / "docs" / "kubernetes.md"
VALUES = DEPLOY / "jupyterhub-values.yaml"
SPAWNER_FILES_VALUES = DEPLOY / "jupyterhub-values-spawner-files.yaml"
HUB_SERVICE_VALUES = DEPLOY / "jupyterhub-values-hub-service.yaml"

# The oldest Kubernetes that z2jh 4.x supports is 1.28; validate against a version kubernetes-validate
# ships schemas for, a little newer, so fields removed since are caught too.
K8S_VERSION = "1.30.0"

# What BinderHub's chart grants, and all binderapi's Kubernetes backend does (rbac.yaml).
BASE_RULES = {("", "pods"): {"get", "watch", "list", "create", "delete"}, ("", "pods/log"): {"get"}}
# components/build-secrets: per-build credential Secrets are created and deleted, never read.
SECRET_RULES = {("", "secrets"): {"create", "delete"}}

# Secrets the manifests reference without containing them, and who makes each.
OPERATOR_SECRETS = {"binder-build-docker-config", "binderapi", "binderapi-store"}  # kubectl commands in the guide
CHART_SECRETS = {"hub"}  # the z2jh chart: hub.services.<name>.apiToken

# Placeholder values for environment variables that come from Secrets, so the configuration can be
# loaded as the pod would see it.
FAKE_SECRET_VALUES = {"BINDERHUB_BUILD_TOKEN_SECRET": "ab" * 32, "JUPYTERHUB_API_TOKEN": "t" * 64,
                      "BINDERAPI_BUILDSTORE__URL": "postgresql://binderapi:placeholder@postgres.example.org:5432/binderapi"}


# -- rendering ---------------------------------------------------------------------------------


def _kubectl_problem() -> str | None:
    """Why ``kubectl kustomize`` cannot render these manifests here, or None."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return ("kubectl is not installed: the manifests cannot be rendered (install a kubectl of "
                "1.21 or newer; Debian's kubernetes-client 1.20 is too old for kustomize components)")
    try:
        result = subprocess.run([kubectl, "version", "--client", "-o", "json"],
                                capture_output=True, text=True, timeout=60)
        version = json.loads(result.stdout).get("kustomizeVersion", "")
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        return f"kubectl does not report its kustomize version ({e})"
    major = re.match(r"v?(\d+)\.", version)
    if not major or int(major.group(1)) < 4:
        return f"kubectl's kustomize {version or '(unknown)'} is too old for components (needs v4, kubectl 1.21+)"
    return None


KUBECTL_PROBLEM = _kubectl_problem()
needs_kubectl = pytest.mark.skipif(KUBECTL_PROBLEM is not None, reason=KUBECTL_PROBLEM or "")


def kustomize(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass
class Rendering:
    name: str
    objects: list[dict[str, Any]]
    components: frozenset[str] = frozenset()

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [obj for obj in self.all(kind) if name is None or obj["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((obj for obj in self.all(kind) if obj["metadata"]["name"] == name), None)

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment", "binderapi")

    @property
    def container(self) -> dict[str, Any]:
        containers = self.deployment["spec"]["template"]["spec"]["containers"]
        return next(c for c in containers if c["name"] == "binderapi")

    @property
    def namespace(self) -> str:
        return self.deployment["metadata"]["namespace"]


def guide_site_overlay() -> str:
    """The site overlay of the guide's step 6, as written there."""
    match = re.search(r"<!-- site-overlay: my-binder/kustomization.yaml -->\s*```yaml\n(.*?)```",
                      GUIDE.read_text(), re.S)
    assert match, "docs/kubernetes.md lost its site overlay example (marked site-overlay)"
    return match.group(1)


SITE = "site overlay (guide, step 6)"
SITE_ALL = "site overlay + every component, other namespace"
RENDERINGS = ["base", "overlays/dev", "overlays/production", "overlays/dind", "overlays/replicas", SITE, SITE_ALL]
#: overlays whose replicas share a build store on PostgreSQL, readiness gated on it
SHARED_STORE = {"overlays/replicas"}
COMPONENTS = {"overlays/dind": {"dind"}, SITE: {"dind"}, SITE_ALL: {"dind", "hub-service", "build-secrets"}}


@pytest.fixture(scope="module")
def renderings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendering]:
    if KUBECTL_PROBLEM:
        pytest.skip(KUBECTL_PROBLEM)
    out = {name: Rendering(name, kustomize(DEPLOY / name), frozenset(COMPONENTS.get(name, ())))
           for name in RENDERINGS if name.startswith(("base", "overlays/"))}
    # The guide's site overlay, laid out as the guide says: my-binder/ beside deploy/.
    tree = tmp_path_factory.mktemp("checkout")
    shutil.copytree(DEPLOY, tree / "deploy" / "kubernetes")
    site = tree / "my-binder"
    site.mkdir()
    (site / "kustomization.yaml").write_text(guide_site_overlay())
    shutil.copy(DEPLOY / "base" / "config.yaml", site / "config.yaml")
    out[SITE] = Rendering(SITE, kustomize(site), frozenset(COMPONENTS[SITE]))
    # ... and with every component and another namespace, to show they compose.
    everything = tree / "everything"
    everything.mkdir()
    (everything / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "binder-elsewhere",
        "resources": ["../my-binder"],
        "components": [f"../deploy/kubernetes/components/{name}" for name in ("hub-service", "build-secrets")],
    }))
    out[SITE_ALL] = Rendering(SITE_ALL, kustomize(everything), frozenset(COMPONENTS[SITE_ALL]))
    return out


@pytest.fixture(params=RENDERINGS)
def rendering(request: pytest.FixtureRequest, renderings: dict[str, Rendering]) -> Rendering:
    return renderings[request.param]


def effective_settings(r: Rendering, workdir: Path) -> Settings:
    """binderapi's settings as the pod of this rendering would load them: the config file from the
    ConfigMap at the path the command line names, and the container's environment."""
    args = r.container["args"]
    assert args[:1] == ["--config-file"] and len(args) == 2, f"{r.name}: unexpected arguments {args}"
    config_path = args[1]
    mount = next((m for m in r.container["volumeMounts"] if m["mountPath"] == config_path), None)
    assert mount, f"{r.name}: nothing is mounted at {config_path}"
    volume = next(v for v in r.deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    configmap = r.one("ConfigMap", volume["configMap"]["name"])
    (workdir / "config.yaml").write_text(configmap["data"][mount["subPath"]])
    environ = {}
    for var in r.container.get("env", []):
        source = var.get("valueFrom", {})
        if "value" in var:
            environ[var["name"]] = var["value"]
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            environ[var["name"]] = r.namespace
        elif "secretKeyRef" in source:
            environ[var["name"]] = FAKE_SECRET_VALUES.get(var["name"], "secret-value")
        else:
            raise AssertionError(f"{r.name}: no test value for environment variable {var}")
    return load_settings(config_file=str(workdir / "config.yaml"), environ=environ, dotenv_path=None)


# -- schema validation ---------------------------------------------------------------------------


def validation_errors(objects: list[dict[str, Any]]) -> list[str]:
    errors = []
    for obj in objects:
        label = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{label}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:  # an unknown kind is a mistake too
            errors.append(f"{label}: {e.message}")
    return errors


@needs_kubectl
def test_every_object_validates_against_the_kubernetes_schemas(rendering: Rendering) -> None:
    assert validation_errors(rendering.objects) == []
    kinds = {obj["kind"] for obj in rendering.objects}
    assert {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment", "Service"} <= kinds
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, "binderapi needs no cluster-wide rights"


def test_the_validator_catches_unknown_fields_and_wrong_types() -> None:
    deployment = yaml.safe_load((DEPLOY / "base" / "deployment.yaml").read_text())
    assert validation_errors([deployment]) == []

    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/versions"
    assert any("pathh" in error for error in validation_errors([typo]))

    misplaced = copy.deepcopy(deployment)
    misplaced["spec"]["template"]["spec"]["readOnlyRootFilesystem"] = True  # belongs to a container
    assert validation_errors([misplaced])

    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    assert validation_errors([wrong_type])

    assert validation_errors([{"apiVersion": "v1", "kind": "Pood", "metadata": {"name": "x"}}])


# -- RBAC and identity ---------------------------------------------------------------------------


def role_rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def assert_rules(role: dict[str, Any], expected: dict[tuple[str, str], set[str]]) -> None:
    assert role_rules(role) == expected, f"Role {role['metadata']['name']} grants {role_rules(role)}"


@needs_kubectl
def test_rbac_is_exactly_what_the_build_backend_uses(rendering: Rendering, tmp_path: Path) -> None:
    expected = dict(BASE_RULES)
    if "build-secrets" in rendering.components:
        expected.update(SECRET_RULES)
    assert_rules(rendering.one("Role", "binderapi"), expected)
    # credentials go to Secrets exactly when the Role allows creating them
    settings = effective_settings(rendering, tmp_path)
    assert settings.KubernetesBuildExecutor.credentials_in_secret == ("build-secrets" in rendering.components)


@needs_kubectl
def test_a_widened_role_fails_the_rbac_check(renderings: dict[str, Rendering]) -> None:
    role = copy.deepcopy(renderings["base"].one("Role", "binderapi"))
    assert_rules(role, BASE_RULES)
    role["rules"][0]["verbs"].append("patch")
    with pytest.raises(AssertionError):
        assert_rules(role, BASE_RULES)
    role = copy.deepcopy(renderings["base"].one("Role", "binderapi"))
    role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    with pytest.raises(AssertionError):
        assert_rules(role, BASE_RULES)


@needs_kubectl
def test_the_deployment_runs_as_the_bound_service_account(rendering: Rendering) -> None:
    pod = rendering.deployment["spec"]["template"]["spec"]
    account = rendering.one("ServiceAccount", pod["serviceAccountName"])
    assert pod.get("automountServiceAccountToken", True), "the build backend needs the token"
    binding = rendering.one("RoleBinding", "binderapi")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "binderapi"}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": rendering.namespace}
    ]
    for obj in rendering.objects:
        assert obj["metadata"].get("namespace") == rendering.namespace, f"{obj['kind']} in another namespace"


# -- the container: probes, ports, security ---------------------------------------------------------


def dockerfile_facts() -> tuple[int, int]:
    """(uid, port) of the image the repository's Dockerfile builds."""
    text = (ROOT / "Dockerfile").read_text()
    uid = re.findall(r"^USER\s+(\d+)\s*$", text, re.M)
    port = re.findall(r"^EXPOSE\s+(\d+)\s*$", text, re.M)
    assert uid and port, "the Dockerfile no longer says its USER and EXPOSE as numbers"
    assert 'ENTRYPOINT ["binderapi"]' in text
    return int(uid[-1]), int(port[-1])


@needs_kubectl
def test_probes_hit_versions_on_the_container_port(rendering: Rendering, tmp_path: Path) -> None:
    settings = effective_settings(rendering, tmp_path)
    _, image_port = dockerfile_facts()
    ports = {p["name"]: p["containerPort"] for p in rendering.container["ports"]}
    assert ports == {"http": settings.BinderHub.port} and settings.BinderHub.port == image_port
    for kind in ("readinessProbe", "livenessProbe"):
        assert kind in rendering.container, f"{rendering.name}: no {kind}"
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = rendering.container.get(kind)
        if probe:
            path = "versions"
            if kind == "readinessProbe" and rendering.name in SHARED_STORE:  # the store's check alone
                path = "health?service=" + STORE_HEALTH_CHECK.replace(" ", "%20")
            assert probe["httpGet"]["path"] == settings.BinderHub.base_url + path, (kind, probe)
            assert ports.get(probe["httpGet"]["port"], probe["httpGet"]["port"]) == image_port, (kind, probe)

    service = rendering.one("Service", "binderapi")
    pod_labels = rendering.deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert rendering.deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@needs_kubectl
def test_binderapi_runs_unprivileged_with_a_read_only_root(rendering: Rendering) -> None:
    uid, _ = dockerfile_facts()
    pod = rendering.deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    security = rendering.container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= rendering.container["resources"]["requests"].keys()
    assert "memory" in rendering.container["resources"]["limits"]
    writable = {m["mountPath"] for m in rendering.container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp"}
    # the hub's NetworkPolicy (z2jh) admits only pods with this label to the hub API
    assert rendering.deployment["spec"]["template"]["metadata"]["labels"]["hub.jupyter.org/network-access-hub"] == "true"


def test_the_base_image_is_this_version() -> None:
    deployment = yaml.safe_load((DEPLOY / "base" / "deployment.yaml").read_text())
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"binderapi:{binderapi.__version__}"


# -- configuration -------------------------------------------------------------------------------


@needs_kubectl
def test_the_config_loads_with_binderapis_own_loader(rendering: Rendering, tmp_path: Path) -> None:
    settings = effective_settings(rendering, tmp_path)
    assert settings.warnings == []  # no deprecated options
    assert settings.BinderHub.build_class == "kubernetes"
    assert settings.KubernetesBuildExecutor.namespace == rendering.namespace
    assert settings.BinderHub.hub_url.startswith("https://")
    # the hub pod directly, through the Service the z2jh chart names `hub` (fullnameOverride "")
    assert settings.BinderHub.hub_url_local == "http://hub:8081/"
    assert settings.BinderHub.auth_enabled is False
    # the docker config binderapi reads is the push secret the build pods get
    config_dir, _, config_file = settings.DockerRegistry.docker_config_path.rpartition("/")
    mount = next(m for m in rendering.container["volumeMounts"] if m["mountPath"] == config_dir)
    volume = next(v for v in rendering.deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == settings.KubernetesBuildExecutor.push_secret
    assert volume["secret"]["items"] == [{"key": "config.json", "path": config_file}]

    hub_service = "hub-service" in rendering.components
    assert settings.BinderHub.base_url == ("/services/binder/" if hub_service else "/")
    dind = "dind" in rendering.components
    assert settings.KubernetesBuildExecutor.docker_host == ("/var/run/dind/docker.sock" if dind else "/var/run/docker.sock")


@needs_kubectl
def test_dev_overlay_is_small_and_verbose(renderings: dict[str, Rendering], tmp_path: Path) -> None:
    dev = renderings["overlays/dev"]
    settings = effective_settings(dev, tmp_path)
    assert settings.BinderHub.debug is True
    assert dev.deployment["spec"]["replicas"] == 1
    assert dev.container["image"] == "binderapi:dev"
    assert dev.container["imagePullPolicy"] == "IfNotPresent"  # an image loaded into kind/minikube


@needs_kubectl
@pytest.mark.parametrize("name", ["overlays/production", "overlays/replicas", SITE, SITE_ALL])
def test_production_requires_a_shared_build_token_secret(
    renderings: dict[str, Rendering], name: str, tmp_path: Path
) -> None:
    production = renderings[name]
    assert production.deployment["spec"]["replicas"] == 2
    required = [var for var in production.container["env"] if var["name"] == "BINDERHUB_BUILD_TOKEN_SECRET"]
    assert len(required) == 1
    assert required[0]["valueFrom"]["secretKeyRef"]["name"] == "binderapi"
    assert not required[0]["valueFrom"]["secretKeyRef"].get("optional")
    assert effective_settings(production, tmp_path).BinderHub.build_token_secret
    budget = production.one("PodDisruptionBudget", "binderapi")
    pod_labels = production.deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["minAvailable"] < production.deployment["spec"]["replicas"]


@needs_kubectl
def test_replicas_share_an_operator_provided_postgresql_and_are_ready_only_with_it(
    renderings: dict[str, Rendering], tmp_path: Path
) -> None:
    r = renderings["overlays/replicas"]
    assert r.deployment["spec"]["replicas"] >= 2
    [var] = [var for var in r.container["env"] if var["name"] == "BINDERAPI_BUILDSTORE__URL"]
    ref = var["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("binderapi-store", "url") and not ref.get("optional")
    # the URL reaches BuildStore.url through binderapi's own loader, and names a shared store
    settings = effective_settings(r, tmp_path)
    assert store_url(settings.BuildStore) == FAKE_SECRET_VALUES["BINDERAPI_BUILDSTORE__URL"]
    store = SQLBuildStore(store_url(settings.BuildStore))
    assert store.shared and store.url.drivername == "postgresql+asyncpg"
    # readiness asks the store's check alone (hard for a shared store); the startup and liveness
    # probes stay on /versions: a database outage takes replicas out of the Service, never restarts them
    probe = urlsplit(r.container["readinessProbe"]["httpGet"]["path"])
    assert probe.path == settings.BinderHub.base_url + "health"
    assert parse_qs(probe.query) == {"service": [STORE_HEALTH_CHECK]}
    assert r.container["livenessProbe"]["httpGet"]["path"].endswith("/versions")
    # every other overlay keeps the embedded default
    for name in RENDERINGS:
        if name not in SHARED_STORE:
            other = renderings[name]
            assert not any(v["name"] == "BINDERAPI_BUILDSTORE__URL" for v in other.container.get("env", []))


@needs_kubectl
@pytest.mark.parametrize("name", ["overlays/dind", SITE, SITE_ALL])
def test_dind_daemons_serve_the_socket_builds_use(renderings: dict[str, Rendering], name: str, tmp_path: Path) -> None:
    r = renderings[name]
    settings = effective_settings(r, tmp_path)
    socket = settings.KubernetesBuildExecutor.docker_host
    daemonset = r.one("DaemonSet", "binderapi-dind")
    pod = daemonset["spec"]["template"]
    dind = pod["spec"]["containers"][0]
    assert dind["image"].startswith("docker:") and dind["image"].endswith("-dind")
    assert dind["securityContext"]["privileged"] is True
    assert f"--host=unix://{socket}" in dind["args"]
    # the socket's directory is a hostPath, the one build pods mount the socket from
    mount = next(m for m in dind["volumeMounts"] if m["mountPath"] == socket.rpartition("/")[0])
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["hostPath"]["path"] == socket.rpartition("/")[0]
    # sticky builds find these pods with KubernetesBuildExecutor.builder_pod_selector
    selector = dict(part.split("=") for part in settings.KubernetesBuildExecutor.builder_pod_selector.split(","))
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # a daemon wherever build pods may land
    for toleration in settings.KubernetesBuildExecutor.tolerations:
        assert toleration in pod["spec"]["tolerations"]
    # and the binderapi Deployment does not take the daemons for its own pods
    deployment_selector = r.deployment["spec"]["selector"]["matchLabels"]
    assert not deployment_selector.items() <= pod["metadata"]["labels"].items()


# -- secrets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str | None  # None: every key (envFrom) or the whole Secret
    optional: bool
    where: str


def secret_refs(r: Rendering, settings: Settings) -> list[SecretRef]:
    refs = [SecretRef(settings.KubernetesBuildExecutor.push_secret, "config.json", False, "push_secret (build pods)")]
    for workload in r.all("Deployment") + r.all("DaemonSet"):
        spec = workload["spec"]["template"]["spec"]
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                secret = volume["secret"]
                for item in secret.get("items", [{"key": None}]):
                    refs.append(SecretRef(secret["secretName"], item["key"], bool(secret.get("optional")), where))
        for pull in spec.get("imagePullSecrets", []):
            refs.append(SecretRef(pull["name"], None, False, where))
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append(SecretRef(ref["name"], ref["key"], bool(ref.get("optional")), where))
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    ref = source["secretRef"]
                    refs.append(SecretRef(ref["name"], None, bool(ref.get("optional")), where))
    return refs


def guide_secret_commands() -> dict[str, str]:
    """``kubectl create secret generic <name> ...`` commands of the guide, by Secret name."""
    text = re.sub(r"\\\n\s*", " ", GUIDE.read_text())
    return {m.group(1): m.group(0) for m in re.finditer(r"kubectl(?: -n \S+)? create secret generic (\S+)[^\n]*", text)}


@needs_kubectl
def test_every_referenced_secret_is_provided(rendering: Rendering, tmp_path: Path) -> None:
    settings = effective_settings(rendering, tmp_path)
    commands = guide_secret_commands()
    values = yaml.safe_load(VALUES.read_text())
    for ref in secret_refs(rendering, settings):
        in_manifests = rendering.find("Secret", ref.name)
        if in_manifests is not None:
            keys = {**in_manifests.get("data", {}), **in_manifests.get("stringData", {})}
            assert ref.key is None or ref.key in keys, ref
        elif ref.name in OPERATOR_SECRETS:
            assert ref.name in commands, f"{ref}: the guide does not say how to create it"
            if ref.key and not ref.optional:
                assert re.search(rf"--from-(literal|file)={re.escape(ref.key)}=", commands[ref.name]), (
                    f"{ref}: the guide's command does not create the required key")
        elif ref.name in CHART_SECRETS:
            service = re.fullmatch(r"hub\.services\.([\w-]+)\.apiToken", ref.key or "")
            assert service, f"{ref}: not a service token of the z2jh chart"
            definition = values["hub"]["services"][service.group(1)]
            assert "apiToken" not in definition and "api_token" not in definition, (
                "the token is generated by the chart; none may be committed")
            assert ref.key in GUIDE.read_text()
        else:
            raise AssertionError(f"{ref}: neither in the manifests nor created by the operator or the chart")


@needs_kubectl
def test_no_secret_values_in_the_manifests(rendering: Rendering) -> None:
    assert rendering.all("Secret") == []


# -- the JupyterHub side ---------------------------------------------------------------------------

# What binderapi's launcher asks of the hub's REST API, and the scope JupyterHub checks for each.
LAUNCHER_NEEDS = {
    "POST users/{name}: the temporary user of a launch": "admin:users",
    "DELETE users/{name}: remove it after a failed launch": "delete:users",
    "GET users/{name}: a user's servers (auth mode limits)": "read:users",
    "GET users/{name}: ... and their server models": "read:servers",
    "POST users/{name}/servers/{server}: start the server": "start:servers",
    "GET users/{name}/servers/{server}/progress: follow it": "read:servers",
    "DELETE users/{name}/servers/{server}: stop it after a failure": "delete:servers",
}


def values_and_snippet() -> tuple[dict[str, Any], str]:
    values = yaml.safe_load(VALUES.read_text())
    return values, values["hub"]["extraConfig"]["binderapi-spawner"]


def test_values_define_the_binder_service_and_its_role() -> None:
    values, _ = values_and_snippet()
    assert values["fullnameOverride"] == ""  # names `hub`, `proxy-public` as the manifests use
    assert values["hub"]["services"]["binder"] == {}  # token generated by the chart, no url
    role = values["hub"]["loadRoles"]["binder"]
    assert role["services"] == ["binder"]
    assert sorted(role["scopes"]) == ["admin:users", "servers"]
    assert values["hub"]["allowNamedServers"] is False
    assert values["hub"]["config"]["JupyterHub"]["authenticator_class"] == "null"
    assert values["cull"]["enabled"] is True and values["cull"]["users"] is True
    assert values["singleuser"]["storage"]["type"] == "none"
    assert values["prePuller"]["hook"]["enabled"] is False


def test_the_binder_role_grants_what_the_launcher_needs_and_not_more() -> None:
    from jupyterhub.scopes import expand_scopes

    values, _ = values_and_snippet()
    granted = expand_scopes(set(values["hub"]["loadRoles"]["binder"]["scopes"]))
    missing = {call: scope for call, scope in LAUNCHER_NEEDS.items() if scope not in granted}
    assert missing == {}
    # binderapi never calls single-user servers, reads tokens or manages the hub
    assert not granted & {"access:servers", "read:tokens", "tokens", "admin:servers", "admin-ui", "shutdown"}


def test_the_spawner_snippet_compiles_and_configures_kubespawner_with_the_mixin() -> None:
    kubespawner = pytest.importorskip("kubespawner", reason="jupyterhub-kubespawner (test extra) is not installed")
    from traitlets.config import Config

    from binderapi.spawner import BinderSpawnerMixin

    _, snippet = values_and_snippet()
    code = compile(snippet, "hub.extraConfig.binderapi-spawner", "exec")
    imported = {node.module for node in ast.walk(ast.parse(snippet)) if isinstance(node, ast.ImportFrom)}
    assert "binderapi.spawner" in imported

    c = Config()
    namespace: dict[str, Any] = {"c": c}
    exec(code, namespace)  # as z2jh runs hub.extraConfig inside jupyterhub_config.py
    spawner = c.JupyterHub.spawner_class
    assert issubclass(spawner, kubespawner.KubeSpawner) and issubclass(spawner, BinderSpawnerMixin)
    assert spawner.__mro__[1] is BinderSpawnerMixin  # the mixin's start/get_args wrap KubeSpawner's

    # the hub side matches binderapi's base configuration
    values = yaml.safe_load(VALUES.read_text())
    settings = load_settings(config_file=str(DEPLOY / "base" / "config.yaml"), environ={}, dotenv_path=None)
    assert c.BinderSpawnerMixin.auth_enabled == settings.BinderHub.auth_enabled
    assert c.BinderSpawnerMixin.cors_allow_origin == settings.BinderHub.cors_allow_origin
    assert values["hub"]["allowNamedServers"] == settings.Launcher.allow_named_servers
    assert values["hub"]["extraEnv"]["BINDER_ALLOWED_IMAGE_PREFIX"] == settings.BinderHub.image_prefix


def test_the_hub_refuses_images_from_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("kubespawner", reason="jupyterhub-kubespawner (test extra) is not installed")
    from tornado import web
    from traitlets.config import Config

    values, snippet = values_and_snippet()
    prefix = values["hub"]["extraEnv"]["BINDER_ALLOWED_IMAGE_PREFIX"]
    monkeypatch.setenv("BINDER_ALLOWED_IMAGE_PREFIX", prefix)
    c = Config()
    exec(compile(snippet, "extraConfig", "exec"), {"c": c})
    check = c.KubeSpawner.pre_spawn_hook

    def spawner(image: str) -> Any:
        return type("Spawner", (), {"user_options": {"image": image, "token": "t"}})()

    asyncio.run(check(spawner(prefix + "gh-org-repo-abc:0123")))
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(check(spawner("docker.io/someone/miner:latest")))
    assert refused.value.status_code == 400


def test_a_broken_snippet_would_be_caught() -> None:
    _, snippet = values_and_snippet()
    with pytest.raises(SyntaxError):
        compile(snippet.replace("class BinderSpawner(", "class BinderSpawner(("), "extraConfig", "exec")


def test_the_mixin_mounted_by_hub_extra_files_imports_on_its_own(tmp_path: Path) -> None:
    """Option B: the stock hub image gets binderapi/__init__.py and binderapi/spawner.py only."""
    _, snippet = values_and_snippet()
    mount_root = re.search(r'BINDERAPI_MOUNT = Path\("([^"]+)"\)', snippet).group(1)
    files = yaml.safe_load(SPAWNER_FILES_VALUES.read_text())["hub"]["extraFiles"]
    by_path = {entry["mountPath"]: entry for entry in files.values()}
    assert set(by_path) == {f"{mount_root}/binderapi/__init__.py", f"{mount_root}/binderapi/spawner.py"}
    assert "stringData" not in files["binderapi-spawner"]  # given with --set-file from the checkout
    for text in (GUIDE.read_text(), VALUES.read_text(), SPAWNER_FILES_VALUES.read_text()):
        assert "--set-file hub.extraFiles.binderapi-spawner.stringData=src/binderapi/spawner.py" in text
    assert (ROOT / "src" / "binderapi" / "spawner.py").is_file()

    package = tmp_path / "binderapi"
    package.mkdir()
    (package / "__init__.py").write_text(files["binderapi-package"]["stringData"])
    shutil.copy(ROOT / "src" / "binderapi" / "spawner.py", package / "spawner.py")
    check = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import binderapi.spawner as m; "
             f"assert m.__file__.startswith({str(tmp_path)!r}), m.__file__; "
             "assert 'fastapi' not in sys.modules; print(m.BinderSpawnerMixin.__name__)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "BinderSpawnerMixin"


def test_the_mixin_needs_only_what_the_hub_image_has() -> None:
    """Both options install binderapi's spawner without binderapi's dependencies (hub-image uses
    --no-deps, option B mounts two files): it may import only these."""
    allowed = set(sys.stdlib_module_names) | {"traitlets", "tornado", "jupyterhub", "__future__"}
    tree = ast.parse((ROOT / "src" / "binderapi" / "spawner.py").read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert roots <= allowed, f"binderapi.spawner imports {sorted(roots - allowed)}, not in the hub image"
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree)), "relative import"
    init = ast.parse((ROOT / "src" / "binderapi" / "__init__.py").read_text())
    assert not any(isinstance(node, ast.Import | ast.ImportFrom) for node in ast.walk(init))
    assert "--no-deps" in (DEPLOY / "hub-image" / "Dockerfile").read_text()


def test_the_hub_service_url_matches_the_component() -> None:
    values = yaml.safe_load(HUB_SERVICE_VALUES.read_text())
    [(name, service)] = values["hub"]["services"].items()
    assert name in yaml.safe_load(VALUES.read_text())["hub"]["services"]
    url = re.fullmatch(r"http://([a-z0-9-]+)(?::(\d+))?", service["url"])
    k8s_service = yaml.safe_load((DEPLOY / "base" / "service.yaml").read_text())
    assert url and url.group(1) == k8s_service["metadata"]["name"]
    assert int(url.group(2) or 80) == k8s_service["spec"]["ports"][0]["port"]
    patch = yaml.safe_load((DEPLOY / "components" / "hub-service" / "deployment-patch.yaml").read_text())
    container = patch["spec"]["template"]["spec"]["containers"][0]
    env = {var["name"]: var["value"] for var in container["env"]}
    # JupyterHub's proxy serves the service `name` at /services/<name>/ and keeps the path
    assert env["BINDERAPI_BINDERHUB__BASE_URL"] == f"/services/{name}/"


# -- the guide -----------------------------------------------------------------------------------


def test_the_guide_walks_through_a_real_deployment() -> None:
    text = GUIDE.read_text()
    for needed in ("kubectl create namespace", "create secret generic binder-build-docker-config",
                   "kubectl apply -k", "helm upgrade --install", "/health", "/build/gh/",
                   "Moving from BinderHub", "What was tested"):
        assert needed in text, needed
    assert not (DEPLOY / "README.md").exists()  # the guide is the one place


def test_files_the_commands_name_exist() -> None:
    texts = [GUIDE.read_text()] + [path.read_text() for path in DEPLOY.glob("*.yaml")]
    named = set()
    for text in texts:
        named |= set(re.findall(r"(?:--values|-f|--from-file=\S+=|stringData=)\s*((?:deploy|src)/[\w./-]+)", text))
        named |= set(re.findall(r"\b(deploy/kubernetes/[\w./-]*\w)", text))
    assert named
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert missing == []
