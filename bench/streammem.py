"""Where the memory of idle streams goes: ``python -m bench.streammem [N]`` runs binderapi in this
process under tracemalloc (Docker backend, the bench's git daemon), lets a client subprocess hold N
streams on one slow build, and prints the allocation sites that grew most, per stream. Used for
docs/performance.md's idle-stream analysis; not part of the suite's run."""

from __future__ import annotations

import asyncio
import os
import sys
import tracemalloc

from .stack import BUILDER_IMAGE, REGISTRY, ROOT, Stack, raise_nofile

CLIENT = """
import asyncio, sys
from bench.sse import stream
async def main(url, n):
    held = 0
    def seen(_):
        pass
    tasks = []
    for i in range(0, n, 250):
        tasks += [asyncio.create_task(stream(url, keep_events=False, on_frame=seen)) for _ in range(min(250, n - i))]
        await asyncio.sleep(4)  # tracemalloc slows the server several times over
    print("held", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def main(streams: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.server import make_settings, serve

    raise_nofile()
    tracemalloc.start(1)
    namespace = f"bench-mem-{os.getpid()}"
    settings = make_settings({"DockerBuildExecutor": {"build_image": BUILDER_IMAGE, "namespace": namespace},
                              "DockerRegistry": {"url": f"http://{REGISTRY}"}, "RateLimiter": {"limit": 0}},
                             build_class="docker", enable_api_only_mode=True, launch_quota_class="none",
                             image_prefix=f"{REGISTRY}/binder-bench-mem-", keepalive_interval=5.0)
    async with serve(settings) as service, Stack.start(api_url=service.url, api_pid=os.getpid(), need_hub=False,
                                                       build_namespace=namespace, owns_builds=True) as stack:
        sha = await stack.git.new_nonce("slow")
        url = stack.build_url("slow", ref=sha)
        client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, url, "1",
                                                      stdout=asyncio.subprocess.PIPE, cwd=ROOT)
        assert client.stdout is not None
        await client.stdout.readline()  # the build runs; its log is in memory before the baseline
        await asyncio.sleep(5)
        before = tracemalloc.take_snapshot()
        rss_before = stack.process_status()["rss_mb"]
        many = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, url, str(streams),
                                                    stdout=asyncio.subprocess.PIPE, cwd=ROOT)
        assert many.stdout is not None
        await many.stdout.readline()
        await asyncio.sleep(15)  # every stream joined; a few keepalive rounds
        after = tracemalloc.take_snapshot()
        rss_after = stack.process_status()["rss_mb"]
        for proc in (many, client):
            proc.kill()
            await proc.wait()
    diff = after.compare_to(before, "filename")
    grown = sum(d.size_diff for d in diff)
    print(f"{streams} streams: RSS +{rss_after - rss_before:.0f} MB, traced Python memory +{grown / 2**20:.0f} MB, "
          f"{grown / streams / 1024:.1f} KiB per stream")
    for d in diff[:15]:
        print(f"  {d.size_diff / streams / 1024:6.2f} KiB/stream  {d.traceback[0].filename.split('site-packages/')[-1]}")
    print("by line:")
    for d in after.compare_to(before, "lineno")[:12]:
        frame = d.traceback[0]
        print(f"  {d.size_diff / streams / 1024:6.2f} KiB/stream  {frame.filename.split('site-packages/')[-1]}:{frame.lineno}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
