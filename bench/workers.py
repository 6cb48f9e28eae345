"""Cached ``build_only`` under wrk with ``--workers 1`` and ``--workers 2`` in the same run, and
their ratio (issue 13: at least 1.7x on this 2-core machine).

Both are binderapi processes started here from the stack's own configuration file (same image
prefix: the image the stack's binderapi built is cached for both), on their own ports, one at a
time so they do not share the cores. The rounds alternate (1, 2, 1, 2, ...) so that a change in
the machine's load during the run weighs on both; each configuration's figure is its median
round. wrk, the load generator, runs on the same 2 cores and takes its share of them: the ratio
is what a second core adds with the client on the machine, a floor of what it adds behind a
proxy on another machine.

With the build store, several workers need PostgreSQL: give its URL in ``BENCH_STORE_URL`` (not
``BINDERAPI_...``: binderapi reads those as settings); without it the store is switched off for
both configurations (the cached classic path writes nothing to the store either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import tempfile
from pathlib import Path

from .cached import ensure_built
from .report import Report, Row
from .stack import VENV_BIN, Stack, free_port, say
from .wrk import LUA, _figures

WORKLOAD = "workers: cached build_only under wrk"
TARGET_RATIO = 1.7
CONNECTIONS = 50


def store_options() -> dict:
    """The build store's settings for both configurations (see the module's docstring)."""
    url = os.environ.get("BENCH_STORE_URL", "")
    return {"BuildStore": {"url": url}} if url else {"BuildStore": {"enabled": False}}


async def _binderapi(stack: Stack, workers: int, config: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    name = f"binderapi-workers-{workers}"
    proc = await stack._spawn(name, str(VENV_BIN / "binderapi"), "--config-file", str(config),
                              "--ip", "127.0.0.1", "--port", str(port), "--workers", str(workers))
    url = f"http://127.0.0.1:{port}/"
    await stack._wait_http(name, url + "versions")
    return proc, url


async def _stop(stack: Stack, proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 60)
    stack.processes[:] = [(n, p) for n, p in stack.processes if p is not proc]


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and its children now running: binderapi's parent and workers."""
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


async def _wrk(wrk: str, script: Path, url: str, seconds: int, server_pid: int | None = None) -> dict:
    """wrk's figures, with the cores binderapi used (``server_cores``) and wrk itself used (``wrk_cores``)."""
    server_before = _cpu_seconds(server_pid) if server_pid else 0.0
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = await asyncio.create_subprocess_exec(
        wrk, "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output = (await proc.communicate())[0].decode(errors="replace")
    server_after = _cpu_seconds(server_pid) if server_pid else 0.0
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, reaped by communicate()
    figures = _figures(output, seconds)
    wrk_seconds = (children_after.ru_utime + children_after.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    figures["server_cores"] = round((server_after - server_before) / seconds, 2)
    figures["wrk_cores"] = round(wrk_seconds / seconds, 2)
    return figures


async def run(stack: Stack, report: Report, seconds: int, rounds: int) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        report.add(Row(WORKLOAD, "skipped", {"reason": "wrk not installed (apt-get install wrk)"}))
        return
    await ensure_built(stack)
    assert stack.state is not None
    config = json.loads((stack.state / "binderapi.json").read_text()) if (stack.state / "binderapi.json").exists() else None
    if config is None:
        report.add(Row(WORKLOAD, "skipped", {"reason": "needs the stack's own binderapi (not --binderapi-url)"}))
        return
    config.update(store_options())
    path = stack.state / "binderapi-workers.json"
    path.write_text(json.dumps(config, indent=2))
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="binderapi-bench-workers-") as tmp:
        script = Path(tmp) / "sse.lua"
        script.write_text(LUA)
        for round_ in range(rounds):
            for workers in (1, 2):
                proc, url = await _binderapi(stack, workers, path)
                try:
                    build = f"{url}build/{stack.build_url('hello').split('/build/', 1)[1]}"
                    await _wrk(wrk, script, build, 2)  # warm-up: the ref resolved, connections made
                    figures = await _wrk(wrk, script, build, seconds, proc.pid)
                finally:
                    await _stop(stack, proc)
                figures["load_1"] = round(os.getloadavg()[0], 2)
                results[workers].append(figures)
                say(f"workers round {round_ + 1}: {workers} worker(s) {figures['req_per_s']:.0f} req/s")
    medians = {n: statistics.median(f["req_per_s"] for f in rs) for n, rs in results.items()}
    errors = {n: sum(f["errors"] for f in rs) for n, rs in results.items()}
    for n in (1, 2):
        rs = results[n]
        cores = statistics.median(f["server_cores"] for f in rs)
        report.add(Row(WORKLOAD, f"{n} worker{'s' if n > 1 else ''}, {CONNECTIONS} connections",
                       {"req_per_s": medians[n], "errors": errors[n],
                        "rounds": " / ".join(f"{f['req_per_s']:.0f}" for f in rs),
                        "p99_ms": statistics.median(f["p99_ms"] for f in rs),
                        "server_cores": cores, "wrk_cores": statistics.median(f["wrk_cores"] for f in rs),
                        "req_per_server_cpu_s": round(medians[n] / cores) if cores else 0,
                        "load_1": " / ".join(f"{f['load_1']:.2f}" for f in rs)},
                       note="median of the rounds; keep-alive connections" + ("; same-run baseline" if n == 1 else ""),
                       extra={"rounds": rs}))
    ratio = round(medians[2] / medians[1], 2) if medians[1] else 0.0
    report.add(Row(WORKLOAD, "2 workers / 1 worker", {"ratio": ratio, "load_1_5_15": " ".join(f"{x:.2f}" for x in os.getloadavg())},
                   f">= {TARGET_RATIO}x, 0 errors", ratio >= TARGET_RATIO and not any(errors.values()),
                   note="wrk on the same 2 cores"))
