"""Start a server for a built image on JupyterHub, and report every step as a ``launching`` event.

The flow is BinderHub's (create a temporary user, or check the logged-in user's servers in auth
mode; run ``pre_launch_hook``; start the server with the launch's ``user_options``; follow the hub's
progress stream), rebuilt around two lessons from BinderHub's issues:

* **Failures say why.** When a spawn fails, the hub's answer to the start request is a bare
  ``Internal Server Error``; the spawner's own reason (e.g. DockerSpawner's ``manifest unknown`` for
  a missing image) is in the ``failed`` event of the progress stream, so that is where the final
  message comes from.
* **Retries stay bounded.** API requests are repeated only when the hub was not reached (connection
  failures, gateway errors: :mod:`binderapi.hub`); a launch attempt is repeated only after a failed
  spawn, and not when it failed for the same reason as the attempt before. A failing launch
  therefore makes a handful of hub calls, not ``retries x api_retries`` of them (BinderHub issue
  #819).

``launch_timeout`` bounds the whole launch. Whatever an attempt created (server, temporary user) is
removed when the attempt fails, times out or is abandoned by its client, so nothing is left behind
but servers that are running for their users. Removal does not depend on the hub being up at that
moment, nor on this process living on:

* **A clean-up that fails is tried again** (with the retry policy's backoff, 1 s growing to 60 s) in the background until the hub answers;
  the client gets its ``failed`` event after the first try, not after the hub comes back.
* **A graceful stop finishes the clean-ups** (``Launcher.cleanup_timeout``) before the hub client
  closes: launches still running are ended (their clients get ``failed``) and their users removed.
* **A later start removes what a crash left** (:meth:`Launcher.remove_orphans`). Temporary user
  names carry a mark (the last characters of the random suffix are a checksum of the rest, see
  :func:`temporary_name`), so other users are never taken for ours. A marked user is an orphan when
  no launch of this process owns it, it has no ready server (a ready server is a session in use:
  JupyterHub's idle culler ends those), and the hub created it more than ``launch_timeout`` +
  :data:`ORPHAN_MARGIN` ago by the hub's own clock (its ``Date`` header): by then any launch that
  wanted it, in any replica with the same ``launch_timeout``, has ended. So several replicas may
  sweep the same hub; none removes a user another one is still launching.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import itertools
import json
import logging
import re
import secrets
import string
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlparse

import httpx

from ._importing import import_object
from .errors import BinderError, ConflictError, LaunchError
from .events import LaunchingEvent, line
from .hub import (
    HubAPI,
    HubError,
    describe,
    escape,
    parse_hub_time,
    read_hub_response,
    server_path,
    user_path,
)
from .progress import Report, ignore
from .retry import Backoff
from .settings import Settings

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0  # how long a clean-up waits for a server to stop
MIN_PROGRESS_SILENCE = 30.0  # the hub sends a keepalive every 8 s; silence beyond this means trouble
NAME_SUFFIX_CHARS = string.ascii_lowercase + string.digits
NAME_SUFFIX_LEN = 8
NAME_MARK_LEN = 3  # of the suffix, the checksum that marks a temporary user as binderapi's
NAME_MARK_SALT = b"binderapi-temporary-user:"
CLEANUP_BACKOFF = (1.0, 60.0)  # first and longest pause between tries of a failed clean-up
CLOSING_RETRY_DELAY = 0.5  # pause between tries while the process stops (within cleanup_timeout)
ORPHAN_MARGIN = 10.0  # seconds beyond launch_timeout before a marked user without a server is an orphan
MAX_SERVER_NAME = 30  # JupyterHub 6 refuses longer names for new named servers
_SSH_URL = re.compile(r"^(?:[\w.+-]+@)?[\w.-]+:(?!//)")


# -- the interface the build pipeline uses ------------------------------------------------------


@dataclass
class LaunchRequest:
    """One launch, as the pipeline asks for it. The ``binder_*`` values reach the server as
    ``user_options`` (and ``BINDER_*`` environment variables through the spawner mixin)."""

    image: str  # full image name with tag
    repo_url: str
    ref_url: str  # -> binder_ref_url
    launch_host: str  # -> binder_launch_host
    binder_request: str  # "v2/<prefix>/<spec>"
    binder_persistent_request: str
    client_ip: str  # -> binder_client_ip
    username: str | None = None  # auth mode: the logged-in hub user; None -> a temporary user
    server_name: str | None = None  # auth mode with named servers; None -> named from the repo


@dataclass
class LaunchedServer:
    """A server that is ready, and what the ``ready`` event needs from it."""

    url: str  # public URL of the server (hub_url + user/<name>/[<server>/])
    token: str  # opens the server: <url>?token=<token>
    username: str
    server_name: str
    retries: int = 0  # failed attempts before this one (the launch-time metric's label)

    def ready_fields(self, request: LaunchRequest) -> dict[str, str]:
        """Exactly the fields BinderHub adds to its ``ready`` event."""
        return {
            "url": self.url,
            "token": self.token,
            "image": request.image,
            "repo_url": request.repo_url,
            "binder_ref_url": request.ref_url,
            "binder_launch_host": request.launch_host,
            "binder_request": request.binder_request,
            "binder_persistent_request": request.binder_persistent_request,
            "binder_client_ip": request.client_ip,
        }


def new_token() -> str:
    """A launch token as BinderHub makes it: the 16 bytes of a uuid4, urlsafe base64, 22 chars."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")


def _name_mark(unmarked: str) -> str:
    value = zlib.crc32(NAME_MARK_SALT + unmarked.encode())
    mark = ""
    for _ in range(NAME_MARK_LEN):
        value, digit = divmod(value, len(NAME_SUFFIX_CHARS))
        mark += NAME_SUFFIX_CHARS[digit]
    return mark


def temporary_name(prefix: str) -> str:
    """``<prefix>-<suffix>``: BinderHub's 8 random characters, of which the last three are a
    checksum of the rest of the name, so binderapi can tell its own temporary users from users
    people named (an unrelated name of that shape matches one time in 46,656)."""
    random_part = "".join(secrets.choice(NAME_SUFFIX_CHARS) for _ in range(NAME_SUFFIX_LEN - NAME_MARK_LEN))
    unmarked = f"{prefix}-{random_part}"
    return unmarked + _name_mark(unmarked)


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` was made by :func:`temporary_name`."""
    if len(name) <= NAME_SUFFIX_LEN or name[-NAME_SUFFIX_LEN - 1] != "-":
        return False
    return name[-NAME_MARK_LEN:] == _name_mark(name[:-NAME_MARK_LEN])


# -- one launch attempt ----------------------------------------------------------------------------


class RemovalPending(Exception):
    """A clean-up the hub has not carried out yet (why: the message); tried again."""


class AttemptFailed(Exception):
    """A launch attempt failed. ``retryable``: a spawn that failed, worth a fresh try.
    ``spawn_ended``: the hub itself has already stopped the server it tried to start."""

    def __init__(self, reason: str, *, retryable: bool, spawn_ended: bool = False, final: str | None = None,
                 status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.spawn_ended = spawn_ended
        self.final = final  # the whole final message, when it is not "Failed to launch image ...: reason"
        self.status_code = status_code  # of the failed event; None keeps LaunchError's 500


@dataclass
class Attempt:
    """What one attempt is called and what it has created (for the clean-up)."""

    number: int
    username: str
    server_name: str
    token: str
    temporary: bool  # a temporary user this launch creates (anonymous Binder)
    user_created: bool = False
    server_requested: bool = False

    def normalized(self, reason: str) -> str:
        """The reason with this attempt's own names taken out, to compare with the previous one's."""
        for name in filter(None, (self.server_name, self.username)):
            reason = reason.replace(name, "<name>")
        return reason


@dataclass(frozen=True)
class Removal:
    """What a clean-up removes from the hub: a server, a temporary user, or both."""

    username: str
    server_name: str = ""
    stop_server: bool = True  # stop the server (and remove it, if it is a named server)
    delete_user: bool = False  # a temporary user: delete it too

    def __str__(self) -> str:
        server = f" (server {self.server_name})" if self.server_name else ""
        return f"{'temporary user' if self.delete_user else 'the server of'} {self.username}{server}"


# -- the launcher ----------------------------------------------------------------------------------


class Launcher:
    """Starts servers through JupyterHub's REST API (the ``binder`` service token needs the scopes
    ``admin:users`` and ``servers``)."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient, hub: HubAPI | None = None) -> None:
        self.settings = settings
        self.config = settings.Launcher
        binderhub = settings.BinderHub
        self.auth_enabled = binderhub.auth_enabled
        self.hub_url = binderhub.hub_url or binderhub.hub_url_local
        self.http = http
        self.hub = hub or HubAPI.from_settings(settings, http)
        self.api_url = self.hub.api_url
        self.pre_launch_hook: Callable[..., Any] | None = None
        if self.config.pre_launch_hook:
            try:
                self.pre_launch_hook = import_object(self.config.pre_launch_hook)
            except ImportError as e:
                raise ImportError(f"Launcher.pre_launch_hook: {e}") from None
            if not callable(self.pre_launch_hook):  # found out now, not at the first launch
                raise TypeError(f"Launcher.pre_launch_hook: {self.config.pre_launch_hook!r} is a "
                                f"{type(self.pre_launch_hook).__name__}, not a function")
        self._cleanups: set[asyncio.Task[None]] = set()
        self._attempts: set[asyncio.Task[Any]] = set()  # attempts running now (cancelled at close)
        self._live: set[str] = set()  # users of launches in progress here: never orphans
        self._closing = False
        self._stopping = asyncio.Event()  # set at close: pending retries try again at once
        self.orphans_removed = 0

    # -- naming ------------------------------------------------------------------------------------

    def unique_name_from_repo(self, repo_url: str) -> str:
        """BinderHub's temporary user (or named server) name: the repository path with ``-`` for
        ``/``, lower-cased, without ``.git``, shortened to 15+15 characters beyond 32, then ``-``
        and 8 random characters, e.g. ``binder-examples-octave-3ilc7xl2``."""
        if "://" not in repo_url and _SSH_URL.match(repo_url):
            path = repo_url.split(":", 1)[1]  # git@host:owner/repo.git
        else:
            path = urlparse(repo_url).path
        prefix = path.strip("/").replace("/", "-").lower().removesuffix(".git")
        if len(prefix) > 32:
            prefix = f"{prefix[:15]}-{prefix[-15:]}"
        # an URL without a path would give "-<suffix>"; a name should not start with a dash
        return temporary_name(prefix or "binder")

    def server_name_from_repo(self, repo_url: str) -> str:
        """A named server's name: BinderHub's scheme, fitted to what JupyterHub 6 accepts for new
        named servers (at most 30 characters of ``a-z``, ``0-9`` and single hyphens, starting with
        a letter), e.g. ``binder-exa-quirements-3ilc7xl2``."""
        name = self.unique_name_from_repo(repo_url)
        prefix, suffix = name[: -NAME_SUFFIX_LEN - 1], name[-NAME_SUFFIX_LEN:]
        prefix = re.sub(r"[^a-z0-9]+", "-", prefix).strip("-")
        room = MAX_SERVER_NAME - NAME_SUFFIX_LEN - 1
        if len(prefix) > room:
            half = (room - 1) // 2
            prefix = f"{prefix[:half].strip('-')}-{prefix[-half:].strip('-')}"
        prefix = re.sub(r"-+", "-", prefix).lstrip("-0123456789")
        return f"{prefix or 'binder'}-{suffix}"

    def server_url(self, username: str, server_name: str) -> str:
        """The public URL of a server (``hub_url``, not the internal ``hub_url_local``)."""
        url = f"{self.hub_url}user/{escape(username)}/"
        return url + f"{escape(server_name)}/" if server_name else url

    def _new_attempt(self, request: LaunchRequest, number: int) -> Attempt:
        if request.username is None:
            return Attempt(number, self.unique_name_from_repo(request.repo_url), "", new_token(), temporary=True)
        server_name = ""
        if self.config.allow_named_servers:
            server_name = request.server_name or self.server_name_from_repo(request.repo_url)
        return Attempt(number, request.username, server_name, new_token(), temporary=False)

    # -- health ------------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """``{"ok": ...}`` from the hub's health endpoint (its API root on hubs without one)."""
        return await self.hub.health()

    # -- launch ------------------------------------------------------------------------------------

    async def launch(self, request: LaunchRequest, report: Report[LaunchingEvent] = ignore) -> LaunchedServer:
        """Start a server for ``request`` and return it, reporting each step as a ``launching``
        event; or raise :class:`LaunchError` with the hub's or spawner's reason, or
        :class:`ConflictError`. Attempts are repeated under the one retry policy (``retries``,
        ``retry_delay``: jittered, capped), and not after the same failure twice nor when the
        next attempt would start past ``launch_timeout``."""
        if not self.hub.configured:
            raise LaunchError("No JupyterHub to launch on: set BinderHub.hub_url (or Launcher.hub_api_url)")
        if self._closing:
            raise LaunchError("binderapi is shutting down; try again in a moment")
        await report(LaunchingEvent(message="Launching server...\n"))
        deadline = asyncio.get_running_loop().time() + self.config.launch_timeout

        async def announce(number: int, wait: float) -> None:
            await report(LaunchingEvent(message=f"Launch attempt {number} failed, retrying...\n"))

        backoff = Backoff(transient=lambda e: isinstance(e, AttemptFailed) and e.retryable,
                          attempts=self.config.retries, delay=self.config.retry_delay, deadline=deadline,
                          what=f"Launch of {request.image}", level=logging.DEBUG, before_wait=announce)
        previous_reason: str | None = None
        for number in itertools.count(1):
            if self._closing:
                raise LaunchError("binderapi is shutting down; try again in a moment")
            attempt = self._new_attempt(request, number)
            self._live.add(attempt.username)
            try:
                return await self._run_attempt(request, attempt, deadline, report)
            except AttemptFailed as failure:
                await self._clean_up(attempt, stop_server=not failure.spawn_ended)
                log.warning("Launch attempt %d of %s for %s failed: %s", number, request.image,
                            attempt.username, failure.reason)
                failed = failure
                final = failure.final or f"Failed to launch image {request.image}: {failure.reason}"
                reason = attempt.normalized(failure.reason)
                if reason == previous_reason:
                    raise LaunchError(final, failure.status_code) from None  # the same failure again: it will not go away
                previous_reason = reason
            except BaseException:
                # BinderError (conflict, hook), or the client went away: remove what was created
                await self._clean_up(attempt, stop_server=True)
                raise
            finally:
                self._live.discard(attempt.username)
            try:
                # raises instead when the failure is not retryable, it was the last attempt, or
                # no time is left for another one
                await backoff.failed(failed)
            except AttemptFailed:
                raise LaunchError(final, failed.status_code) from None
        raise AssertionError("unreachable")

    async def _run_attempt(self, request: LaunchRequest, attempt: Attempt, deadline: float,
                           report: Report[LaunchingEvent]) -> LaunchedServer:
        """Run an attempt in its own task (one :meth:`close` can end), relaying its messages, so
        that the deadline can stop it anywhere."""
        loop = asyncio.get_running_loop()

        async def emit(message: str) -> None:
            await report(LaunchingEvent(message=line(message)))

        task = asyncio.create_task(self._attempt(request, attempt, emit))
        self._attempts.add(task)
        task.add_done_callback(self._attempts.discard)
        try:
            await asyncio.wait([task], timeout=max(deadline - loop.time(), 0))
            if not task.done():
                who = f"{attempt.username}" + (f" (server {attempt.server_name})" if attempt.server_name else "")
                raise AttemptFailed(
                    "launch_timeout exceeded", retryable=False,
                    final=f"Image {request.image} for user {who} took too long to launch "
                          f"(launch_timeout: {self.config.launch_timeout:g} s)",
                )
            if task.cancelled() and self._closing:
                raise AttemptFailed("binderapi is shutting down", retryable=False,
                                    final="binderapi is shutting down; try again in a moment")
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])

    async def _attempt(self, request: LaunchRequest, attempt: Attempt,
                       emit: Callable[[str], Awaitable[None]]) -> LaunchedServer:
        try:
            if attempt.temporary:
                await self._create_user(request, attempt)
            else:
                await self._check_user(attempt)
            await self._run_pre_launch_hook(request, attempt)
            await self._start_server(request, attempt, emit)
        except HubError as e:  # unreachable after its retries: a dependency is down (docs/events.md)
            raise AttemptFailed(str(e), retryable=False, status_code=503) from None
        return LaunchedServer(url=self.server_url(attempt.username, attempt.server_name), token=attempt.token,
                              username=attempt.username, server_name=attempt.server_name,
                              retries=attempt.number - 1)

    async def _create_user(self, request: LaunchRequest, attempt: Attempt) -> None:
        attempt.user_created = True  # until the hub says otherwise: a request cut short may have made it
        try:
            response = await self.hub.request("POST", user_path(attempt.username))
        except HubError as e:
            attempt.user_created = e.sent
            raise
        if response.status in (200, 201) or (response.status == 409 and response.retried):
            return  # (a 409 answers a repeated request the hub had carried out)
        attempt.user_created = False  # refused: nothing of ours to remove (a 409 is someone else's user)
        raise AttemptFailed(
            response.message, retryable=response.status >= 500,
            final=f"Failed to create temporary user for {request.image}: {response.message}",
        )

    async def _check_user(self, attempt: Attempt) -> None:
        """Auth mode: the user's own server must not be running, and named servers are limited."""
        username = attempt.username
        response = await self.hub.request("GET", user_path(username))
        if response.status != 200:
            raise AttemptFailed(response.message, retryable=False,
                                final=f"Could not look up user {username} on JupyterHub: {response.message}")
        servers = response.data.get("servers") or {} if isinstance(response.data, dict) else {}
        if not self.config.allow_named_servers:
            if "" in servers:
                raise ConflictError(f"User {username} already has a running server.")
        elif self.config.named_server_limit_per_user > 0:
            limit = self.config.named_server_limit_per_user
            if len([name for name in servers if name]) >= limit:
                raise ConflictError(
                    f"User {username} already has the maximum of {limit} named servers.  "
                    "One must be deleted before a new server can be created"
                )

    async def _run_pre_launch_hook(self, request: LaunchRequest, attempt: Attempt) -> None:
        if self.pre_launch_hook is None:
            return
        try:
            result = self.pre_launch_hook(self, request.image, attempt.username, attempt.server_name, request.repo_url)
            if inspect.isawaitable(result):
                await result
        except BinderError:
            raise
        except Exception as e:
            raise LaunchError(f"Launch aborted by pre_launch_hook: {describe(e)}") from None

    def _user_options(self, request: LaunchRequest, attempt: Attempt) -> dict[str, str]:
        return {
            "image": request.image,
            "repo_url": request.repo_url,
            "token": attempt.token,
            "binder_ref_url": request.ref_url,
            "binder_launch_host": request.launch_host,
            "binder_request": request.binder_request,
            "binder_persistent_request": request.binder_persistent_request,
            "binder_client_ip": request.client_ip,
        }

    async def _start_server(self, request: LaunchRequest, attempt: Attempt,
                            emit: Callable[[str], Awaitable[None]]) -> None:
        path = server_path(attempt.username, attempt.server_name)
        attempt.server_requested = True
        response = await self.hub.request("POST", path, self._user_options(request, attempt))
        if response.status >= 500:
            # The spawn failed; the hub's answer does not say why, its progress stream does.
            await self._follow_progress(request, attempt, emit, fallback=response.message)
            return  # the stream said ready after all
        if response.status == 400 and response.retried and "already running" in response.message:
            pass  # a repeated start the hub had carried out the first time
        elif response.status not in (201, 202):
            raise AttemptFailed(f"JupyterHub refused to start the server: {response.message}",
                                retryable=False, spawn_ended=True)
        await self._follow_progress(request, attempt, emit)

    async def _follow_progress(self, request: LaunchRequest, attempt: Attempt, emit: Callable[[str], Awaitable[None]],
                               fallback: str | None = None) -> None:
        """Relay the progress stream until the hub says ready (return) or failed (raise)."""
        silence = max(self.config.request_timeout, MIN_PROGRESS_SILENCE)
        async with self.hub.stream(f"{server_path(attempt.username, attempt.server_name)}/progress",
                                   silence) as response:
            if response.status_code != 200:
                answer = await read_hub_response(response)
                raise AttemptFailed(fallback or answer.message, retryable=True, spawn_ended=True)
            try:
                async for text in response.aiter_lines():
                    if not text.startswith("data:"):
                        continue  # blank separators and the hub's keepalives
                    try:
                        event = json.loads(text[5:])
                    except ValueError:
                        continue
                    if not isinstance(event, dict):
                        continue
                    message = event.get("message")
                    if isinstance(message, str) and message:
                        await emit(message)
                    if event.get("ready"):
                        return
                    if event.get("failed"):
                        raise AttemptFailed(message or fallback or "Spawn failed", retryable=True, spawn_ended=True)
            except httpx.TransportError as e:
                raise AttemptFailed(f"Lost the progress stream of the server: {describe(e)}", retryable=True) from None
        if fallback is not None:
            raise AttemptFailed(fallback, retryable=True, spawn_ended=True)
        # The stream ended without a verdict: ask the hub where the server stands.
        check = await self.hub.request("GET", user_path(attempt.username))
        server = ((check.data or {}).get("servers") or {}).get(attempt.server_name) if check.status == 200 else None
        if isinstance(server, dict) and server.get("ready"):
            return
        raise AttemptFailed(f"Image {request.image} for user {attempt.username} failed to launch", retryable=True)

    # -- clean-up ----------------------------------------------------------------------------------

    async def remove_temporary_user(self, username: str) -> None:
        """Stop a temporary user's server and delete the user (the warm pool's servers)."""
        await self._remove_soon(Removal(username, delete_user=True))

    def start_removing_temporary_user(self, username: str) -> None:
        """:meth:`remove_temporary_user` without waiting: the removal is the launcher's from now
        on, tried until done, and :meth:`close` finishes it before the hub client closes."""
        self._start_removal(Removal(username, delete_user=True))

    async def _clean_up(self, attempt: Attempt, *, stop_server: bool) -> None:
        """Remove what a failed attempt created."""
        removal = Removal(
            attempt.username, attempt.server_name,
            stop_server=attempt.server_requested and (stop_server or bool(attempt.server_name and not attempt.temporary)),
            delete_user=attempt.temporary and attempt.user_created,
        )
        if removal.stop_server or removal.delete_user:
            await self._remove_soon(removal)

    async def _remove_soon(self, removal: Removal) -> None:
        """Run ``removal`` in a task of its own and wait for its first try. Shielded: a caller going
        away does not stop it half-way; a try that fails is repeated in the background."""
        await asyncio.shield(self._start_removal(removal))

    def _start_removal(self, removal: Removal) -> asyncio.Future[None]:
        """Start ``removal`` in a task of its own (one :meth:`close` waits for); the future is done
        after its first try."""
        first_try: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self._remove_until_done(removal, first_try))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return first_try

    async def _remove_until_done(self, removal: Removal, first_try: asyncio.Future[None]) -> None:
        """Try ``removal`` until the hub has carried it out (or refused it for good), pausing with
        the retry policy's backoff (:data:`CLEANUP_BACKOFF`) while the hub cannot be reached; one
        warning per removal, one line when it is done."""
        delay, longest = CLEANUP_BACKOFF
        backoff = Backoff(transient=lambda e: True, attempts=None, delay=delay, cap=longest,
                          what=f"Removing {removal}", level=logging.DEBUG, sleep=self._pause)
        failures = 0
        try:
            while True:
                try:
                    problem = await self._remove(removal)
                except Exception:
                    log.warning("Could not remove %s", removal, exc_info=True)
                    return
                if problem is None:
                    if failures:
                        log.info("Removed %s after %d failed tries", removal, failures)
                    return
                failures += 1
                if not first_try.done():
                    first_try.set_result(None)
                if self._stopping.is_set() and self.http.is_closed:
                    return
                log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                        "Could not remove %s (%s); trying again until JupyterHub answers", removal, problem)
                if removal.delete_user:
                    removal = replace(removal, stop_server=True)  # a server may be what keeps the user
                await backoff.failed(RemovalPending(problem))
        finally:
            if not first_try.done():
                first_try.set_result(None)

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short when the process starts stopping; while it stops, pending clean-ups try
        again every :data:`CLOSING_RETRY_DELAY` seconds (within ``cleanup_timeout``)."""
        if self._stopping.is_set():
            await asyncio.sleep(CLOSING_RETRY_DELAY)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _remove(self, removal: Removal) -> str | None:
        """One try: None once done (or refused for good, which is logged), else why not yet."""
        try:
            if removal.stop_server:
                problem = await self._stop_server(removal.username, removal.server_name,
                                                  remove=bool(removal.server_name))
                if problem is not None:
                    return problem
            if removal.delete_user:
                return await self._delete_user(removal.username)
        except HubError as e:
            return str(e)
        return None

    async def _stop_server(self, username: str, server_name: str, *, remove: bool) -> str | None:
        response = await self.hub.request("DELETE", server_path(username, server_name),
                                          {"remove": True} if remove else None)
        if response.status == 202:
            return await self._wait_stopped(username, server_name)
        if response.status >= 500:
            return f"stopping the server: HTTP {response.status} {response.message}"
        if response.status not in (204, 404):
            log.warning("Stopping %s's server %r: HTTP %d %s", username, server_name, response.status, response.message)
        return None

    async def _wait_stopped(self, username: str, server_name: str) -> str | None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + STOP_TIMEOUT
        while loop.time() < give_up:
            response = await self.hub.request("GET", user_path(username))
            if response.status >= 500:
                return f"checking the server stopped: HTTP {response.status} {response.message}"
            if response.status != 200 or server_name not in ((response.data or {}).get("servers") or {}):
                return None
            await asyncio.sleep(0.5)
        return f"the server did not stop within {STOP_TIMEOUT:g}s"

    async def _delete_user(self, username: str) -> str | None:
        response = None
        for _ in range(int(STOP_TIMEOUT / 0.5)):
            response = await self.hub.request("DELETE", user_path(username))
            if response.status in (204, 404):
                return None
            if response.status != 400:  # 400: the server is still stopping
                break
            await asyncio.sleep(0.5)
        assert response is not None
        if response.status >= 500 or response.status == 400:
            return f"deleting the user: HTTP {response.status} {response.message}"
        log.warning("Could not delete temporary user %s: HTTP %d %s", username, response.status, response.message)
        return None

    # -- orphans and shutdown --------------------------------------------------------------------

    def _is_orphan(self, user: Any, now: float) -> bool:
        """The rule in the module docstring: marked, not ours now, no ready server, old enough."""
        if not isinstance(user, dict) or not isinstance(user.get("name"), str):
            return False
        name = user["name"]
        if not is_temporary_name(name) or name in self._live or user.get("admin") or user.get("groups"):
            return False
        servers = user.get("servers")
        if not isinstance(servers, dict):
            return False  # the hub did not say: never guess
        if any(not isinstance(server, dict) or server.get("ready") for server in servers.values()):
            return False
        created = parse_hub_time(user.get("created"))
        return created is not None and now - created > self.config.launch_timeout + ORPHAN_MARGIN

    async def remove_orphans(self) -> int:
        """Remove temporary users a crashed process (this one's past life, or another replica) left
        behind; how many were found. Anonymous mode only: in auth mode binderapi makes no users."""
        if self.auth_enabled or not self.hub.configured:
            return 0
        orphans = []
        async for page in self.hub.user_pages("leftover temporary users"):
            now = page.date or time.time()
            orphans += [user["name"] for user in page.data if self._is_orphan(user, now)]
        for name in orphans:
            log.info("Removing temporary user %s, left behind by an earlier launch", name)
            await self._remove_soon(Removal(name, delete_user=True))
        self.orphans_removed += len(orphans)
        return len(orphans)

    async def remove_orphans_forever(self, interval: float) -> None:
        """At start-up, then every ``interval`` seconds (a crash's users become orphans only once
        they are older than ``launch_timeout``)."""
        while not self._closing:
            try:
                await self.remove_orphans()
            except HubError as e:
                log.warning("Could not look for leftover temporary users: %s", e)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """End launches still running (their clients get ``failed``) and finish every clean-up,
        within ``cleanup_timeout``, before the hub client closes. What is still pending then is
        logged; the next start's sweep removes it."""
        self._closing = True
        self._stopping.set()
        for task in list(self._attempts):
            task.cancel()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.config.cleanup_timeout
        # launches just cancelled (by us, or by the server stopping) start their clean-ups as they unwind
        while (self._cleanups or self._live) and loop.time() < give_up:
            waiting = set(self._cleanups) or {asyncio.ensure_future(asyncio.sleep(0.05))}
            await asyncio.wait(waiting, timeout=min(0.5, max(give_up - loop.time(), 0)),
                               return_when=asyncio.FIRST_COMPLETED)
        if self._cleanups or self._live:
            log.warning("Stopping with JupyterHub clean-ups unfinished after %gs (left for the next start): %s",
                        self.config.cleanup_timeout, ", ".join(sorted(self._live)) or f"{len(self._cleanups)} removals")
        for task in list(self._cleanups):
            task.cancel()
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=1.0)
