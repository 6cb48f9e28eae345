"""Workload 6: where the cached ``build_only`` hot path spends its time. py-spy samples the
binderapi process (``--nonblocking``, so the process is never paused) while 50 clients run the
cached workload; the collapsed stacks are summed into the top functions by own time and by
inclusive time. py-spy is not a project dependency: install it (``pip install py-spy``) into any
environment on PATH or into ``.bench-venv``."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from .cached import ensure_built, load
from .report import Report, Row
from .sse import stream
from .stack import ROOT, Stack

WORKLOAD = "profile: cached build_only hot path"
RESULTS = ROOT / "bench" / "results"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?):?(?P<line>\d*)\)$")


def py_spy() -> str | None:
    return shutil.which("py-spy") or next((str(p) for p in [ROOT / ".bench-venv/bin/py-spy"] if p.exists()), None)


def _name(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "binderapi/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1] if marker != "binderapi/" else "binderapi/" + path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def summarize(collapsed: str, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_name(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    return total, own.most_common(top), inclusive.most_common(top)


async def run(stack: Stack, report: Report, seconds: int, top: int = 15) -> dict[str, list[tuple[str, int]]] | None:
    spy = py_spy()
    if spy is None or stack.api_pid is None:
        report.add(Row(WORKLOAD, "skipped", {"reason": "py-spy not installed" if spy is None else "binderapi PID unknown"}))
        return None
    await ensure_built(stack)
    url = stack.build_url("hello")

    async def build_only() -> tuple[bool, str]:
        result = await stream(url, keep_events=False)
        return result.ok, result.describe()

    with tempfile.TemporaryDirectory(prefix="binderapi-bench-prof-") as tmp:
        out = Path(tmp) / "profile.txt"
        proc = await asyncio.create_subprocess_exec(
            spy, "record", "--pid", str(stack.api_pid), "--duration", str(seconds), "--rate", "250",
            "--nonblocking", "--format", "raw", "--output", str(out),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        await asyncio.sleep(1.0)  # attached before the load starts
        stop = asyncio.Event()

        async def keep_loading() -> int:
            done = 0
            while not stop.is_set():
                done += (await load(build_only, 50, 250))["requests"]
            return done

        loader = asyncio.create_task(keep_loading())
        output, _ = await proc.communicate()
        stop.set()
        requests = await loader
        if proc.returncode != 0 or not out.exists():
            report.add(Row(WORKLOAD, "failed", {"reason": output.decode(errors="replace").strip()[-300:]}))
            return None
        collapsed = await asyncio.to_thread(out.read_text)
    saved = RESULTS / f"profile-cached-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    await asyncio.to_thread(RESULTS.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(saved.write_text, collapsed)
    samples, own, inclusive = summarize(collapsed, top)
    report.add(Row(WORKLOAD, "samples", {"samples": samples, "requests": requests, "seconds": seconds},
                   note=f"collapsed stacks in {saved.relative_to(ROOT)} (flamegraph.pl or speedscope read them)"))
    for title, rows in (("own time", own), ("inclusive time", inclusive)):
        report.add(Row(WORKLOAD, f"top by {title}", {name: f"{100 * n / samples:.1f}%" for name, n in rows}))
    return {"own": own, "inclusive": inclusive}
