"""The one JupyterHub REST client: where the hub's API is, how it is asked, and what a failure says.

The launcher (users and servers), the warm pool (activity marks, listing users) and auth mode
(whose token a request carries, the OAuth code exchange) all ask the hub through :class:`HubAPI`,
so the API URL, the timeouts, the retry rule and the wording of "the hub is down" exist once.

Requests carry the ``binder`` service token unless the caller passes another one (auth mode asks
``GET /user`` with the user's own token). They are repeated only when the hub was not reached:
connection failures and gateway errors for every request, any 5xx for reads and deletes (which are
safe to repeat); answers from the hub are never repeated (BinderHub issue #819). The waits are
the one retry policy's (:mod:`binderapi.retry`: from ``Launcher.api_retry_delay``, jittered,
capped). A request that must not wait for retries (a user waiting for auth) asks with ``retry=False``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from .retry import retrying

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)

USERS_PAGE = 200  # JupyterHub's largest page of users

HEALTH_TIMEOUT = 3.0  # BinderHub's timeout for the hub health check


# -- URL and time rules ----------------------------------------------------------------------------


def hub_api_url(settings: Settings) -> str:
    """``Launcher.hub_api_url`` (env ``JUPYTERHUB_API_URL``), else ``hub_url_local`` + ``hub/api/``;
    always with a trailing slash."""
    url = settings.Launcher.hub_api_url or settings.BinderHub.hub_url_local + "hub/api/"
    return url if url.endswith("/") else url + "/"


def escape(name: str) -> str:
    """A user or server name as a URL path segment (BinderHub's quoting)."""
    return quote(name, safe="@~")


def user_path(username: str) -> str:
    return f"users/{escape(username)}"


def server_path(username: str, server_name: str) -> str:
    """A user's default server (``server_name`` empty) or one of its named servers."""
    if server_name:
        return f"users/{escape(username)}/servers/{escape(server_name)}"
    return f"users/{escape(username)}/server"


def parse_hub_time(value: Any) -> float | None:
    """A JupyterHub timestamp (ISO 8601, ``Z``) as epoch seconds."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo else None


def format_hub_time(when: datetime) -> str:
    """A time as JupyterHub writes them (UTC, microseconds, ``Z``)."""
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _header_time(value: str | None) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp() if value else None
    except (TypeError, ValueError):
        return None


def describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


# -- answers and failures --------------------------------------------------------------------------


class HubError(Exception):
    """JupyterHub could not be reached (after the request's own retries). ``sent``: the request
    may have reached the hub (not every try failed to connect)."""

    def __init__(self, message: str, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass
class HubResponse:
    status: int
    data: Any
    text: str
    retried: bool  # the answer came to a repeated request
    date: float | None = None  # the hub's clock (its Date header), epoch seconds

    @property
    def message(self) -> str:
        """The hub's own explanation (its JSON ``message``), else the body or the status."""
        if isinstance(self.data, dict) and isinstance(self.data.get("message"), str) and self.data["message"]:
            return self.data["message"]
        text = self.text.strip()
        return text[:500] if text else f"HTTP {self.status}"


def _hub_response(response: httpx.Response, retried: bool) -> HubResponse:
    try:
        data = response.json() if response.content else None
    except ValueError:
        data = None
    return HubResponse(response.status_code, data, response.text, retried, _header_time(response.headers.get("date")))


async def read_hub_response(response: httpx.Response) -> HubResponse:
    """The answer of a streamed request (:meth:`HubAPI.stream`) that did not open the stream."""
    await response.aread()
    return _hub_response(response, False)


class _AnswerToRepeat(Exception):
    """An answer that says the hub was not reached (a gateway error), worth another try."""

    def __init__(self, status: int) -> None:
        super().__init__(f"answered {status}")


# -- the client ------------------------------------------------------------------------------------


class HubAPI:
    """Requests to the hub's REST API (see the module docstring for tokens and retries)."""

    SAFE_METHODS = frozenset({"GET", "HEAD", "DELETE"})
    GATEWAY_ERRORS = frozenset({502, 503, 504})

    def __init__(self, http: httpx.AsyncClient, api_url: str, token: str, attempts: int, delay: float,
                 timeout: float) -> None:
        self.http = http
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.token = token
        self.attempts = attempts
        self.delay = delay
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings, http: httpx.AsyncClient) -> HubAPI:
        config = settings.Launcher
        return cls(http, hub_api_url(settings), settings.BinderHub.hub_api_token, config.api_retries,
                   config.api_retry_delay, config.request_timeout)

    @property
    def configured(self) -> bool:
        """Whether there is a hub to ask (``hub_url`` or ``Launcher.hub_api_url`` is set)."""
        return self.api_url.startswith(("http://", "https://"))

    def at(self, api_url: str) -> HubAPI:
        """The same client for an API at another URL (``HubOAuth.api_url``)."""
        return HubAPI(self.http, api_url, self.token, self.attempts, self.delay, self.timeout)

    def unreachable(self, error: BaseException) -> str:
        return f"JupyterHub API at {self.api_url} is unreachable: {describe(error)}"

    def _headers(self, token: str | None) -> dict[str, str]:
        token = self.token if token is None else token
        return {"Authorization": f"token {token}"} if token else {}

    def _transient(self, method: str) -> Callable[[BaseException], bool]:
        """Which failures of a ``method`` request are worth another try (the module docstring)."""

        def transient(error: BaseException) -> bool:
            if isinstance(error, _AnswerToRepeat):
                return True
            return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout) or (
                isinstance(error, httpx.TransportError) and method in self.SAFE_METHODS)

        return transient

    def _repeat(self, method: str, status: int) -> bool:
        return status in self.GATEWAY_ERRORS or (status >= 500 and method in self.SAFE_METHODS)

    async def _with_retries(self, method: str, path: str, send: Callable[[], Awaitable[httpx.Response]],
                            attempts: int) -> tuple[httpx.Response, int]:
        """``send()`` under the one retry policy; the answer and the attempt that got it. An answer
        worth repeating is repeated (closed first) unless it is the last attempt's."""
        tries = 0

        async def attempt() -> tuple[httpx.Response, int]:
            nonlocal tries
            tries += 1
            response = await send()
            if tries < attempts and self._repeat(method, response.status_code):
                await response.aclose()
                raise _AnswerToRepeat(response.status_code)
            return response, tries

        return await retrying(attempt, transient=self._transient(method), attempts=attempts,
                                    delay=self.delay, what=f"{method} {path}", describe=describe, level=logging.INFO)

    async def request(self, method: str, path: str, body: Any = None, *, form: dict[str, str] | None = None,
                      token: str | None = None, retry: bool = True) -> HubResponse:
        """``method`` on ``<api_url><path>`` with a JSON ``body`` (or a ``form``), as the service
        (``token`` None), as the owner of ``token``, or anonymously (``token=""``)."""
        sent = False
        headers = self._headers(token)

        async def send() -> httpx.Response:
            nonlocal sent
            try:
                response = await self.http.request(method, self.api_url + path, json=body, data=form,
                                                   headers=headers, timeout=self.timeout)
            except httpx.TransportError as e:
                sent = sent or not isinstance(e, httpx.ConnectError | httpx.ConnectTimeout)
                raise
            sent = True
            return response

        try:
            response, attempt = await self._with_retries(method, path, send, self.attempts if retry else 1)
        except httpx.TransportError as e:
            raise HubError(self.unreachable(e), sent) from None
        return _hub_response(response, attempt > 1)

    async def user_pages(self, what: str, query: str = "") -> AsyncIterator[HubResponse]:
        """Each page of ``GET users`` (``query``: filters such as ``state=ready&``), the whole list
        however long. A page the hub refuses ends the listing with one warning naming ``what`` was
        being looked for: the caller acts on the pages it got."""
        offset = 0
        while True:
            response = await self.request("GET", f"users?{query}offset={offset}&limit={USERS_PAGE}")
            if response.status != 200 or not isinstance(response.data, list):
                log.warning("Listing JupyterHub users for %s: HTTP %d %s", what, response.status, response.message)
                return
            yield response
            if len(response.data) < USERS_PAGE:
                return
            offset += len(response.data)

    @contextlib.asynccontextmanager
    async def stream(self, path: str, read_timeout: float) -> AsyncIterator[httpx.Response]:
        """An open streaming GET (the progress event stream), opened with the same retries as a read."""
        timeout = httpx.Timeout(self.timeout, read=read_timeout)

        async def send() -> httpx.Response:
            request = self.http.build_request("GET", self.api_url + path, headers=self._headers(None), timeout=timeout)
            return await self.http.send(request, stream=True)

        try:
            response, _ = await self._with_retries("GET", path, send, self.attempts)
        except httpx.TransportError as e:
            raise HubError(self.unreachable(e)) from None
        try:
            yield response
        finally:
            await response.aclose()

    async def health(self) -> dict[str, Any]:
        """``{"ok": ...}`` from the hub's health endpoint (its API root on hubs without one)."""
        try:
            response = await self.http.get(self.api_url + "health", timeout=HEALTH_TIMEOUT)
            if response.status_code == 404:
                response = await self.http.get(self.api_url, timeout=HEALTH_TIMEOUT)
        except httpx.HTTPError as e:
            return {"ok": False, "error": self.unreachable(e)}
        if response.status_code == 200:
            return {"ok": True}
        return {"ok": False, "error": f"JupyterHub API at {self.api_url} answered HTTP {response.status_code}"}
