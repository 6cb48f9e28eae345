"""Workload 5: the cost of one launch-quota check with 10 and 10,000 running servers, on the
Kubernetes test server of tests/fixtures/kube/ (docs/testing-kubernetes.md), run in this process.

binderapi's ``KubernetesLaunchQuota`` keeps counts from a watch; a check reads them. BinderHub
listed every single-user pod on every check; that is measured here the same way (one LIST through
kubernetes-asyncio per check, the JSON decoded and counted) for the comparison. Requests per check
come from the test server's request log.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from kubernetes_asyncio import client

from binderapi.backends.kubernetes.api import make_api_client
from binderapi.backends.kubernetes.quota import KubernetesLaunchQuota
from binderapi.settings import load_settings
from binderapi.supervisor import Supervisor

from .report import Report, Row, percentile

WORKLOAD = "quota check cost"
SELECTOR = "app=jupyterhub,component=singleuser-server"
IMAGE = "127.0.0.1:5000/binder-bench-quota:abc"


def _kube_server_class():
    tests = Path(__file__).resolve().parents[1] / "tests"
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    from fixtures.kube import KubeAPIServer  # the test server; importable from tests/

    return KubeAPIServer


async def measure(servers: int, checks: int, list_checks: int) -> dict[str, dict[str, float]]:
    kube = _kube_server_class()(kubelet=False, history_size=max(10_000, servers + 100))
    await kube.start()
    supervisor = Supervisor()
    quota = None
    api = None
    try:
        kube.add_pods(servers, prefix="jupyter-bench-", labels={"app": "jupyterhub", "component": "singleuser-server"})
        with tempfile.TemporaryDirectory(prefix="binderapi-bench-kube-") as tmp:
            kubeconfig = kube.write_kubeconfig(str(Path(tmp) / "kubeconfig"))
            settings = load_settings(cli={
                "BinderHub": {"build_class": "kubernetes"},
                "KubernetesBuildExecutor": {"kubeconfig": kubeconfig, "namespace": "default"},
                "KubernetesLaunchQuota": {"total_quota": 10 * servers + 100},
            }, environ={}, dotenv_path=None)
            quota = KubernetesLaunchQuota(settings, supervisor)
            await quota.start()
            if quota.total_servers() != servers:
                raise RuntimeError(f"the quota counted {quota.total_servers()} of {servers} servers")
            ours = await _time_checks(kube, checks, lambda: quota.check(IMAGE, {"quota": 10 * servers}, "bench"))
            await supervisor.close()  # its watches must not count as the full LIST's requests
            api = await make_api_client(kubeconfig)
            core = client.CoreV1Api(api)

            async def full_list() -> None:  # BinderHub's check: list every single-user pod, count
                response = await core.list_namespaced_pod("default", label_selector=SELECTOR, _preload_content=False)
                pods = json.loads(await response.read())["items"]
                total = len(pods)
                matching = sum(1 for p in pods if p["spec"]["containers"][0]["image"].rsplit(":", 1)[0] == IMAGE.rsplit(":", 1)[0])
                assert total == servers and matching >= 0

            theirs = await _time_checks(kube, list_checks, full_list)
    finally:
        if api is not None:
            await api.close()
        await supervisor.close()
        if quota is not None:
            await quota.close()
        await kube.close()
    return {"binderapi": ours, "full LIST": theirs}


async def _time_checks(kube, checks: int, check) -> dict[str, float]:
    kube.clear_requests()
    times = []
    for _ in range(checks):
        started = time.perf_counter()
        await check()
        times.append(time.perf_counter() - started)
    return {"checks": checks, "requests_per_check": round(len(kube.requests) / checks, 3),
            "p50_us": round(percentile(times, 50) * 1e6, 1), "p99_us": round(percentile(times, 99) * 1e6, 1)}


async def run(report: Report, levels: list[int], checks: int, list_checks: int) -> None:
    results = {n: await measure(n, checks, list_checks) for n in levels}
    small, large = min(levels), max(levels)
    for n in levels:
        for kind, figures in results[n].items():
            target, met = "", None
            if kind == "binderapi":
                target = "0 API requests per check, same cost at 10 and 10,000 servers"
                ratio = results[n]["binderapi"]["p50_us"] / max(results[small]["binderapi"]["p50_us"], 0.1)
                met = figures["requests_per_check"] == 0 and (n == small or ratio < 3)
            report.add(Row(WORKLOAD, f"{kind}, {n} servers", figures, target, met))
    ratio = results[large]["full LIST"]["p50_us"] / max(results[large]["binderapi"]["p50_us"], 0.1)
    report.add(Row(WORKLOAD, f"full LIST / binderapi at {large} servers", {"times_faster": round(ratio)}))
