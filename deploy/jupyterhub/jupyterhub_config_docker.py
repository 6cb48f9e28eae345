"""JupyterHub for binderapi with DockerSpawner on the host network.

Run:   BINDER_SERVICE_API_TOKEN=$(openssl rand -hex 32) jupyterhub -f jupyterhub_config_docker.py
Needs: jupyterhub >= 5, dockerspawner >= 13, configurable-http-proxy, binderapi importable in the
       hub's Python (only `binderapi.spawner` is used; it needs nothing beyond JupyterHub).

The Docker engine may run without a bridge (`dockerd --bridge=none`), so every single-user container
shares the host's network. Each server therefore gets its own free port and binds 127.0.0.1; the hub
and its proxy reach it there. Everything listens on loopback unless the addresses below say
otherwise. See docs/jupyterhub.md for the whole picture and the binderapi side of the settings.

Environment (defaults in brackets):
  BINDER_SERVICE_API_TOKEN     API token of the `binder` service; binderapi's BinderHub.hub_api_token.
                               Required.
  BINDER_HUB_PUBLIC_URL        where the proxy listens: binderapi's BinderHub.hub_url
                               [http://127.0.0.1:8000]
  BINDER_HUB_BIND_URL          where the hub itself listens [http://127.0.0.1:8081]
  BINDER_HUB_PROXY_API_URL     configurable-http-proxy's REST API [http://127.0.0.1:8001]
  CHP_BIN                      configurable-http-proxy executable
                               [~/.cache/binderapi-infra/chp/node_modules/.bin/configurable-http-proxy,
                               else `configurable-http-proxy` on PATH]
  BINDER_HUB_STATE_DIR         database, cookie secret, proxy PID file [current directory]
  BINDER_HUB_AUTHENTICATOR     authenticator_class: `null` (no logins; anonymous Binder) or e.g.
                               `dummy` for trying out auth mode [null]
  BINDER_AUTH_ENABLED          1: users launch into their own servers (binderapi's
                               BinderHub.auth_enabled must match) [0]
  BINDER_CORS_ALLOW_ORIGIN     allow_origin of single-user servers (BinderHub.cors_allow_origin) []
  BINDER_ALLOWED_IMAGE_PREFIX  only images starting with this may be launched, e.g. your
                               BinderHub.image_prefix; empty allows any image []
  BINDER_SINGLEUSER_CMD        single-user command [jupyterhub-singleuser]
  BINDER_CONTAINER_PREFIX      name prefix of single-user containers [jupyter]
  BINDER_NAMED_SERVER_LIMIT    JupyterHub's named_server_limit_per_user; 0 means none [0]
  BINDER_HUB_ADMIN_API_TOKEN   optional token of a `binder-admin` service that may also mint user
                               tokens (test suites and operators' scripts); unset: no such service
  BINDER_SERVICE_OAUTH_REDIRECT_URI
                               auth mode with browser logins: binderapi's callback URL, e.g.
                               http://127.0.0.1:8585/oauth_callback (binderapi's
                               HubOAuth.oauth_redirect_uri). Set: the `binder` service becomes an
                               OAuth client of the hub; unset: token-only auth mode []
  BINDER_SERVICE_OAUTH_CLIENT_ID
                               its OAuth client id (binderapi's HubOAuth.oauth_client_id)
                               [service-binder]
  BINDER_SERVICE_OAUTH_CONFIRM 1: the hub asks users to approve binderapi's access once; BinderHub's
                               docs skip that page (`oauth_no_confirm`) for their own service [0]
"""

import os
from pathlib import Path

from dockerspawner import DockerSpawner
from jupyterhub.utils import random_port

from binderapi.spawner import BinderSpawnerMixin

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)


def env(name, default=""):
    return os.environ.get(name, "").strip() or default


def env_flag(name):
    return env(name).lower() in {"1", "true", "yes", "on"}


def default_chp():
    bundled = Path.home() / ".cache/binderapi-infra/chp/node_modules/.bin/configurable-http-proxy"
    return str(bundled) if bundled.exists() else "configurable-http-proxy"


STATE_DIR = Path(env("BINDER_HUB_STATE_DIR", os.getcwd()))
SERVICE_TOKEN = env("BINDER_SERVICE_API_TOKEN")
if not SERVICE_TOKEN:
    raise SystemExit("BINDER_SERVICE_API_TOKEN must be set: binderapi talks to the hub with it")

# -- addresses: the proxy is the public face, the hub and the proxy's API stay internal ---------
c.JupyterHub.bind_url = env("BINDER_HUB_PUBLIC_URL", "http://127.0.0.1:8000")
c.JupyterHub.hub_bind_url = env("BINDER_HUB_BIND_URL", "http://127.0.0.1:8081")
c.ConfigurableHTTPProxy.api_url = env("BINDER_HUB_PROXY_API_URL", "http://127.0.0.1:8001")
c.ConfigurableHTTPProxy.command = [env("CHP_BIN", default_chp())]
c.ConfigurableHTTPProxy.pid_file = str(STATE_DIR / "jupyterhub-proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{STATE_DIR / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE_DIR / "jupyterhub_cookie_secret")
# Stopping the hub stops its single-user containers (and the proxy it started).
c.JupyterHub.cleanup_servers = True
# Answer a start request within a second instead of holding it for up to 10 s. A refusal (the
# mixin's "token required", a disallowed image) still comes back as the answer itself; anything
# slower is followed on the progress stream, which replays every step ("Server requested", ...)
# as it happens. (Zero to JupyterHub uses 0: refusals then arrive on the progress stream instead.)
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 1}

# -- who may log in ----------------------------------------------------------------------------
# Anonymous Binder creates its temporary users through the API, so nobody needs to log in.
# Auth mode needs a real authenticator (OAuthenticator, LDAP, ...); `dummy` accepts anyone.
c.JupyterHub.authenticator_class = env("BINDER_HUB_AUTHENTICATOR", "null")
c.Authenticator.allow_all = True

# -- the `binder` service: binderapi's token and the permissions its launcher needs ------------
# admin:users  create and delete the temporary users, read users' servers (auth mode checks)
# servers      start and stop servers, follow their progress streams
c.JupyterHub.services = [{"name": "binder", "api_token": SERVICE_TOKEN}]
c.JupyterHub.load_roles = [
    {"name": "binder", "services": ["binder"], "scopes": ["admin:users", "servers"]},
]
# Browser logins (auth mode): binderapi sends users to the hub's authorize page and gets their
# token back at its callback, like any JupyterHub service using HubOAuth.
OAUTH_REDIRECT_URI = env("BINDER_SERVICE_OAUTH_REDIRECT_URI")
if OAUTH_REDIRECT_URI:
    c.JupyterHub.services[0].update(
        oauth_client_id=env("BINDER_SERVICE_OAUTH_CLIENT_ID", "service-binder"),
        oauth_redirect_uri=OAUTH_REDIRECT_URI,
        oauth_no_confirm=not env_flag("BINDER_SERVICE_OAUTH_CONFIRM"),
    )
if OAUTH_REDIRECT_URI or env_flag("BINDER_AUTH_ENABLED"):
    # Every user may use binderapi: JupyterHub's default `user` role plus access to the service.
    # binderapi, like JupyterHub's HubAuth, accepts a user's token (or login) only with that scope.
    c.JupyterHub.load_roles.append({"name": "user", "scopes": ["self", "access:services!service=binder"]})
ADMIN_TOKEN = env("BINDER_HUB_ADMIN_API_TOKEN")
if ADMIN_TOKEN:
    c.JupyterHub.services.append({"name": "binder-admin", "api_token": ADMIN_TOKEN})
    c.JupyterHub.load_roles.append({
        "name": "binder-admin", "services": ["binder-admin"],
        "scopes": ["admin:users", "admin:servers", "tokens", "access:servers"],
    })

# Auth mode with Launcher.allow_named_servers starts one named server per launch.
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = int(env("BINDER_NAMED_SERVER_LIMIT", "0"))

# Temporary users are left behind by every anonymous launch. Remove idle servers *and* their users
# with jupyterhub-idle-culler (pip install jupyterhub-idle-culler), as BinderHub's chart does:
# c.JupyterHub.services.append({
#     "name": "idle-culler",
#     "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=600", "--cull-users"],
# })
# c.JupyterHub.load_roles.append({
#     "name": "idle-culler", "services": ["idle-culler"],
#     "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers", "admin:users"],
# })


# -- the spawner: DockerSpawner on the host network, with the Binder mixin ------------------------
class HostNetworkDockerSpawner(DockerSpawner):
    """Containers share the host's network: give each server its own free port on 127.0.0.1
    and tell the hub to find it there (there are no container addresses to look up)."""

    async def start(self):
        self.port = random_port()
        return await super().start()

    async def get_ip_and_port(self):
        return self.ip, self.port


class BinderDockerSpawner(BinderSpawnerMixin, HostNetworkDockerSpawner):
    """Starts the image binderapi asks for, opened with the launch token."""


c.JupyterHub.spawner_class = BinderDockerSpawner
c.BinderSpawnerMixin.auth_enabled = env_flag("BINDER_AUTH_ENABLED")
c.BinderSpawnerMixin.cors_allow_origin = env("BINDER_CORS_ALLOW_ORIGIN")

c.DockerSpawner.network_name = "host"
# With the host network there are no port bindings to ask Docker for; `False` would request them
# and Docker refuses ("host" network_mode is incompatible with port_bindings).
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.ip = "127.0.0.1"
c.DockerSpawner.image = env("BINDER_SINGLEUSER_IMAGE", "binderapi/singleuser:latest")
c.DockerSpawner.prefix = env("BINDER_CONTAINER_PREFIX", "jupyter")
c.DockerSpawner.pull_policy = "ifnotpresent"  # repository images come from the registry
c.DockerSpawner.remove = True  # a stopped server leaves no container behind
# repo2docker images default to `jupyter notebook`; run the hub-aware server instead (the image's
# entrypoint, e.g. repo2docker-entrypoint, still wraps it). `jupyter-notebook`, as in BinderHub's
# chart, also works without auth mode: the mixin gives it the token on its command line.
c.DockerSpawner.cmd = env("BINDER_SINGLEUSER_CMD", "jupyterhub-singleuser").split()

ALLOWED_IMAGE_PREFIX = env("BINDER_ALLOWED_IMAGE_PREFIX")


def allowed_images(spawner):
    """The image comes from user_options. Any image, or only the operator's registry prefix."""
    if not ALLOWED_IMAGE_PREFIX:
        return "*"
    image = (spawner.user_options or {}).get("image", "")
    return [image] if isinstance(image, str) and image.startswith(ALLOWED_IMAGE_PREFIX) else []


c.DockerSpawner.allowed_images = allowed_images

c.Spawner.start_timeout = 120  # covers pulling a large image from the registry
c.Spawner.http_timeout = 60
