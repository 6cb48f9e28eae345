"""``binderapi --workers N``: N processes serving one port, and the parent that keeps them.

The parent binds the port, starts N worker processes (``multiprocessing``'s
*spawn*, as uvicorn does: a clean interpreter, no state copied from the parent), and then only
supervises: it forwards SIGTERM and SIGINT, replaces a worker that dies (with a growing delay,
logged), and gives up with one clear message when workers cannot start. Each worker runs what
``binderapi`` runs alone (:func:`binderapi.cli._serve`: its own Services, the httptools protocol
with the head limits, the graceful stop) on a listening socket the parent opened for it.

**One shared socket or SO_REUSEPORT.** Measured here (2 cores, load 6-8 from other work, 15 wrk
runs of 50 keep-alive connections on 2 workers, connections per worker counted with ``ss``): one
listening socket shared by the workers split them 24/26 at best and worse than 15/35 in 4 runs of
15 (8/42, 9/41, 12/38, 15/35; the worker that wakes first accepts a burst). One socket per worker
with SO_REUSEPORT, where the kernel hashes each connection to a socket, was never worse than 17/33
(median 24/26; commit 048d085 has both ways). So: SO_REUSEPORT, one listening socket per worker slot. The parent closes a dead
worker's socket (the kernel then sends its share to the others, instead of queueing it for the
replacement) and opens a new one for the replacement; a bound socket that does not listen holds
the port meanwhile.

**Why not uvicorn.supervisors.Multiprocess.** It builds ``uvicorn.Server(config)`` in its
``Process`` (not our :class:`~binderapi.httpserver.Server`, whose ``on_stop`` ends the event
streams) and runs only the server (the Services must start first, and close after); it pickles a
``uvicorn.Config`` whose app is built after the Services start and whose protocol class is made
at run time; it replaces a dead worker every half second without a delay that grows, and a worker
that fails to start with anything but uvicorn's own exit code is replaced forever. Overriding all
of that left little of it.

**Metrics.** A scrape reaches one worker; it shows every worker's through prometheus_client's
multiprocess mode: the parent makes a private directory for the workers' metric files before it
starts them, forgets a dead worker's live gauges, and removes the directory when it exits (a
killed parent cannot: its workers, stopped by its death, do) (:mod:`binderapi.metrics`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from .httpserver import STOP_SIGNALS
from .metrics import MULTIPROC_ENV, forget_process, shared_directory
from .retry import wait_after

log = logging.getLogger("binderapi.workers")

#: a worker's exit status when it could not start (uvicorn's STARTUP_FAILURE)
STARTUP_FAILURE = 3
#: the first pause before replacing a worker that died; it grows (retry.py: doubling, jittered, capped)
#: each time the slot's worker dies again soon
RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 30.0
#: a worker that served this long before it died is replaced after the first delay again
STABLE_SECONDS = 30.0
#: a slot whose worker dies before it is ready this many times in a row stops the service
MAX_FAILED_STARTS = 5
#: connections waiting to be accepted, per worker (uvicorn's default)
BACKLOG = 2048

_spawn = multiprocessing.get_context("spawn")


class WorkersError(Exception):
    """The workers cannot serve: the message says why, for the command's one line."""


def check_workers(settings: Any) -> None:
    """Refuse what several workers cannot share. The build store's SQLite lives in one process's
    file and locks; several processes writing it would wait on each other's locks, and none would
    hear of the others' builds. PostgreSQL is shared by design."""
    workers, store = settings.BinderHub.workers, settings.BuildStore
    if workers <= 1:
        return
    if store.enabled and (store.url or "sqlite").split(":", 1)[0].split("+", 1)[0] == "sqlite":
        raise WorkersError(f"BinderHub.workers={workers} needs a shared build store: set BuildStore.url to "
                           "postgresql+asyncpg://user:password@host/db; SQLite serves one process")
    if settings.WarmPool.enabled and not settings.BinderHub.auth_enabled and not store.enabled:
        # the pool is shared through the store (docs/warm-pool.md): without one, each worker's pool
        # would take the others' warm servers for leftovers and remove them
        raise WorkersError(f"BinderHub.workers={workers} shares the warm pool through the build store: enable "
                           "BuildStore with a PostgreSQL url, set WarmPool.enabled: false, or run one worker")


class Port:
    """The address the workers serve: a socket bound to it that holds it for the parent's life
    (bound, not listening: the kernel sends it no connections), and a listening socket for each
    worker, all with SO_REUSEPORT. Port 0 picks a free port once; every socket takes that one."""

    def __init__(self, binderhub: Any) -> None:
        self.host = binderhub.ip or "0.0.0.0"
        self.family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.port = binderhub.port
        self.anchor = self._bound()
        self.port = self.anchor.getsockname()[1]

    def _bound(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise WorkersError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}") from e
        return sock

    def listener(self) -> socket.socket:
        """A new listening socket for a worker (uvicorn's backlog)."""
        sock = self._bound()
        sock.listen(BACKLOG)
        return sock

    @property
    def url(self) -> str:
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self.anchor.close()


def _die_with_parent(parent: int) -> None:
    """Ask Linux for SIGTERM when the parent dies (even by SIGKILL): no worker is left orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the request
        sys.exit(0)


def _worker_main(settings: Any, sock: socket.socket, index: int, parent: int, conn: Connection) -> None:
    """A worker process: serve on ``sock`` as ``binderapi`` alone does; tell the parent when ready
    (``"ready"``) or why it could not start (the message, then exit :data:`STARTUP_FAILURE`)."""
    import asyncio

    from .cli import _serve
    from .logs import settings_secrets, setup_logging
    from .services import StartupError

    # A terminal's Ctrl-C signals its whole process group. The parent forwards each stop, so a
    # worker in that group would get one Ctrl-C twice, in either order, and a second SIGINT is
    # uvicorn's "stop now" (no wait for open connections, no lifespan shutdown): a group of its own.
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the server's handlers are set
    _die_with_parent(parent)
    setup_logging(settings.BinderHub, settings_secrets(settings))
    from .metrics import WORKER_INFO

    WORKER_INFO.labels(worker=str(index)).set(1)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    try:
        with runner:
            runner.run(_serve(settings, sockets=[sock], on_started=lambda: conn.send("ready")))
    except StartupError as e:
        with contextlib.suppress(OSError):
            conn.send(str(e))
        sys.exit(STARTUP_FAILURE)
    finally:
        if os.getppid() != parent and os.environ.get(MULTIPROC_ENV):
            # the parent was killed and could not remove the metric files (shared_directory): its workers do
            shutil.rmtree(os.environ[MULTIPROC_ENV], ignore_errors=True)


@dataclass
class _Slot:
    index: int
    sock: socket.socket | None = None  # its listening socket, closed when its worker dies
    process: Any = None  # multiprocessing's SpawnProcess
    conn: Connection | None = None
    ready: bool = False
    message: str = ""  # why it could not start, as the worker said
    started_at: float = 0.0
    failed_starts: int = 0
    restarts: int = 0  # deaths in a row soon after starting: the next delay grows with them
    restart_at: float | None = None

    def next_delay(self) -> float:
        """The pause before this slot's next worker: retry.py's capped, jittered policy, growing with
        the deaths in a row (a worker that served :data:`STABLE_SECONDS` starts the count again)."""
        self.restarts += 1
        return wait_after(self.restarts, RESTART_DELAY, RESTART_DELAY_MAX)


class Supervisor:
    """The parent: starts a worker per slot, replaces the ones that die, stops them all on a signal."""

    def __init__(self, settings: Any, port: Port, metrics_dir: str | None = None) -> None:
        self.settings = settings
        self.port = port
        self.metrics_dir = metrics_dir  # the workers' metric files (binderapi.metrics.shared_directory)
        self.slots = [_Slot(i, port.listener()) for i in range(settings.BinderHub.workers)]
        self.stopping = False
        self.failure = ""
        self._signals: list[int] = []

    # -- processes ---------------------------------------------------------------------------
    def _start(self, slot: _Slot) -> None:
        if slot.sock is None:
            try:
                slot.sock = self.port.listener()
            except WorkersError as e:
                delay = slot.next_delay()
                log.error("worker %d: %s; trying again in %.1f s", slot.index, e, delay)
                slot.restart_at = time.monotonic() + delay
                return
        parent_conn, child_conn = _spawn.Pipe(duplex=False)
        slot.process = _spawn.Process(target=_worker_main, name=f"binderapi-worker-{slot.index}",
                                      args=(self.settings, slot.sock, slot.index, os.getpid(), child_conn))
        slot.process.start()
        child_conn.close()
        slot.conn, slot.ready, slot.restart_at = parent_conn, False, None
        slot.started_at = time.monotonic()

    def _reap(self, slot: _Slot) -> None:
        """The worker of ``slot`` has exited: say how, and plan its replacement or the stop."""
        process = slot.process
        process.join()
        code = process.exitcode
        if self.metrics_dir is not None:
            forget_process(process.pid, self.metrics_dir)
        if slot.conn is not None:
            self._receive(slot)
            slot.conn.close()
        message, slot.message = slot.message, ""
        slot.process, slot.conn = None, None
        if slot.sock is not None:
            # Kept open, its queue would hold the connections the kernel hashes to it until a new
            # worker listens (seconds, more if it keeps dying); closed, they go to the other workers.
            slot.sock.close()
            slot.sock = None
        how = f"was killed by {signal.Signals(-code).name}" if code and code < 0 else f"exited with status {code}"
        if self.stopping:
            if code:
                log.warning("worker %d (pid %d) %s while stopping", slot.index, process.pid, how)
            return
        if code == STARTUP_FAILURE and message:
            # a start-up error (configuration, an unreachable backend) is the same in every worker
            self.failure = message
            return
        served = time.monotonic() - slot.started_at
        if slot.ready:
            slot.failed_starts = 0
            if served >= STABLE_SECONDS:
                slot.restarts = 0
        else:
            slot.failed_starts += 1
            if slot.failed_starts >= MAX_FAILED_STARTS:
                self.failure = (f"worker {slot.index} {how} before it was ready, {slot.failed_starts} times in a row; "
                                "see the log above")
                return
        delay = slot.next_delay()
        log.error("worker %d (pid %d) %s after %.1f s; starting a new one in %.1f s",
                  slot.index, process.pid, how, served, delay)
        slot.restart_at = time.monotonic() + delay

    def _receive(self, slot: _Slot) -> None:
        """What the worker said: ``"ready"``, or why it could not start."""
        with contextlib.suppress(OSError, EOFError):
            while slot.conn is not None and slot.conn.poll():
                received = slot.conn.recv()
                if received == "ready":
                    slot.ready, slot.failed_starts = True, 0
                else:
                    slot.message = received

    def _signal(self, sig: int) -> None:
        """Forward a stop: the first as SIGTERM (graceful), later ones as they are (a second Ctrl-C
        is SIGINT: the workers stop waiting for open connections, as binderapi alone does)."""
        first = not self.stopping
        self.stopping = True
        forward = signal.SIGTERM if first else sig
        for slot in self.slots:
            if slot.process is not None and slot.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, forward)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until a stop signal (0 once every worker has stopped) or a failure (1)."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, lambda sig, frame: self._signals.append(sig)) for sig in STOP_SIGNALS}
        try:
            for slot in self.slots:
                self._start(slot)
            announced = False
            while True:
                while self._signals:
                    self._signal(self._signals.pop(0))
                if self.failure and not self.stopping:
                    self._signal(signal.SIGTERM)
                live = [slot for slot in self.slots if slot.process is not None]
                if self.stopping and not live:
                    break
                now = time.monotonic()
                if not self.stopping:
                    for slot in self.slots:
                        if slot.process is None and slot.restart_at is not None and slot.restart_at <= now:
                            self._start(slot)
                            live.append(slot)
                if not announced and all(slot.ready for slot in self.slots):
                    announced = True
                    log.info("serving on %s with %d workers (pids %s)", self.port.url, len(self.slots),
                             " ".join(str(slot.process.pid) for slot in self.slots))
                waits = [slot.restart_at - now for slot in self.slots if slot.process is None and slot.restart_at]
                timeout = max(0.0, min(waits)) if waits and not self.stopping else None
                objects: list[Any] = [wake_r]
                for slot in live:
                    objects.append(slot.process.sentinel)
                    if slot.conn is not None and not slot.ready:
                        objects.append(slot.conn)  # until it says "ready" (or why it is not)
                ready = wait(objects, timeout)
                if wake_r in ready:
                    with contextlib.suppress(OSError):
                        wake_r.recv(4096)
                for slot in live:
                    if slot.conn is not None and slot.conn in ready:
                        self._receive(slot)
                    if slot.process.sentinel in ready:
                        self._reap(slot)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
            for slot in self.slots:
                if slot.sock is not None:
                    slot.sock.close()
            self.port.close()
        return 1 if self.failure else 0


def share_secrets(settings: Any) -> None:
    """An unset ``build_token_secret`` is random per process: a build token minted by one worker
    would be refused by the next (and login cookies, keyed from it, too). The parent draws one for
    all its workers; it still does not survive a restart or cross replicas."""
    if not settings.BinderHub.build_token_secret:
        log.warning("Generating a random build token secret for the %d workers: build tokens will not survive a "
                    "restart or work across replicas; set BinderHub.build_token_secret", settings.BinderHub.workers)
        settings.BinderHub.build_token_secret = secrets.token_hex(32)


def serve_workers(settings: Any) -> None:
    """``binderapi --workers N`` (N > 1): bind, supervise, exit 0 after a requested stop, or with
    ``binderapi: <why>`` when the workers cannot serve."""
    try:
        check_workers(settings)
        port = Port(settings.BinderHub)
        supervisor = Supervisor(settings, port)
    except WorkersError as e:
        sys.exit(f"binderapi: {e}")
    share_secrets(settings)
    with shared_directory() as supervisor.metrics_dir:
        failed = supervisor.run()
    if failed:
        sys.exit(f"binderapi: {supervisor.failure}")
