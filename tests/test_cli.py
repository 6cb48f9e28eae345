"""The binderapi command: configuration output, clear start-up errors, serving, log redaction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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
