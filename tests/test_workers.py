"""``binderapi --workers N``: real processes serving one port (binderapi/workers.py).

The workers run the in-process tier's fake build backend (tests/fixtures/fake_backend.py, chosen by
import path as an operator chooses a backend): what is under test is the processes, the port and
the signals, not a build."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from binderapi.settings import load_settings
from binderapi.workers import WorkersError, check_workers
from fixtures.server import free_port

TESTS = Path(__file__).resolve().parent
ENV = {k: v for k, v in os.environ.items() if not k.startswith("BINDERAPI_")} | {
    "PYTHONPATH": os.pathsep.join([str(TESTS), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]),
}
FAKES = ["--BinderHub.build_class=fixtures.fake_backend:FAKE_KIND",
         "--BinderHub.registry_class=fixtures.fake_backend:FakeImageStore",
         '--BinderHub.repo_providers={"fake": "fixtures.fake_backend:FakeProvider"}',
         "--BinderHub.launch_quota_class=none", "--BinderHub.build_cleaner_class=none",
         "--BinderHub.enable_api_only_mode=true", "--BinderHub.image_prefix=fake.registry.test/workers-"]
#: the build store is off: workers > 1 need PostgreSQL for it (refused with SQLite, tested below)
NO_STORE = ["--BuildStore.enabled=false"]


class Binderapi:
    """``python -m binderapi`` as a separate process, its log in a file (a pipe left unread would
    block the workers once full)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = tmp_path / f"binderapi-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "binderapi", "--ip", "127.0.0.1", "--port", str(self.port), "--log-level", "INFO",
                 *args], stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while "serving on" not in self.log:
            assert self.proc.poll() is None, f"binderapi exited {self.proc.returncode}:\n{self.log}"
            assert time.monotonic() < deadline, f"binderapi did not start:\n{self.log}"
            time.sleep(0.1)

    def workers(self) -> set[int]:
        """PIDs of the worker processes (the parent's children but multiprocessing's resource tracker)."""
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return {int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()}

    def children(self) -> set[int]:
        pid = self.proc.pid
        with contextlib.suppress(FileNotFoundError):
            return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
        return set()

    def live_workers(self) -> dict[int, str]:
        """``binderapi_worker_info`` of one scrape: each live worker's pid and slot (``worker``)."""
        text = httpx.get(self.url + "metrics", timeout=10).text
        return {int(pid): worker for pid, worker in WORKER_INFO.findall(text)}

    def answering_workers(self, want: int, tries: int = 400) -> set[str]:
        """The ``worker`` labels seen on ``/metrics`` (every live worker's, whichever answers),
        until ``want`` distinct ones are there: each worker has started serving."""
        seen: set[str] = set()
        for _ in range(tries):
            seen |= set(self.live_workers().values())
            if len(seen) >= want:
                break
            time.sleep(0.05)
        return seen

    def metrics_dir(self) -> Path:
        """The workers' metric directory, from a worker's environment (the parent made it for them)."""
        worker = min(self.workers())
        environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
        return Path(next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")))

    def stop(self, sig: int = signal.SIGTERM, within: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=within)

    def kill(self) -> None:
        """The test's own clean-up: the parent and whatever it left, by PID (a graceful stop first,
        which removes the workers' metric files)."""
        leftover = self.children()
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


#: a series of binderapi_worker_info with several workers (prometheus_client's "liveall" adds the pid)
WORKER_INFO = re.compile(r'^binderapi_worker_info\{pid="(\d+)",worker="(\d+)"\} 1\.0$', re.MULTILINE)


def gone(pids: set[int], within: float = 10) -> bool:
    """Every PID has exited (and is not a zombie waiting for a parent)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = set()
        for pid in pids:
            with contextlib.suppress(FileNotFoundError):
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(pid)
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def binderapi(tmp_path):
    started: list[Binderapi] = []

    def start(*args: str) -> Binderapi:
        started.append(Binderapi(tmp_path, *args))
        return started[-1]

    yield start
    for server in started:
        server.kill()


def test_two_workers_serve_one_port_replace_a_dead_worker_and_stop_together(binderapi):
    server = binderapi("--workers", "2", *FAKES, *NO_STORE)
    server.wait_ready()
    first = server.workers()
    assert len(first) == 2
    assert server.answering_workers(2) == {"0", "1"}
    tracker = server.children() - first  # multiprocessing's resource tracker

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while len(server.workers() - first) < 1:
        assert time.monotonic() < deadline, f"no new worker:\n{server.log}"
        time.sleep(0.1)
    replaced = server.workers()
    assert victim not in replaced and len(replaced) == 2
    assert f"(pid {victim}) was killed by SIGKILL" in server.log
    assert server.answering_workers(2) == {"0", "1"}  # the new worker took the dead one's place

    assert server.stop(signal.SIGTERM) == 0
    assert gone(replaced | tracker), "a worker outlived the parent"
    log = server.log
    for pid in replaced:
        assert f"Finished server process [{pid}]" in log  # a graceful stop, not a kill
    assert "Traceback" not in log


def test_ctrl_c_stops_gracefully(binderapi):
    """A terminal's Ctrl-C signals the command's whole process group (its session here). Each
    worker must see one stop, not two: a second is uvicorn's "stop now", which skips the
    application's shutdown."""
    server = binderapi("--workers", "2", *FAKES, *NO_STORE)
    server.wait_ready()
    workers = server.workers()
    os.killpg(server.proc.pid, signal.SIGINT)
    assert server.proc.wait(timeout=60) == 0
    assert gone(workers)
    assert "Traceback" not in server.log and "KeyboardInterrupt" not in server.log
    for pid in workers:
        assert f"Finished server process [{pid}]" in server.log
    assert server.log.count("Application shutdown complete") == 2


def test_a_login_started_on_one_worker_finishes_on_any(binderapi):
    """With no secret configured, each process would sign login state with its own random key, and
    a callback reaching the other worker would be refused as forged. The parent draws one secret
    for all its workers. The hub is a closed port: a state that verifies goes on to the code
    exchange and fails there (503), one that does not is refused first (400)."""
    hub = f"http://127.0.0.1:{free_port()}/"
    server = binderapi("--workers", "2", *FAKES, *NO_STORE, "--BinderHub.auth_enabled=true",
                       f"--BinderHub.hub_url={hub}", "--BinderHub.hub_api_token=not-a-real-token")
    server.wait_ready()
    assert server.answering_workers(2) == {"0", "1"}
    login = httpx.get(server.url + "oauth_login")
    assert login.status_code == 302
    state = httpx.URL(login.headers["location"]).params["state"]
    cookies = dict(login.cookies)
    answers = []
    for _ in range(30):  # each on a new connection: the kernel spreads them over both workers
        callback = httpx.get(server.url + "oauth_callback", params={"code": "c", "state": state}, cookies=cookies)
        answers.append((callback.status_code, callback.json()["detail"][:40]))
    assert {status for status, _ in answers} == {503}, answers


def test_workers_stop_when_the_parent_is_killed(binderapi):
    server = binderapi("--workers", "2", *FAKES, *NO_STORE)
    server.wait_ready()
    workers = server.workers()
    directory = server.metrics_dir()
    server.proc.kill()
    server.proc.wait()
    assert gone(workers, within=30), "workers orphaned by a killed parent"
    assert not directory.exists(), "a killed parent's metric files left behind"


def test_sqlite_build_store_refuses_several_workers(binderapi, tmp_path):
    server = binderapi("--workers", "2", *FAKES, f"--BuildStore.state_dir={tmp_path}")
    assert server.proc.wait(timeout=60) != 0
    log = server.log
    assert log.strip().splitlines()[-1] == (
        "binderapi: BinderHub.workers=2 needs a shared build store: set BuildStore.url to "
        "postgresql+asyncpg://user:password@host/db; SQLite serves one process")
    assert "Traceback" not in log and not server.children()


def test_the_warm_pool_refuses_several_workers_without_a_store(binderapi):
    """The pool is shared through the store: without one, each worker's pool would remove the others'."""
    server = binderapi("--BinderHub.workers=2", *FAKES, *NO_STORE, "--WarmPool.enabled=true")  # the setting, not the flag
    assert server.proc.wait(timeout=60) != 0
    last = server.log.strip().splitlines()[-1]
    assert last.startswith("binderapi: BinderHub.workers=2 shares the warm pool through the build store"), server.log
    assert not server.children()


def test_a_start_up_error_in_every_worker_is_one_message_and_a_non_zero_exit(binderapi):
    """A configuration every worker refuses at start (an import path that does not exist) stops the
    service once with the message, instead of replacing workers forever."""
    args = [a for a in FAKES if not a.startswith("--BinderHub.registry_class")]
    server = binderapi("--workers", "2", *args, "--BinderHub.registry_class=fixtures.fake_backend:Nowhere", *NO_STORE)
    code = server.proc.wait(timeout=90)
    log = server.log
    assert code != 0
    last = log.strip().splitlines()[-1]
    assert last.startswith("binderapi: ") and "Nowhere" in last, log
    assert log.count("Nowhere") == 1, log  # said once, not once per worker
    assert "Traceback" not in log and "starting a new one" not in log


def test_port_in_use_is_one_clear_message(binderapi):
    with __import__("socket").socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = binderapi("--workers", "2", "--port", str(port), *FAKES, *NO_STORE)
        assert server.proc.wait(timeout=60) != 0
    last = server.log.strip().splitlines()[-1]
    assert last.startswith(f"binderapi: cannot listen on 127.0.0.1:{port}: "), server.log


def test_the_warm_pool_runs_in_several_workers_on_a_shared_store():
    """With PostgreSQL under the store the pool is one pool for every worker (docs/warm-pool.md)."""
    settings = load_settings(cli={"BinderHub": {"workers": 2}, "WarmPool": {"enabled": True},
                                        "BuildStore": {"url": "postgresql+asyncpg://u:p@127.0.0.1:5/db"}},
                             environ={}, dotenv_path=None)
    check_workers(settings)  # no refusal
    with pytest.raises(WorkersError, match="needs a shared build store"):
        check_workers(load_settings(cli={"BinderHub": {"workers": 2}, "WarmPool": {"enabled": True}}, environ={}, dotenv_path=None))


def sample(text: str, line_start: str) -> float:
    """The value of the one series of ``text`` whose line starts with ``line_start``."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    assert len(values) == 1, (line_start, text)
    return values[0]


VERSIONS = 'http_requests_total{handler="/versions",method="GET",status="200"} '


def test_one_scrape_shows_every_workers_counters_summed(binderapi, tmp_path):
    """Requests spread over both workers (a new connection each) are counted once each in one
    scrape, whichever worker answers it; each worker's own files hold a part of them."""
    server = binderapi("--workers", "2", *FAKES, *NO_STORE)
    server.wait_ready()
    assert server.answering_workers(2) == {"0", "1"}
    workers = server.workers()
    for _ in range(40):
        assert httpx.get(server.url + "versions", timeout=10).status_code == 200
    for _ in range(10):  # scrapes on new connections: each reaches either worker, all see 40
        assert sample(httpx.get(server.url + "metrics", timeout=10).text, VERSIONS) == 40

    # which worker counted what: each worker's files alone, through the same collector
    directory = server.metrics_dir()
    per_worker = {}
    for pid in workers:
        alone = tmp_path / f"worker-{pid}"
        alone.mkdir()
        for file in directory.glob(f"*_{pid}.db"):
            shutil.copy(file, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        per_worker[pid] = sample(generate_latest(registry).decode(), VERSIONS)
    assert sum(per_worker.values()) == 40 and all(per_worker.values()), per_worker  # both counted some


def test_a_dead_workers_live_gauges_leave_the_scrape_and_the_directory_goes_with_the_parent(binderapi):
    server = binderapi("--workers", "2", *FAKES, *NO_STORE)
    server.wait_ready()
    assert server.answering_workers(2) == {"0", "1"}
    first = server.workers()
    assert set(server.live_workers()) == first
    directory = server.metrics_dir()
    assert directory.is_dir() and directory.stat().st_mode & 0o777 == 0o700
    for _ in range(10):
        httpx.get(server.url + "versions", timeout=10)

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:  # the victim's series gone, its replacement's there
        live = server.live_workers()
        if len(live) == 2 and victim not in live:
            break
        assert time.monotonic() < deadline, f"{live}\n{server.log}"
        time.sleep(0.1)
    assert set(live) == server.workers() and sorted(live.values()) == ["0", "1"]
    # the dead worker's counters stay: a total does not go back
    assert sample(httpx.get(server.url + "metrics", timeout=10).text, VERSIONS) == 10

    assert server.stop(signal.SIGTERM) == 0
    assert not directory.exists(), "the workers' metric files outlived the parent"


def holder(server: Binderapi, client_port: int) -> int:
    """The worker holding the connection from ``client_port``: the socket's inode in /proc/net/tcp,
    then the worker with a descriptor on it."""
    local = f"0100007F:{server.port:04X}"
    remote = f"0100007F:{client_port:04X}"
    inode = next(fields[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if (fields := line.split())[1] == local and fields[2] == remote)
    for pid in server.workers():
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == f"socket:[{inode}]" for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return pid
    raise AssertionError(f"no worker holds the connection from port {client_port}")


INPROGRESS = "binderhub_inprogress_builds "


def test_a_dead_workers_builds_in_progress_leave_the_sum(binderapi):
    """binderhub_inprogress_builds is one series, the live workers' sum: a stream open on one worker
    counts 1 whichever worker is scraped, and 0 once that worker is killed."""
    server = binderapi("--workers", "2", *FAKES, *NO_STORE)
    server.wait_ready()
    assert server.answering_workers(2) == {"0", "1"}
    with httpx.Client(timeout=30) as client, client.stream(
            "GET", server.url + "build/fake/hold/main?build_only=true", headers={"Accept": "text/event-stream"}) as stream:
        lines = stream.iter_lines()
        while "building" not in next(lines):  # the build runs, the stream follows it
            pass
        for _ in range(6):  # new connections: either worker answers
            assert sample(httpx.get(server.url + "metrics", timeout=10).text, INPROGRESS) == 1
        client_port = stream.extensions["network_stream"].get_extra_info("client_addr")[1]
        victim = holder(server, client_port)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while victim in server.live_workers() or sample(httpx.get(server.url + "metrics", timeout=10).text, INPROGRESS):
            assert time.monotonic() < deadline, server.log
            time.sleep(0.1)
    assert sample(httpx.get(server.url + "metrics", timeout=10).text, INPROGRESS) == 0
