"""``BinderSpawnerMixin``: the JupyterHub side of a Binder launch.

binderapi starts servers through JupyterHub's REST API and puts everything the server needs into
``user_options`` (``image``, ``token``, ``repo_url``, ``binder_*``). This mixin, placed in front of a
container spawner in ``jupyterhub_config.py``::

    from dockerspawner import DockerSpawner
    from binderapi.spawner import BinderSpawnerMixin

    class BinderSpawner(BinderSpawnerMixin, DockerSpawner):
        pass

    c.JupyterHub.spawner_class = BinderSpawner

turns those options into a running server: it refuses a launch without ``token`` and ``image``
(unless ``auth_enabled``), runs the requested image, makes the launch token open the server, applies
``cors_allow_origin`` and exposes the launch to the server as ``BINDER_*`` environment variables.

It runs inside the hub's process, so it imports only the standard library, traitlets and what
JupyterHub itself ships (tornado is JupyterHub's web framework). ``binderapi/__init__`` is
import-light, so importing this module does not pull in FastAPI or the rest of binderapi.

How the launch token opens the server
-------------------------------------
The ready event hands the client ``url`` and ``token``; the client opens ``<url>?token=<token>``.
Two kinds of single-user command are in use, and both are covered:

* a plain Jupyter server (``jupyter-notebook``, ``jupyter-server``, ``jupyter-lab``; BinderHub's
  own chart runs ``jupyter-notebook``) knows nothing about the hub. It gets the token, address and
  base URL on its command line (``--ServerApp.*``/``--IdentityProvider.token``, duplicated as
  ``--NotebookApp.*`` for classic notebook servers).
* ``jupyterhub-singleuser`` (JupyterHub 2+ with jupyter_server 2) only accepts tokens the hub
  issued; a ``--ServerApp.token`` argument is ignored there. So, with ``register_launch_token``
  on, the mixin also records the launch token as a JupyterHub API token of the user whose only
  permission is to access this one server (``access:servers!server=<user>/<name>``), and sets
  ``JUPYTERHUB_ALLOW_TOKEN_IN_URL=1`` (JupyterHub 5+ ignores ``?token=`` in page URLs otherwise).
  The token is removed when the server stops, and with the user when a temporary user is deleted.

In auth mode none of this happens: users reach their own servers with their hub login.
"""

from __future__ import annotations

import inspect
from typing import Any

from tornado import web
from traitlets import Bool, Unicode
from traitlets.config import Configurable

# user_options keys that become environment variables of the single-user server
# (BINDER_REPO_URL, BINDER_REF_URL, ...), as BinderHub's mixin sets them.
ENV_OPTIONS = {
    "repo_url": "BINDER_REPO_URL",
    "binder_ref_url": "BINDER_REF_URL",
    "binder_launch_host": "BINDER_LAUNCH_HOST",
    "binder_request": "BINDER_REQUEST",
    "binder_persistent_request": "BINDER_PERSISTENT_REQUEST",
    "binder_client_ip": "BINDER_CLIENT_IP",
}

STRING_OPTIONS = ("image", "token", *ENV_OPTIONS)

TOKEN_NOTE = "binder launch token"


class BinderSpawnerMixin(Configurable):
    """Make a JupyterHub container spawner start Binder launches (see the module docstring).

    Put it first in the bases, before the spawner class, so its ``start``, ``get_args``,
    ``get_env`` and ``run_post_stop_hook`` wrap the spawner's own.
    """

    auth_enabled = Bool(
        False,
        config=True,
        help="""Authenticated Binder (binderapi's `BinderHub.auth_enabled`): users launch into
        their own servers, which authenticate them through the hub. Off (the default), every
        launch must carry `token` and `image` in its user_options, and the server is opened with
        the launch token.""",
    )

    cors_allow_origin = Unicode(
        "",
        config=True,
        help="""Origins allowed to make cross-origin requests to single-user servers (the
        server's `allow_origin`). `*` also allows every origin pattern, so that single files can
        be fetched cross-origin. Empty leaves the server's default.""",
    )

    register_launch_token = Bool(
        True,
        config=True,
        help="""Without `auth_enabled`, also register the launch token as a JupyterHub API token
        of the user, allowed only to access the launched server. `jupyterhub-singleuser` accepts
        nothing else; plain Jupyter servers get the token on their command line either way.""",
    )

    # -- user_options ------------------------------------------------------------------------------

    def _binder_options(self) -> dict[str, Any]:
        """The launch's user_options, checked: a launch without token or image is refused
        (unless auth is on), and every Binder option present must be a string."""
        options = self.user_options or {}
        for key in STRING_OPTIONS:
            if key in options and not isinstance(options[key], str):
                raise web.HTTPError(400, f"{key} must be a string")
        if not self.auth_enabled:
            if not options.get("token"):
                raise web.HTTPError(400, "token required")
            if not options.get("image"):
                raise web.HTTPError(400, "image required")
        return options

    # -- start / stop --------------------------------------------------------------------------------

    async def start(self) -> Any:
        options = self._binder_options()
        if options.get("image"):
            self.image = options["image"]
        if not self.auth_enabled and self.register_launch_token:
            self._register_launch_token(options["token"])
        result = super().start()
        if inspect.isawaitable(result):
            result = await result
        return result

    def run_post_stop_hook(self) -> Any:
        # JupyterHub runs this after every stop, including the clean-up of a start that failed
        # before there was anything to stop (``Spawner.stop`` is skipped then).
        self._revoke_launch_token()
        return super().run_post_stop_hook()

    def _server_ref(self) -> str:
        """``user/server`` as JupyterHub's ``server=`` scope filter spells it (default server: ``user/``)."""
        return f"{self.user.name}/{self.name or ''}"

    def _register_launch_token(self, token: str) -> None:
        from jupyterhub import orm

        db = self.user.db
        existing = orm.APIToken.find(db, token)
        if existing is not None:
            if existing.user is not None and existing.user.id == self.user.orm_user.id:
                return  # a restart of the same launch
            raise web.HTTPError(400, "token already in use")
        try:
            # The launch token is 122 random bits (uuid4), as good as a hub-generated token.
            self.user.orm_user.new_api_token(
                token,
                generated=True,
                note=TOKEN_NOTE,
                scopes=[f"access:servers!server={self._server_ref()}"],
            )
        except ValueError as e:  # too short, or colliding with another token
            db.rollback()
            raise web.HTTPError(400, f"unusable launch token: {e}") from None
        db.commit()

    def _revoke_launch_token(self) -> None:
        token = (self.user_options or {}).get("token")
        if self.auth_enabled or not self.register_launch_token or not isinstance(token, str) or not token:
            return
        from jupyterhub import orm

        try:
            db = self.user.db
            found = orm.APIToken.find(db, token)
            if found is not None and found.note == TOKEN_NOTE and found.user is not None \
                    and found.user.id == self.user.orm_user.id:
                db.delete(found)
                db.commit()
        except Exception:  # never let token bookkeeping break a stop
            self.log.exception("Could not revoke the launch token of %s", self._server_ref())

    # -- what the server process gets ----------------------------------------------------------------

    def get_args(self) -> list[str]:
        args = list(super().get_args())
        options = self.user_options or {}
        server: list[str] = []
        if not self.auth_enabled and options.get("token"):
            token = options["token"]
            # A plain Jupyter server does not read JupyterHub's environment, so it needs its
            # address, base URL and token here; jupyterhub-singleuser gets the same values from
            # the environment and ignores the token.
            server += [
                f"--ServerApp.ip={self.ip}",
                f"--ServerApp.port={self.port}",
                f"--ServerApp.base_url={self.server.base_url}" if self.server else "",
                f"--ServerApp.token={token}",
                "--ServerApp.trust_xheaders=True",
            ]
            if self.default_url:
                server.append(f"--ServerApp.default_url={self.default_url}")
            args.append(f"--IdentityProvider.token={token}")
        if self.cors_allow_origin:
            server.append(f"--ServerApp.allow_origin={self.cors_allow_origin}")
            if self.cors_allow_origin == "*":
                server.append("--ServerApp.allow_origin_pat=.*")
        server = [arg for arg in server if arg]
        # classic notebook servers (notebook < 7) read the same settings as NotebookApp.*
        return args + server + [arg.replace("--ServerApp.", "--NotebookApp.", 1) for arg in server]

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        options = self.user_options or {}
        if not self.auth_enabled and self.register_launch_token:
            # jupyterhub-singleuser (JupyterHub 5+) ignores ?token= in page URLs unless told
            # otherwise; opening ``<url>?token=<token>`` is how a Binder launch is entered.
            env["JUPYTERHUB_ALLOW_TOKEN_IN_URL"] = "1"
        for key, var in ENV_OPTIONS.items():
            if isinstance(options.get(key), str):
                env[var] = options[key]
        return env
