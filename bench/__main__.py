"""``python -m bench [--quick] [--only NAME]... [--json out.jsonl]``: see docs/performance.md."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
from pathlib import Path

from . import api, cached, fanout, idle, launch, profile, quota, replicas, workers, wrk
from .config import FULL, QUICK, Sizes
from .report import Report, Row
from .stack import Stack, raise_nofile, say

WORKLOADS = ("cached", "wrk", "workers", "fresh", "launch", "fanout", "idle", "api", "replay", "quota", "profile",
             "fanout-replicas", "idle-replicas")
NEEDS_HUB = {"launch"}
NEEDS_REPLICAS = {"fanout-replicas", "idle-replicas"}  # a stack of their own: two processes on PostgreSQL
NEEDS_STACK = set(WORKLOADS) - {"quota"} - NEEDS_REPLICAS


def machine() -> dict[str, str | int | float]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"nproc": os.cpu_count() or 0, "cpu": cpu, "ram_gb": round(mem_kb / 2**20, 1),
            "load_1_5_15": " ".join(f"{x:.2f}" for x in os.getloadavg()), "python": platform.python_version()}


async def main(args: argparse.Namespace) -> int:
    sizes: Sizes = QUICK if args.quick else FULL
    chosen = args.only or list(WORKLOADS)
    nofile = raise_nofile()
    jsonl = await asyncio.to_thread(open, args.json, "a") if args.json else None
    report = Report(jsonl)
    store = "external binderapi" if args.binderapi_url else "off" if args.no_store else "on"
    report.add(Row("machine", "start", machine() | {"nofile": nofile, "build_store": store}))
    try:
        if set(chosen) & NEEDS_STACK:
            async with Stack.start(api_url=args.binderapi_url, api_pid=args.binderapi_pid, hub_url=args.hub_url,
                                   hub_admin_token=args.hub_token, build_namespace=args.build_namespace,
                                   keepalive_interval=args.keepalive, cache_ttl=args.cache_ttl,
                                   need_hub=bool(set(chosen) & NEEDS_HUB), store=not args.no_store) as stack:
                say(f"stack: binderapi {stack.api_url} (pid {stack.api_pid}), hub {stack.hub_url or '-'}, "
                    f"git {stack.git.url('')}, build store {'on' if stack.store else 'off'}")
                await run_stack_workloads(stack, report, chosen, sizes)
        if set(chosen) & NEEDS_REPLICAS:
            if args.binderapi_url:
                raise RuntimeError("the replica workloads start their own two binderapi processes (no --binderapi-url)")
            async with Stack.start(hub_url=args.hub_url, hub_admin_token=args.hub_token, keepalive_interval=args.keepalive,
                                   cache_ttl=args.cache_ttl, need_hub=False, replicas=2) as stack:
                say(f"stack: binderapi replicas {' '.join(stack.api_urls)} (pids {stack.api_pids}), "
                    f"PostgreSQL database {stack.database}")
                if "fanout-replicas" in chosen:
                    await replicas.fanout(stack, report, sizes.replica_fanout_clients)
                if "idle-replicas" in chosen:
                    await replicas.idle(stack, report, sizes.replica_idle_streams, sizes.idle_hold_seconds)
        if "quota" in chosen:
            await quota.run(report, sizes.quota_levels, sizes.quota_checks, sizes.quota_list_checks)
        report.add(Row("machine", "end", {"load_1_5_15": machine()["load_1_5_15"]}))
    finally:
        print(report.table(), flush=True)
        if jsonl is not None:
            jsonl.close()
    return 1 if any(r.met is False for r in report.rows) else 0


async def run_stack_workloads(stack: Stack, report: Report, chosen: list[str], sizes: Sizes) -> None:
    if "cached" in chosen:
        await cached.run(stack, report, sizes.cached_levels, sizes.cached_requests)
    if "wrk" in chosen:
        await wrk.run(stack, report, sizes.wrk_levels, sizes.wrk_seconds)
    if "workers" in chosen:
        await workers.run(stack, report, sizes.workers_seconds, sizes.workers_rounds)
    if "fresh" in chosen:
        await cached.fresh_refs(stack, report)
    if "launch" in chosen:
        await launch.run(stack, report, sizes.launch_samples)
    if "fanout" in chosen:
        await fanout.run(stack, report, sizes.fanout_levels)
    if "idle" in chosen:
        await idle.run(stack, report, sizes.idle_levels, sizes.idle_hold_seconds)
    if "api" in chosen:
        await api.run_create(stack, report, sizes.api_levels, sizes.api_requests)
    if "replay" in chosen:
        await api.run_replay(stack, report, sizes.replay_levels, sizes.replay_settle_seconds)
    if "profile" in chosen:
        await profile.run(stack, report, sizes.profile_seconds)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a first look in a few minutes")
    parser.add_argument("--only", action="append", choices=WORKLOADS, help="run only this workload (repeatable)")
    parser.add_argument("--json", help="append one JSON object per figure to this file")
    parser.add_argument("--keepalive", type=float, default=5.0, help="keepalive interval of a started binderapi [5]")
    parser.add_argument("--cache-ttl", type=float, default=10.0, help="GitRepoProvider.cache_ttl of a started binderapi [10]")
    parser.add_argument("--no-store", action="store_true",
                        help="start binderapi with BuildStore.enabled off (the api and replay workloads need it on)")
    running = parser.add_argument_group("an already running stack (default: start one)")
    running.add_argument("--binderapi-url", help="binderapi's base URL (must allow build_only)")
    running.add_argument("--binderapi-pid", type=int, help="its PID, for RSS/threads and profiling")
    running.add_argument("--hub-url", help="JupyterHub's public URL")
    running.add_argument("--hub-token", help="a hub API token that may create/delete users and servers")
    running.add_argument("--build-namespace", help="DockerBuildExecutor.namespace of that binderapi [binderapi]")
    args = parser.parse_args(argv)
    if args.no_store and set(args.only or WORKLOADS) & {"api", "replay"}:
        parser.error("the api and replay workloads need the build store: drop --no-store or choose other workloads")
    if args.binderapi_url and not args.build_namespace:
        args.build_namespace = "binderapi"
    if bool(args.hub_url) != bool(args.hub_token):
        parser.error("--hub-url and --hub-token go together")
    return args


def cli() -> None:
    args = parse()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner, contextlib.suppress(KeyboardInterrupt):
        try:
            sys.exit(runner.run(main(args)))
        except RuntimeError as e:
            say(f"error: {e}")
            sys.exit(2)


if __name__ == "__main__":
    cli()
