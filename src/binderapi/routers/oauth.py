"""``GET /oauth_login`` and ``GET /oauth_callback``: browser logins through JupyterHub (auth mode).

An event stream cannot follow a login redirect, so ``/build`` answers a 403 ``failed`` event naming
``/oauth_login``; a frontend sends the browser there (with ``?next=`` to come back). binderapi then
redirects to the hub's authorize page, the hub sends the browser back to ``/oauth_callback`` with a
code, and binderapi trades the code for the user's hub token, kept in a signed HttpOnly cookie that
``/build`` accepts. Errors are JSON answers with a 4xx/5xx status.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel

from ..auth import STATE_MAX_AGE, HubOAuth, safe_next
from ..errors import BinderError
from ..services import ServicesDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["auth"])

NO_STORE = {"cache-control": "no-store"}


class ErrorDetail(BaseModel):
    detail: str


def _error_doc(description: str) -> dict:
    """An OpenAPI ``responses`` entry for one of the JSON errors below."""
    return {"model": ErrorDetail, "description": description}


#: where to go after the login: a path on this site, as ``safe_next`` accepts it (documented, and
#: checked by the route itself, which answers a clear 400 rather than FastAPI's 422)
NextPath = Annotated[str, Query(
    description="Where to send the browser after the login: a path on this site (an absolute URL naming this "
    "host is reduced to its path). Empty: the site's base URL.",
    json_schema_extra={"pattern": r"^(/([^/\\\x00-\x1f\x7f][^\\\x00-\x1f\x7f]*)?)?$"},
)]

AUTH_OFF = _error_doc("Logins are not used: auth mode is off (`BinderHub.auth_enabled` false).")


def _error(message: str, status_code: int) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status_code, headers=NO_STORE)


def _set_cookie(response: Response, request: Request, oauth: HubOAuth, name: str, value: str,
                max_age: int | None) -> None:
    secure = request.url.scheme == "https" or oauth.redirect_uri.startswith("https:")
    response.set_cookie(name, value, max_age=max_age, path=oauth.base_url, httponly=True, samesite="lax",
                        secure=secure)


def _next_path(next_url: str, oauth: HubOAuth) -> str:
    """The signed state's ``next``, checked once more: only ever a path on this site."""
    try:
        return safe_next(next_url, "", oauth.base_url)
    except ValueError:
        return oauth.base_url


@router.get("/oauth_login", operation_id="oauthLogin", summary="Log in through JupyterHub (auth mode): redirects to the hub",
            response_class=Response, responses={
                302: {"description": "To the hub's authorize page"},
                400: _error_doc("`next` is not a path on this site."),
                404: AUTH_OFF,
                503: _error_doc("No JupyterHub to log in at (`BinderHub.hub_url` is not set)."),
            })
async def oauth_login(request: Request, services: ServicesDep, next: NextPath = "") -> Response:
    oauth = services.hub_auth.oauth
    if oauth is None:
        return _error("Logins are only used in auth mode (BinderHub.auth_enabled)", 404)
    if not oauth.authorize_url:
        return _error("There is no JupyterHub to log in at: BinderHub.hub_url is not set", 503)
    try:
        next_url = safe_next(next, request.headers.get("host", ""), oauth.base_url)
    except ValueError as e:
        return _error(f"Refusing to redirect to {next!r} after login: {e}", 400)
    url, state_cookie = oauth.start_login(next_url, oauth.redirect_uri_for(request))
    response = RedirectResponse(url, status_code=302, headers=NO_STORE)
    _set_cookie(response, request, oauth, oauth.state_cookie_name, state_cookie, STATE_MAX_AGE)
    return response


@router.get("/oauth_callback", operation_id="oauthCallback", summary="Where JupyterHub sends the browser back after login (auth mode)",
            response_class=Response, responses={
                302: {"description": "To the page the login started from"},
                400: _error_doc("The code or the state is missing, invalid or expired: start again at `/oauth_login`."),
                403: _error_doc("JupyterHub did not grant the login, or the state does not match this browser's."),
                404: AUTH_OFF,
                502: _error_doc("JupyterHub's token answer had no access token."),
                503: _error_doc("JupyterHub could not be reached or answered with an error."),
            })
async def oauth_callback(
    request: Request, services: ServicesDep,
    code: Annotated[str, Query(description="The hub's authorization code; needed unless `error` is set.")] = "",
    state: Annotated[str, Query(description="The state `/oauth_login` sent, matched against this browser's "
                                            "state cookie; needed unless `error` is set.")] = "",
    error: Annotated[str, Query(description="Set by the hub when it did not grant the login.")] = "",
    error_description: str = "",
) -> Response:
    oauth = services.hub_auth.oauth
    if oauth is None:
        return _error("Logins are only used in auth mode (BinderHub.auth_enabled)", 404)
    if error:
        return _error(f"JupyterHub did not grant the login ({error_description or error}): start again at "
                      f"{oauth.login_path}", 403)
    if not code or not state:
        return _error(f"The login callback needs a code and a state: start again at {oauth.login_path}", 400)
    try:
        login = oauth.check_state(state, request.cookies.get(oauth.state_cookie_name))
        token, expires_in = await oauth.token_for_code(code, login.redirect_uri)
        user = await services.hub_auth.user_for_token(token)
    except BinderError as e:
        response: Response = _error(e.message, e.status_code or 400)
    else:
        log.info("Logged in %s through JupyterHub", user.name)
        response = RedirectResponse(_next_path(login.next_url, oauth), status_code=302, headers=NO_STORE)
        _set_cookie(response, request, oauth, oauth.cookie_name, oauth.session_cookie(token, expires_in), expires_in)
    # the state is single-use, whatever the outcome
    response.delete_cookie(oauth.state_cookie_name, path=oauth.base_url, httponly=True, samesite="lax")
    return response
