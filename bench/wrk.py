"""The cached ``build_only`` throughput measured with wrk (a C load generator) when it is installed:
the Python client of :mod:`bench.cached` costs about as much CPU per request as the server, and
both share the machine's 2 cores, so wrk shows more of what the server itself can do. wrk keeps
connections alive (as a reverse proxy in front of binderapi does); a Lua hook counts responses
without a ``ready`` event as errors."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from pathlib import Path

from .cached import BINDERHUB_RPS, WORKLOAD, ensure_built
from .report import Report, Row
from .stack import Stack

LUA = r"""
wrk.headers["Accept"] = "text/event-stream"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"phase": *"ready"') then bad = bad + 1 end
end
function done(summary, latency, requests)
  local failed = 0
  for _, thread in ipairs(threads) do failed = failed + thread:get("bad") end
  io.write(string.format("BENCH requests=%d p50_us=%d p99_us=%d bad=%d\n", summary.requests,
    latency:percentile(50), latency:percentile(99), failed))
end
"""
THREADS = 2


def _figures(output: str, seconds: int) -> dict[str, float | int]:
    summary = dict(re.findall(r"(\w+)=(\d+)", output.split("BENCH", 1)[1])) if "BENCH" in output else {}
    socket_errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    return {"requests": int(summary.get("requests", 0)), "p50_ms": round(int(summary.get("p50_us", 0)) / 1000, 1),
            "p99_ms": round(int(summary.get("p99_us", 0)) / 1000, 1),
            "req_per_s": float(rps.group(1)) if rps else 0.0,
            "errors": socket_errors + int(summary.get("bad", 0)), "seconds": seconds}


async def run(stack: Stack, report: Report, levels: list[int], seconds: int) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        report.add(Row(WORKLOAD + " (wrk)", "skipped", {"reason": "wrk not installed (apt-get install wrk)"}))
        return
    await ensure_built(stack)
    url = stack.build_url("hello")
    with tempfile.TemporaryDirectory(prefix="binderapi-bench-wrk-") as tmp:
        script = Path(tmp) / "sse.lua"
        script.write_text(LUA)
        for clients in levels:
            proc = await asyncio.create_subprocess_exec(
                wrk, f"-t{min(THREADS, clients)}", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s",
                "-s", str(script), url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            output = (await proc.communicate())[0].decode(errors="replace")
            figures = _figures(output, seconds)
            target, met = "", None
            if clients == 50:
                want = 5 * BINDERHUB_RPS[50]
                target, met = f">= {want:.0f} req/s (5x BinderHub's 148), 0 errors", figures["req_per_s"] >= want and figures["errors"] == 0
            report.add(Row(WORKLOAD + " (wrk)", f"{clients} connections", figures, target, met,
                           note="keep-alive connections" + ("" if proc.returncode == 0 else f"; wrk exited {proc.returncode}")))
