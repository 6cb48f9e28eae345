"""The binderapi command: configuration output, clear start-up errors, serving, log redaction."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fixtures.server import free_port
from test_settings import BINDERHUB_OPTIONS

BINDERAPI = [sys.executable, "-m", "binderapi"]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("BINDERAPI_")}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BINDERAPI, *args], capture_output=True, text=True, timeout=60, env=env or CLEAN_ENV)


def test_show_config_json_lists_every_option():
    result = run("--show-config-json")
    assert result.returncode == 0, result.stderr
    binderhub = json.loads(result.stdout)["BinderHub"]
    for option, default in BINDERHUB_OPTIONS.items():
        if option == "show_config_json":
            continue
        assert binderhub[option] == default, option


def test_show_config_is_reusable_yaml(tmp_path):
    result = run("--show-config", "--BinderHub.image_prefix=127.0.0.1:5000/x-", "--port", "9999")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "again.yaml"
    path.write_text(result.stdout.replace("show_config: true", "show_config: false"))
    again = run("--show-config-json", "--config-file", str(path))
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)["BinderHub"]
    assert (data["image_prefix"], data["port"]) == ("127.0.0.1:5000/x-", 9999)


@pytest.mark.parametrize("args,fragment", [
    (["--BinderHub.ban_networks", '{"10.0.0.300/8": "x"}'], "not a valid CIDR"),
    (["--config-file", "/nonexistent/binderhub.yaml"], "Cannot read config file /nonexistent/binderhub.yaml"),
    (["--BinderHub.nonsense=1"], "unknown option --BinderHub.nonsense"),
    (["--port", "70000"], "--BinderHub.port"),
])
def test_bad_configuration_stops_with_one_clear_message(args, fragment):
    result = run(*args)
    assert result.returncode != 0
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("binderapi: ")


@pytest.mark.docker  # the command starts the Docker backend (build_class docker)
def test_serves_and_redacts_secrets_from_access_logs():
    port = free_port()
    proc = subprocess.Popen(
        [*BINDERAPI, "--ip", "127.0.0.1", "--port", str(port), "--log-level", "INFO",
         "--BinderHub.hub_api_token=hub-secret-value", "--BinderHub.build_class=docker"],
        stderr=subprocess.PIPE, text=True, env=CLEAN_ENV)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/versions", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "binderapi did not start"
                time.sleep(0.05)
        r = httpx.get(f"http://127.0.0.1:{port}/versions?build_token=abc123secret&api_key=k3y-value&x=visible",
                      headers={"Authorization": "token hub-secret-value"})
        assert r.status_code == 200
        httpx.get(f"http://127.0.0.1:{port}/nope?token=hub-secret-value")
        # a git URL with user-info is refused, and its access log line keeps no password
        refused = httpx.get(f"http://127.0.0.1:{port}/build/git/https%3A%2F%2Fuser%3Apassw0rd-value%40git.example%2Fr/HEAD",
                            headers={"Accept": "text/event-stream"})
        assert '"phase":"failed"' in refused.text
        # the command serves with the request head limits (httpserver.py)
        flood = httpx.get(f"http://127.0.0.1:{port}/versions", headers={"X-Big": "a" * 100_000})
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert flood.status_code == 431
    assert "/versions" in stderr and "x=visible" in stderr
    assert "/build/git/https%3A//[secret]%40git.example" in stderr
    for secret in ("abc123secret", "k3y-value", "hub-secret-value", "passw0rd-value"):
        assert secret not in stderr
    assert "[secret]" in stderr


def test_show_config_reports_deprecated_options_on_stderr():
    result = run("--show-config", "--BinderHub.build_image=example/r2d:1")
    assert result.returncode == 0, result.stderr
    assert "binderapi: warning: BinderHub.build_image is deprecated: use KubernetesBuildExecutor.build_image" in result.stderr
    assert "build_image: example/r2d:1" in result.stdout  # forwarded
    assert "warning" not in result.stdout  # stdout stays a reusable config file


def test_show_config_names_what_a_helm_values_file_leaves_out(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text("ingress: {enabled: true}\ncors: {allowOrigin: '*'}\nconfig:\n  BinderHub: {use_registry: false}\n")
    result = run("--show-config-json", "-f", str(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["BinderHub"]["cors_allow_origin"] == "*"
    assert "binderapi: warning: Helm values: ignored: ingress" in result.stderr


@pytest.mark.parametrize("flag", ["-f", "--config-file"])
def test_python_config_file_says_it_is_not_supported(tmp_path, flag):
    path = tmp_path / "binderhub_config.py"
    path.write_text('c.BinderHub.use_registry = False\nc.BinderHub.hub_url = "http://127.0.0.1:8000"\n')
    result = run(flag, str(path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"binderapi: Config file {path} is a Python (traitlets) config file")
    assert "use_registry: false" in result.stderr and "hub_url: http://127.0.0.1:8000" in result.stderr


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: closed, cluster: {server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}]
contexts: [{name: closed, context: {cluster: closed, user: u, namespace: default}}]
current-context: closed
users: [{name: u, user: {token: not-a-real-token}}]
"""


@pytest.mark.parametrize("kubeconfig", ["closed port", "missing file"])
def test_unreachable_kubernetes_for_the_quota_does_not_stop_the_start(tmp_path, kubeconfig):
    """builder_required: false starts without the Kubernetes API, for builds and the launch quota
    alike; /health says what is wrong instead of counting zero servers."""
    path = tmp_path / "kubeconfig"
    if kubeconfig == "closed port":
        path.write_text(KUBECONFIG.replace("{port}", str(free_port())))  # nothing listens there
    port = free_port()
    proc = subprocess.Popen(
        [*BINDERAPI, "--ip", "127.0.0.1", "--port", str(port), "--BinderHub.builder_required=false",
         "--BinderHub.use_registry=false", "--BinderHub.build_class=kubernetes",
         "--BinderHub.launch_quota_class=kubernetes", f"--KubernetesBuildExecutor.kubeconfig={path}",
         "--KubernetesBuildExecutor.api_timeout=1"],
        stderr=subprocess.PIPE, text=True, env=CLEAN_ENV)
    try:
        deadline = time.monotonic() + 45
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30)
                break
            except httpx.TransportError:
                assert proc.poll() is None, f"binderapi stopped: {proc.communicate(timeout=10)[1]}"
                assert time.monotonic() < deadline, "binderapi did not start"
                time.sleep(0.1)
        checks = {c["service"]: c for c in health.json()["checks"]}
        assert health.status_code == 503 and checks["Builder"]["ok"] is False
        quota = checks["Pod quota"]
        assert quota["ok"] is False and quota["_ignore_failure"] is True
        expected = "not listed yet from https://127.0.0.1" if kubeconfig == "closed port" else "cannot reach Kubernetes"
        assert expected in quota["error"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    if kubeconfig == "missing file":
        assert "KubernetesLaunchQuota cannot reach Kubernetes" in stderr
        assert "continuing because builder_required is false (see /health)" in stderr


HUB_CONFIG = """
c.JupyterHub.bind_url = "http://127.0.0.1:{public}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.pid_file = {pid_file!r}
c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/cookie_secret"
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.services = [{{
    "name": "binder", "url": "http://127.0.0.1:{binder}",
    "command": {command!r},
}}]
"""


@pytest.mark.hub
def test_runs_as_a_jupyterhub_managed_service_under_its_prefix(tmp_path):
    """JupyterHub starts binderapi as a managed service and proxies /services/binder/ to it unchanged:
    with nothing configured, binderapi serves under JUPYTERHUB_SERVICE_PREFIX."""
    from fixtures.hub import DEFAULT_CHP, JUPYTERHUB

    chp = os.environ.get("CHP_BIN") or str(DEFAULT_CHP)
    if not os.path.exists(chp) or not JUPYTERHUB.exists():
        pytest.fail("JupyterHub and configurable-http-proxy are needed (scripts/infra.sh up)")
    public, binder = free_port(), free_port()
    command = [*BINDERAPI, "--ip", "127.0.0.1", "--port", str(binder), "--BinderHub.build_class=docker",
               "--BinderHub.use_registry=false", "--BinderHub.launch_quota_class=none"]
    config = tmp_path / "jupyterhub_config.py"
    pid_file = tmp_path / "proxy.pid"
    config.write_text(HUB_CONFIG.format(public=public, hub=free_port(), proxy=free_port(), chp=chp,
                                        pid_file=str(pid_file), state=tmp_path, binder=binder, command=command))
    env = {k: v for k, v in CLEAN_ENV.items() if not k.startswith("JUPYTERHUB_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)  # the service runs this checkout, as the test does
    with open(tmp_path / "hub.log", "wb") as log:
        hub = subprocess.Popen([str(JUPYTERHUB), "-f", str(config)], cwd=tmp_path, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{public}/services/binder/versions", timeout=5)
                if r.status_code == 200 and "builder_info" in r.json():
                    break
            except (httpx.TransportError, ValueError):
                pass
            assert hub.poll() is None, (tmp_path / "hub.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "hub.log").read_text()[-3000:]
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{binder}/services/binder/health", timeout=30).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{binder}/versions", timeout=5).status_code == 404
    finally:
        hub.send_signal(signal.SIGTERM)  # it stops the managed service and its proxy
        try:
            hub.wait(timeout=30)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            proxy = int(pid_file.read_text())
            if b"configurable-http-proxy" in Path(f"/proc/{proxy}/cmdline").read_bytes():
                os.kill(proxy, signal.SIGTERM)
