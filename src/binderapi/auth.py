"""Auth mode: who is asking, according to JupyterHub.

A request carries a JupyterHub token (``Authorization: Bearer <t>`` or ``token <t>``, or a ``token``
query parameter), or the login cookie a browser got from binderapi's OAuth flow with the hub
(:class:`HubOAuth`, what JupyterHub's ``HubOAuth`` does for a service, async and without importing
JupyterHub). Either way binderapi asks the hub whose token it is (``GET <hub api>/user``) and caches
the answer briefly, so a stream of requests costs one hub call per token per minute.

As JupyterHub's own ``HubAuth`` (``access_scopes``), a token is only accepted when the hub says it
carries ``access:services!service=<binderapi's service name>`` (or ``access:services``): a token a
user made for something else (e.g. ``read:users:name`` only) does not act for them here. A *service*
token (``kind: service``, e.g. tljh-repo2docker's) is accepted too, as BinderHub's
``HubOAuthenticated`` does, but it may only build: there is no user to launch a server for.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from starlette.requests import Request

from . import signing
from .errors import BinderError, ForbiddenError
from .hub import HubAPI, HubError, HubResponse

log = logging.getLogger(__name__)

CACHE_SECONDS = 60.0
CACHE_SIZE = 4096
#: seconds a browser has to come back from the hub's login page (JupyterHub's oauth_state_max_age)
STATE_MAX_AGE = 600
# Both cookies are JWTs signed with the same key; the audience keeps one from passing for the other.
STATE_AUDIENCE = "binderapi-oauth-state"
SESSION_AUDIENCE = "binderapi-session"


def token_from_request(authorization: str | None, query_token: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() in ("bearer", "token") and value.strip():
            return value.strip()
    return query_token or None


def cookie_key(cookie_secret: str, build_token_secret: str | None) -> bytes:
    """The key signing login cookies: ``cookie_secret`` (hex or text), else one derived from the
    build token secret (never that secret itself), else random for this process."""
    if cookie_secret.strip():
        return signing.key_from_text(cookie_secret)
    if build_token_secret:
        return hmac.new(build_token_secret.strip().encode(), b"binderapi login cookies", hashlib.sha256).digest()
    log.warning("Generating a random login cookie key: browser logins will not survive a restart or work "
                "across replicas; set HubOAuth.cookie_secret (or BinderHub.build_token_secret)")
    return secrets.token_bytes(32)


def safe_next(next_url: str, host: str, default: str) -> str:
    """The path to send a browser to after login: a path on this site, never another host (an open
    redirect would let a link through our login land anywhere). An absolute URL naming this very
    host is reduced to its path. Raises :class:`ValueError` for anything else."""
    if not next_url:
        return default
    if "\\" in next_url or any(ord(c) < 0x20 or c == "\x7f" for c in next_url):
        raise ValueError("next must be a plain path")  # browsers read '/\evil' as '//evil'
    parts = urlsplit(next_url)
    if parts.scheme or parts.netloc:
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            raise ValueError("next must be a path on this site")
        parts = parts._replace(scheme="", netloc="")
    if not parts.path.startswith("/") or parts.path.startswith("//"):
        raise ValueError("next must be a path starting with a single '/'")
    return urlunsplit(parts)


def same_origin(request: Request) -> bool:
    """True when the browser says the request comes from this very origin. The login cookie
    (SameSite=Lax) is also sent by pages on the same site, e.g. the hub on another port of the
    same host; those must not start servers in the user's name. A request saying neither
    (no ``Sec-Fetch-Site``, no ``Origin``) is refused too: every current browser sends
    ``Sec-Fetch-Site``, so only an old browser or a forged request lacks both, and nothing else
    would tell a cross-site one apart."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin and origin != "null":
        return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()
    return bool(fetch_site) and origin != "null"


def has_scope(scopes: Any, required: set[str]) -> bool:
    """True when ``scopes`` (expanded, as the hub's ``GET /user`` lists them) holds one of
    ``required``, or the same scope without its filter (``access:services`` covers
    ``access:services!service=binder``), as JupyterHub's ``check_scopes`` reads them."""
    if not isinstance(scopes, list):
        return False
    held = {scope for scope in scopes if isinstance(scope, str)}
    return any(scope in held or scope.partition("!")[0] in held for scope in required)


def default_access_scopes(oauth_client_id: str) -> set[str]:
    """``access:services!service=<name>``, the name read from the service's OAuth client id
    (``service-<name>``, JupyterHub's rule), as JupyterHub's HubAuth derives it from
    ``JUPYTERHUB_SERVICE_NAME``."""
    name = oauth_client_id.removeprefix("service-") or "binder"
    return {f"access:services!service={name}"}


def operator_token_matches(authorization: str | None, operator_tokens: list[str]) -> bool:
    """True when ``Authorization: Bearer <t>`` carries one of the operator tokens. Every token is
    compared, in constant time each, so the answer's timing tells nothing about which came close."""
    token = token_from_request(authorization, None)
    if token is None or not operator_tokens:
        return False
    given = token.encode()
    matched = False
    for secret in operator_tokens:
        matched |= bool(secret) and hmac.compare_digest(given, secret.encode())
    return matched


@dataclass(frozen=True)
class HubUser:
    """Whose token a request carries: a hub user (``kind="user"``), or a hub service
    (``kind="service"``), which may build (``build_only``) but has no servers to launch.
    ``admin``: the hub says this user is an admin, which gives operator rights on ``/api/v1``."""

    name: str
    kind: str = "user"
    admin: bool = False


@dataclass
class LoginState:
    """What the state cookie binds: the random ``state`` sent to the hub, where to go afterwards,
    and the redirect URI the code was issued for (the token request must repeat it)."""

    state: str
    next_url: str
    redirect_uri: str


class HubOAuth:
    """binderapi as an OAuth client of JupyterHub: the authorize redirect, the code exchange, and
    the signed cookies holding the login state and, afterwards, the user's hub token."""

    def __init__(self, *, hub: HubAPI, client_id: str, client_secret: str, authorize_url: str,
                 redirect_uri: str, base_url: str, cookie_name: str, key: bytes) -> None:
        self.hub = hub  # the code is exchanged at <hub.api_url>oauth2/token
        self.client_id = client_id
        self.client_secret = client_secret
        self.authorize_url = authorize_url
        self.redirect_uri = redirect_uri
        self.base_url = base_url
        self.cookie_name = cookie_name
        self.state_cookie_name = cookie_name + "-oauth-state"
        self.key = key
        self.login_path = base_url + "oauth_login"
        self.callback_path = base_url + "oauth_callback"
        if redirect_uri and urlsplit(redirect_uri).path != self.callback_path:
            log.warning("HubOAuth.oauth_redirect_uri (%s) does not end in %s, where binderapi serves the "
                        "OAuth callback: logins will not complete", redirect_uri, self.callback_path)

    @classmethod
    def from_settings(cls, settings: Any, hub: HubAPI) -> HubOAuth:
        binderhub, oauth = settings.BinderHub, settings.HubOAuth
        parts = urlsplit(binderhub.hub_url)
        hub_host = (oauth.hub_host or (f"{parts.scheme}://{parts.netloc}" if parts.netloc else "")).rstrip("/")
        hub_prefix = oauth.hub_prefix or ((parts.path or "/").rstrip("/") + "/hub/")
        key = cookie_key(oauth.cookie_secret, binderhub.build_token_secret)
        return cls(
            hub=hub.at(oauth.api_url) if oauth.api_url else hub,
            client_id=oauth.oauth_client_id, client_secret=oauth.api_token or binderhub.hub_api_token,
            authorize_url=hub_host and hub_host + "/" + hub_prefix.strip("/") + "/api/oauth2/authorize",
            redirect_uri=oauth.oauth_redirect_uri, base_url=binderhub.base_url, cookie_name=oauth.cookie_name,
            key=key,
        )

    # -- the login redirect and its state ---------------------------------------------------------

    def redirect_uri_for(self, request: Request) -> str:
        """The configured callback URL, else the callback path on the host the browser used."""
        return self.redirect_uri or f"{request.url.scheme}://{request.headers.get('host', '')}{self.callback_path}"

    def start_login(self, next_url: str, redirect_uri: str) -> tuple[str, str]:
        """The hub URL to send the browser to, and the state cookie binding that login to it."""
        state = secrets.token_urlsafe(24)
        cookie = signing.sign({"aud": STATE_AUDIENCE, "state": state, "next": next_url, "redirect_uri": redirect_uri,
                              "exp": int(time.time()) + STATE_MAX_AGE}, self.key)
        query = urlencode({"client_id": self.client_id, "redirect_uri": redirect_uri,
                           "response_type": "code", "state": state})
        return f"{self.authorize_url}?{query}", cookie

    def check_state(self, state: str, cookie: str | None) -> LoginState:
        """The login this callback finishes; :class:`BinderError` when the state does not match the
        browser's state cookie (a forged or replayed callback, or a login older than 10 minutes)."""
        if not cookie:
            raise BinderError(f"Login state missing or expired: start again at {self.login_path}", status_code=400)
        try:
            claims = signing.verify(cookie, self.key, STATE_AUDIENCE)
        except signing.InvalidToken:
            raise BinderError(f"Login state invalid or expired: start again at {self.login_path}", status_code=400) from None
        if not state.isascii() or not state.isprintable():  # ours is token_urlsafe: never anything else
            raise BinderError(f"Login state malformed: start again at {self.login_path}", status_code=400)
        if not hmac.compare_digest(str(claims.get("state", "")).encode(), state.encode()):
            raise ForbiddenError(f"Login state does not match: start again at {self.login_path}")
        return LoginState(state=state, next_url=claims["next"], redirect_uri=claims["redirect_uri"])

    # -- the code exchange ----------------------------------------------------------------------------

    async def token_for_code(self, code: str, redirect_uri: str) -> tuple[str, int | None]:
        """Exchange a login code for the user's hub token (as JupyterHub's HubOAuth: the service's API
        token is the client secret, so the request carries no token of its own; a user is waiting,
        so it is not repeated). Returns the token and its lifetime in seconds, when the hub says."""
        form = {"client_id": self.client_id, "client_secret": self.client_secret,
                "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        try:
            response = await self.hub.request("POST", "oauth2/token", form=form, token="", retry=False)
        except HubError as e:
            raise BinderError(f"Could not finish the login: {e}", status_code=503) from None
        if response.status in (400, 401, 403):
            raise ForbiddenError(f"JupyterHub refused the login ({_oauth_error(response)}): start again at {self.login_path}")
        if response.status != 200:
            raise BinderError(f"Could not finish the login: the hub answered {response.status}", status_code=503)
        try:
            reply = response.data
            token = reply["access_token"]
            expires_in = reply.get("expires_in")
        except (KeyError, TypeError, AttributeError):
            raise BinderError("Could not finish the login: the hub's token answer has no access_token", status_code=502) from None
        return token, int(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else None

    # -- the session cookie ---------------------------------------------------------------------------

    def session_cookie(self, token: str, expires_in: int | None) -> str:
        claims: dict[str, Any] = {"aud": SESSION_AUDIENCE, "token": token}
        if expires_in:
            claims["exp"] = int(time.time()) + expires_in
        return signing.sign(claims, self.key)

    def token_from_session(self, cookie: str) -> str:
        try:
            claims = signing.verify(cookie, self.key, SESSION_AUDIENCE)
        except signing.InvalidToken:
            raise ForbiddenError(f"Your login cookie is invalid or expired: log in again at {self.login_path}") from None
        token = claims.get("token")
        if not isinstance(token, str) or not token:
            raise ForbiddenError(f"Your login cookie is invalid: log in again at {self.login_path}")
        return token


def _oauth_error(response: HubResponse) -> str:
    """The hub's OAuth error (``invalid_grant: ...``), or its status code."""
    body = response.data
    if not isinstance(body, dict):
        return f"HTTP {response.status}"
    error = str(body.get("error") or response.status)
    description = body.get("error_description")
    return f"{error}: {description}" if description else error


class InvalidHubToken(ForbiddenError):
    """The hub does not know the token (made up, expired, revoked)."""


class HubAuth:
    def __init__(self, hub: HubAPI, oauth: HubOAuth | None = None, access_scopes: set[str] | None = None) -> None:
        self.hub = hub
        self.oauth = oauth
        self.access_scopes = access_scopes or default_access_scopes("service-binder")
        self._cache: OrderedDict[str, tuple[HubUser, float]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Any, hub: HubAPI) -> HubAuth:
        """With auth mode off there is no login (and no cookie key to warn about)."""
        oauth = HubOAuth.from_settings(settings, hub) if settings.BinderHub.auth_enabled else None
        scopes = set(settings.HubOAuth.access_scopes) or default_access_scopes(settings.HubOAuth.oauth_client_id)
        return cls(hub, oauth=oauth, access_scopes=scopes)

    async def user_for_request(self, request: Request) -> HubUser:
        """The hub user behind a request's token, or else its login cookie; :class:`ForbiddenError`
        naming the login URL when there is neither or they are not valid."""
        token = token_from_request(request.headers.get("authorization"), request.query_params.get("token"))
        if token is not None:
            return await self.user_for_token(token)
        cookie = request.cookies.get(self.oauth.cookie_name) if self.oauth else None
        login = self.oauth.login_path if self.oauth else "JupyterHub"
        if not cookie:
            raise ForbiddenError(f"Authentication required: log in at {login} (browsers), or send a JupyterHub "
                                 "API token as 'Authorization: Bearer <token>'")
        if not same_origin(request):
            raise ForbiddenError("The login cookie is only accepted from pages of this site (a browser's "
                                 "Sec-Fetch-Site or Origin header must say so); send a JupyterHub API token "
                                 "as 'Authorization: Bearer <token>' instead")
        token = self.oauth.token_from_session(cookie)  # type: ignore[union-attr]
        try:
            return await self.user_for_token(token)
        except InvalidHubToken:
            raise ForbiddenError(f"Your JupyterHub login has expired or was revoked: log in again at {login}") from None

    async def user_for_token(self, token: str) -> HubUser:
        """The hub user or service owning ``token``; :class:`ForbiddenError` if the hub does not
        know it, or it lacks the scope granting access to binderapi."""
        if not token.isascii() or not token.isprintable():  # no hub token is; nor can it be sent in a header
            raise InvalidHubToken("Invalid JupyterHub token: log in to JupyterHub and use a current API token")
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(key)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        try:  # with the token in question, once: a request is waiting
            response = await self.hub.request("GET", "user", token=token, retry=False)
        except HubError as e:
            raise BinderError(f"Could not check your JupyterHub token: {e}", status_code=503) from None
        if response.status in (401, 403):
            raise InvalidHubToken("Invalid JupyterHub token: log in to JupyterHub and use a current API token")
        if response.status != 200:
            raise BinderError(f"Could not check your JupyterHub token: the hub answered {response.status}", status_code=503)
        try:
            model = response.data
            user = HubUser(name=model["name"], kind=model.get("kind", "user"), admin=model.get("admin") is True)
        except (KeyError, TypeError, AttributeError):
            raise BinderError("Could not check your JupyterHub token: the hub's answer names no user", status_code=503) from None
        if not isinstance(user.name, str) or user.kind not in ("user", "service"):
            raise ForbiddenError(f"This JupyterHub token belongs to neither a user nor a service ({user.kind!r})")
        if not has_scope(model.get("scopes"), self.access_scopes):
            needed = " or ".join(sorted(self.access_scopes))
            raise ForbiddenError(f"This JupyterHub token does not grant access to Binder: it needs the scope {needed} "
                                 "(create a token with it, or ask the hub's admin for a role that grants it)")
        self._cache[key] = (user, time.monotonic() + CACHE_SECONDS)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return user


async def is_operator(request: Request, operator_tokens: list[str], hub_auth: HubAuth | None) -> bool:
    """Operator rights on ``/api/v1`` (cancelling builds, forced rebuilds): one of
    ``BinderHub.operator_tokens`` as a bearer token, or, in auth mode (``hub_auth`` given), a hub
    user the hub calls an admin. Raises :class:`ForbiddenError` in auth mode when the request
    carries no valid login at all."""
    if operator_token_matches(request.headers.get("authorization"), operator_tokens):
        return True
    if hub_auth is None:
        return False
    user = await hub_auth.user_for_request(request)
    return user.kind == "user" and user.admin
