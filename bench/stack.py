"""The stack a benchmark runs against: JupyterHub + DockerSpawner, a git daemon serving the bench's
own repositories, and binderapi as its own process (so its RSS and threads can be read from /proc),
started the way ``scripts/demo.py`` does on the infrastructure of ``scripts/infra.sh``. Or an
already running binderapi and hub given by URL; the git daemon is always the bench's own, because
workloads make commits to bust the cache.

With ``replicas`` > 1 it starts that many binderapi processes on one PostgreSQL database (a fresh
one on the server ``scripts/infra.sh`` runs, dropped at exit), each on its own port, as replicas
behind a load balancer are: the workloads split their clients across ``api_urls``.

Everything it starts is stopped by PID at exit; builder containers carry the bench's namespace
label and hub containers its name prefix, and both are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiodocker
import httpx

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
#: the DSN of the PostgreSQL server scripts/infra.sh starts (its role may CREATE DATABASE)
POSTGRES_DSN_FILE = Path(os.environ.get("BINDERAPI_INFRA_DIR") or Path.home() / ".cache/binderapi-infra") / "postgres.dsn"
CHP = Path.home() / ".cache/binderapi-infra/chp/node_modules/.bin/configurable-http-proxy"
HUB_CONFIG = ROOT / "deploy/jupyterhub/jupyterhub_config_docker.py"
REGISTRY = os.environ.get("REGISTRY_ADDR", "127.0.0.1:5000")
BUILDER_IMAGE = "binderapi/repo2docker:2024.7.0"
SINGLEUSER_IMAGE = "binderapi/singleuser:latest"
EXAMPLE = ROOT / "examples" / "hello-binder"
GIT_ENV = {"GIT_AUTHOR_NAME": "binderapi bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "binderapi bench", "GIT_COMMITTER_EMAIL": "bench@localhost",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}

#: a repository whose build only copies a nonce: a new commit is a new image built in seconds
FANOUT_DOCKERFILE = "FROM binderapi/singleuser:latest\nCOPY nonce.txt /tmp/nonce.txt\n"


def slow_dockerfile(seconds: int) -> str:
    """A build that sleeps: the one slow build thousands of idle clients wait on."""
    return f"FROM binderapi/singleuser:latest\nCOPY nonce.txt /tmp/nonce.txt\nRUN sleep {seconds}\n"


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it): 10,000 streams
    need 10,000 sockets on each side. Root here lacks CAP_SYS_RESOURCE, so the hard limit is the cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def run(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env={**os.environ, **(env or {})},
                                                stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace").strip()


class GitRepos:
    """Working-tree repositories served read-only by ``git daemon`` on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0

    async def create(self, name: str, files: dict[str, str], source: Path | None = None) -> str:
        work = self.root / name
        if source is not None:
            await asyncio.to_thread(shutil.copytree, source, work)
        work.mkdir(parents=True, exist_ok=True)
        await run("git", "init", "-q", "-b", "main", cwd=work, env=GIT_ENV)
        return await self.commit(name, files, "Initial commit")

    async def commit(self, name: str, files: dict[str, str], message: str = "Bench round") -> str:
        """Write ``files`` and commit them on ``main``; the new commit's SHA."""
        work = self.root / name
        for path, content in files.items():
            await asyncio.to_thread((work / path).write_text, content)
        await run("git", "add", "-A", cwd=work, env=GIT_ENV)
        await run("git", "commit", "-q", "--allow-empty", "-m", message, cwd=work, env=GIT_ENV)
        return await run("git", "rev-parse", "HEAD", cwd=work, env=GIT_ENV)

    async def new_nonce(self, name: str) -> str:
        return await self.commit(name, {"nonce.txt": secrets.token_hex(16) + "\n"})

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"


@dataclass
class Stack:
    """URLs and handles of the stack under test; ``async with Stack.start(...)`` owns its parts."""

    api_url: str  # binderapi's base URL, trailing slash
    hub_url: str  # JupyterHub's public URL, trailing slash
    hub_admin_token: str  # may create/delete users and start/stop any server
    git: GitRepos
    api_pid: int | None  # binderapi's PID when known (RSS, threads, profiling)
    build_namespace: str  # DockerBuildExecutor.namespace: the label on its builder containers
    keepalive_interval: float
    cache_ttl: float
    store: bool = True  # BuildStore.enabled of the binderapi the stack starts
    hub_container_prefix: str = ""
    owns_builds: bool = False  # builder containers with build_namespace are ours to remove at exit
    processes: list[tuple[str, asyncio.subprocess.Process]] = field(default_factory=list)
    state: Path | None = None
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=60))
    api_urls: list[str] = field(default_factory=list)  # every replica's base URL (the first is api_url)
    api_pids: list[int] = field(default_factory=list)
    database: str = ""  # the PostgreSQL database the replicas share (dropped at exit)
    admin_dsn: Any = None  # the infra server's URL, to drop it

    # -- URLs ------------------------------------------------------------------------------------
    def spec(self, repo: str, ref: str = "main") -> str:
        """``git/<url-escaped repository URL>/<ref>``: the spec of a /build URL and of ``POST /api/v1/builds``."""
        return f"git/{quote(self.git.url(repo), safe='')}/{ref}"

    def build_url(self, repo: str, ref: str = "main", build_only: bool = True, replica: int = 0) -> str:
        base = self.api_urls[replica % len(self.api_urls)] if self.api_urls else self.api_url
        return f"{base}build/{self.spec(repo, ref)}" + ("?build_only=true" if build_only else "")

    async def hub_api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.request(method, f"{self.hub_url}hub/api/{path}",
                                       headers={"Authorization": f"token {self.hub_admin_token}"}, **kwargs)

    async def metrics(self) -> dict[str, float]:
        """binderapi's Prometheus samples, summed per metric name (labels dropped)."""
        text = (await self.http.get(self.api_url + "metrics")).text
        sums: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name = line.split("{", 1)[0].split(" ", 1)[0]
                with contextlib.suppress(ValueError):
                    sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return sums

    def process_status(self, pid: int | None = None) -> dict[str, float]:
        """RSS (MB), threads and open descriptors of the binderapi process (or replica ``pid``), from /proc."""
        pid = pid or self.api_pid
        if pid is None:
            return {}
        fields = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1), "threads": int(fields["Threads"]),
                "fds": len(os.listdir(f"/proc/{pid}/fd"))}

    async def builder_containers(self) -> list[dict[str, Any]]:
        async with aiodocker.Docker() as docker:
            return await docker.containers.list(all=True, filters={"label": [f"binderapi.namespace={self.build_namespace}"]})

    # -- life cycle -------------------------------------------------------------------------------
    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, *, api_url: str | None = None, api_pid: int | None = None, hub_url: str | None = None,
                    hub_admin_token: str | None = None, build_namespace: str | None = None,
                    keepalive_interval: float = 5.0, cache_ttl: float = 60.0, slow_build_seconds: int = 1800,
                    need_hub: bool = True, owns_builds: bool = False, store: bool = True, replicas: int = 1):
        """Start what is not given; stop and remove it all on exit. A binderapi given by URL keeps
        its builder containers unless ``owns_builds`` (the slow build is left running on purpose).
        ``replicas`` > 1: that many binderapi processes sharing a fresh PostgreSQL database."""
        state = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="binderapi-bench-"))
        run_id = secrets.token_hex(3)
        stack = cls(api_url="", hub_url=hub_url or "", hub_admin_token=hub_admin_token or secrets.token_hex(32),
                    git=GitRepos(state / "repos"), api_pid=api_pid,
                    build_namespace=build_namespace or f"bench-{run_id}", keepalive_interval=keepalive_interval,
                    cache_ttl=cache_ttl, hub_container_prefix=f"binderapi-bench-{run_id}", state=state,
                    owns_builds=owns_builds, store=store)
        try:
            await stack._start_git(slow_build_seconds)
            service_token = secrets.token_hex(32)
            if need_hub and not hub_url:
                await stack._start_hub(service_token)
            if api_url:
                stack.api_url = api_url.rstrip("/") + "/"
            elif replicas > 1:
                database_url = await stack._create_database()
                for replica in range(replicas):
                    await stack._start_binderapi(service_token, run_id, store_url=database_url, name=f"binderapi-{replica + 1}")
            else:
                await stack._start_binderapi(service_token, run_id)
            yield stack
        finally:
            await stack.close()

    async def _spawn(self, name: str, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> asyncio.subprocess.Process:
        assert self.state is not None
        log = await asyncio.to_thread(open, self.state / f"{name}.log", "wb")
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=asyncio.subprocess.STDOUT,
                                                        stdin=asyncio.subprocess.DEVNULL, cwd=cwd,
                                                        env={**os.environ, **(env or {})}, start_new_session=True)
        finally:
            log.close()  # the child holds its own descriptor
        self.processes.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        assert self.state is not None
        with contextlib.suppress(OSError):
            return "\n".join((self.state / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def _wait_http(self, name: str, url: str, within: float = 120) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for proc_name, proc in self.processes:
                if proc.returncode is not None:
                    raise RuntimeError(f"{proc_name} exited:\n{self.log_tail(proc_name)}")
            with contextlib.suppress(httpx.TransportError):
                if (await self.http.get(url, timeout=2)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{name} did not answer at {url}:\n{self.log_tail(name)}")

    async def _start_git(self, slow_build_seconds: int) -> None:
        await self.git.create("hello", {}, source=EXAMPLE)
        await self.git.create("fanout", {"Dockerfile": FANOUT_DOCKERFILE, "nonce.txt": "0\n"})
        await self.git.create("slow", {"Dockerfile": slow_dockerfile(slow_build_seconds), "nonce.txt": "0\n"})
        for _ in range(5):
            self.git.port = free_port()
            await self._spawn("git-daemon", "git", "daemon", f"--base-path={self.git.root}", "--export-all",
                              "--reuseaddr", "--listen=127.0.0.1", f"--port={self.git.port}", str(self.git.root))
            for _ in range(50):
                with contextlib.suppress(RuntimeError):
                    await run("git", "ls-remote", self.git.url("hello"))
                    return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"git daemon did not come up:\n{self.log_tail('git-daemon')}")

    async def _start_hub(self, service_token: str) -> None:
        assert self.state is not None
        if not CHP.exists():
            raise RuntimeError(f"configurable-http-proxy not found at {CHP}: run scripts/infra.sh up")
        public = free_port()
        hub_state = self.state / "hub"
        hub_state.mkdir()
        env = {k: "" for k in os.environ if k.startswith(("JUPYTERHUB_", "BINDER_", "BINDERAPI_", "CONFIGPROXY_"))}
        await self._spawn("jupyterhub", str(VENV_BIN / "jupyterhub"), "-f", str(HUB_CONFIG), cwd=hub_state, env={
            **env,
            "BINDER_SERVICE_API_TOKEN": service_token,
            "BINDER_HUB_ADMIN_API_TOKEN": self.hub_admin_token,
            "BINDER_HUB_PUBLIC_URL": f"http://127.0.0.1:{public}",
            "BINDER_HUB_BIND_URL": f"http://127.0.0.1:{free_port()}",
            "BINDER_HUB_PROXY_API_URL": f"http://127.0.0.1:{free_port()}",
            "BINDER_HUB_STATE_DIR": str(hub_state),
            "BINDER_CONTAINER_PREFIX": self.hub_container_prefix,
            "BINDER_ALLOWED_IMAGE_PREFIX": f"{REGISTRY}/binder-",
            "CHP_BIN": str(CHP),
        })
        self.hub_url = f"http://127.0.0.1:{public}/"
        await self._wait_http("jupyterhub", self.hub_url + "hub/api/")

    async def _create_database(self) -> str:
        """A fresh database on the infra PostgreSQL server; its SQLAlchemy URL."""
        import asyncpg
        from sqlalchemy.engine import make_url

        try:
            dsn = make_url((await asyncio.to_thread(POSTGRES_DSN_FILE.read_text)).strip())
        except OSError as e:
            raise RuntimeError(f"replicas need PostgreSQL: no DSN in {POSTGRES_DSN_FILE} ({e.strerror}); "
                               "run scripts/infra.sh up") from None
        self.database = f"binderapi_bench_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(dsn.set(drivername="postgresql").render_as_string(hide_password=False))
        try:
            await admin.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await admin.close()
        self.admin_dsn = dsn
        return dsn.set(database=self.database).render_as_string(hide_password=False)

    async def _drop_database(self) -> None:
        import asyncpg

        dsn = self.admin_dsn.set(drivername="postgresql").render_as_string(hide_password=False)
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await admin.close()

    async def _start_binderapi(self, service_token: str, run_id: str, store_url: str = "",
                               name: str = "binderapi") -> None:
        assert self.state is not None
        port = free_port()
        config = self.state / f"{name}.json"
        config.write_text(json.dumps({
            "BinderHub": {
                "hub_url": self.hub_url, "hub_api_token": service_token, "image_prefix": f"{REGISTRY}/binder-bench-{run_id}-",
                "build_class": "docker", "enable_api_only_mode": True, "log_level": "WARNING",
                "keepalive_interval": self.keepalive_interval,
                "launch_quota_class": "docker" if self.hub_url else "none",
            },
            "DockerBuildExecutor": {"build_image": BUILDER_IMAGE, "namespace": self.build_namespace},
            "DockerRegistry": {"url": f"http://{REGISTRY}"},
            "DockerLaunchQuota": {"container_filter": self.hub_container_prefix},
            "GitRepoProvider": {"cache_ttl": self.cache_ttl},
            # the bench's git daemon listens on 127.0.0.1: the default denied_networks without loopback
            "RepoProvider": {"denied_networks": ["0.0.0.0/8", "::/128", "169.254.0.0/16", "fe80::/10",
                                                 "100.100.100.200/32", "fd00:ec2::254/128"]},
            "RateLimiter": {"limit": 0},
            # the build store (issue 12) on by default: the replicas' shared PostgreSQL, else SQLite in the bench's directory
            "BuildStore": ({"url": store_url} if store_url else {"enabled": self.store, "state_dir": str(self.state / "store")}),
        }, indent=2))
        proc = await self._spawn(name, str(VENV_BIN / "binderapi"), "--config-file", str(config),
                                 "--ip", "127.0.0.1", "--port", str(port))
        url = f"http://127.0.0.1:{port}/"
        if not self.api_urls:
            self.api_pid, self.api_url = proc.pid, url
        self.api_urls.append(url)
        self.api_pids.append(proc.pid)
        self.owns_builds = True
        await self._wait_http(name, url + "versions")

    async def close(self) -> None:
        for name, proc in reversed(self.processes):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    say(f"{name} (pid {proc.pid}) did not stop within 30 s; killing it")
                    proc.kill()
                    await proc.wait()
        self.processes.clear()
        with contextlib.suppress(Exception):
            async with aiodocker.Docker() as docker:
                left = []
                if self.owns_builds:
                    left += await docker.containers.list(all=True, filters={"label": [f"binderapi.namespace={self.build_namespace}"]})
                if self.hub_container_prefix:
                    left += await docker.containers.list(all=True, filters={"name": [f"^/{self.hub_container_prefix}"]})
                for container in left:
                    with contextlib.suppress(Exception):
                        await container.delete(force=True)
        await self.http.aclose()
        if self.database:
            with contextlib.suppress(Exception):
                await self._drop_database()
        if self.state is not None:
            await asyncio.to_thread(shutil.rmtree, self.state, ignore_errors=True)
