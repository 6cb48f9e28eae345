"""JupyterHub for binderapi on Kubernetes, with KubeSpawner and the Binder mixin.

Not runnable on a machine without a cluster; kept correct against jupyterhub >= 5 and
kubespawner >= 6. Two ways to use it:

* a hub you run yourself in the cluster: use this file as its `jupyterhub_config.py`;
* Zero to JupyterHub (the Helm chart BinderHub deploys): the chart already configures the proxy,
  database, addresses and KubeSpawner. Copy only the sections marked [z2jh] into
  `hub.extraConfig`, and set the service, role and culler through the chart's values instead
  (`hub.services.binder`, `hub.loadRoles.binder`, `cull.users: true`), as shown in docs/jupyterhub.md.

The hub's image must be able to import `binderapi.spawner` (pip install binderapi, or copy
src/binderapi/spawner.py next to this file: it needs nothing beyond JupyterHub itself).

Environment (defaults in brackets):
  BINDER_SERVICE_API_TOKEN     API token of the `binder` service (binderapi's BinderHub.hub_api_token).
                               Required. Put it in a Secret and expose it as an environment variable.
  POD_NAMESPACE                namespace of single-user pods [the hub's own namespace]
  BINDER_AUTH_ENABLED          1: authenticated Binder (binderapi's BinderHub.auth_enabled) [0]
  BINDER_CORS_ALLOW_ORIGIN     allow_origin of single-user servers (BinderHub.cors_allow_origin) []
  BINDER_ALLOWED_IMAGE_PREFIX  only images starting with this may be launched, e.g. your
                               BinderHub.image_prefix; empty allows any image []
  BINDER_NAMED_SERVER_LIMIT    JupyterHub's named_server_limit_per_user [0 = none]
  BINDER_SERVICE_OAUTH_REDIRECT_URI
                               auth mode with browser logins: binderapi's public callback URL,
                               e.g. https://binder.example.org/oauth_callback (binderapi's
                               HubOAuth.oauth_redirect_uri); unset: token-only auth mode []
  BINDER_SERVICE_OAUTH_CLIENT_ID   its OAuth client id (HubOAuth.oauth_client_id) [service-binder]
"""

import os
import sys

from kubespawner import KubeSpawner
from tornado import web

from binderapi.spawner import BinderSpawnerMixin

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)


def env(name, default=""):
    return os.environ.get(name, "").strip() or default


# -- addresses (a self-run hub; z2jh sets all of this itself) -------------------------------------
# The proxy is a separate Deployment (configurable-http-proxy) behind a public Service; the hub
# listens on all interfaces of its pod and is reached by pods through its Service `hub`.
c.JupyterHub.bind_url = "http://:8000"  # what the proxy serves publicly (binderapi's hub_url)
c.JupyterHub.hub_bind_url = "http://:8081"
c.JupyterHub.hub_connect_url = "http://hub:8081"  # how single-user pods reach the hub API
c.ConfigurableHTTPProxy.should_start = False  # the proxy runs in its own pod
c.ConfigurableHTTPProxy.api_url = "http://proxy-api:8001"
# CONFIGPROXY_AUTH_TOKEN (shared with the proxy pod) is read from the environment by JupyterHub.
c.JupyterHub.db_url = env("JUPYTERHUB_DB_URL", "sqlite:////srv/jupyterhub/jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = "/srv/jupyterhub/jupyterhub_cookie_secret"
c.JupyterHub.cleanup_servers = False  # pods outlive a hub restart; the hub picks them up again

# -- logins: none for anonymous Binder; a real authenticator for auth mode --------------------------
c.JupyterHub.authenticator_class = "null"
# auth mode, e.g.: c.JupyterHub.authenticator_class = "github" (oauthenticator) + its settings

# -- the `binder` service binderapi uses ------------------------------------------------------------
# admin:users: create/delete temporary users, read users' servers; servers: start/stop, progress.
c.JupyterHub.services = [{"name": "binder", "api_token": env("BINDER_SERVICE_API_TOKEN")}]
c.JupyterHub.load_roles = [{"name": "binder", "services": ["binder"], "scopes": ["admin:users", "servers"]}]
if not c.JupyterHub.services[0]["api_token"]:
    raise SystemExit("BINDER_SERVICE_API_TOKEN must be set")
# Browser logins in auth mode: binderapi is an OAuth client of the hub (z2jh: the same keys under
# hub.services.binder). No approval page for the hub's own Binder, as in BinderHub's docs.
if env("BINDER_SERVICE_OAUTH_REDIRECT_URI"):
    c.JupyterHub.services[0].update(
        oauth_client_id=env("BINDER_SERVICE_OAUTH_CLIENT_ID", "service-binder"),
        oauth_redirect_uri=env("BINDER_SERVICE_OAUTH_REDIRECT_URI"),
        oauth_no_confirm=True,
    )
if env("BINDER_SERVICE_OAUTH_REDIRECT_URI") or env("BINDER_AUTH_ENABLED").lower() in {"1", "true", "yes"}:
    # users may use binderapi, which (as JupyterHub's HubAuth) accepts a user's token or login only
    # with this scope (z2jh: hub.loadRoles.user.scopes)
    c.JupyterHub.load_roles.append({"name": "user", "scopes": ["self", "access:services!service=binder"]})

c.JupyterHub.allow_named_servers = True  # [z2jh] (or hub.allowNamedServers: true)
c.JupyterHub.named_server_limit_per_user = int(env("BINDER_NAMED_SERVER_LIMIT", "0"))

# Temporary users pile up: cull idle servers *and* their users, as BinderHub's chart does
# (z2jh: cull.enabled: true, cull.users: true).
c.JupyterHub.services.append({
    "name": "idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=600", "--cull-users"],
})
c.JupyterHub.load_roles.append({
    "name": "idle-culler", "services": ["idle-culler"],
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers", "admin:users"],
})

# Start requests are answered at once; binderapi follows the progress stream, where KubeSpawner
# reports the pod's events ("Pulling image ...") as they happen. (z2jh sets the same.)
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}


# -- [z2jh] the spawner -----------------------------------------------------------------------------
class BinderSpawner(BinderSpawnerMixin, KubeSpawner):
    """KubeSpawner starting the image binderapi asks for, opened with the launch token."""


c.JupyterHub.spawner_class = BinderSpawner
c.BinderSpawnerMixin.auth_enabled = env("BINDER_AUTH_ENABLED").lower() in {"1", "true", "yes"}
c.BinderSpawnerMixin.cors_allow_origin = env("BINDER_CORS_ALLOW_ORIGIN")

if env("POD_NAMESPACE"):  # otherwise KubeSpawner uses the hub pod's own namespace
    c.KubeSpawner.namespace = env("POD_NAMESPACE")
# jupyterhub-singleuser: activity reports for the culler, and auth mode. repo2docker images
# contain it. Anonymous Binder also works with `jupyter-notebook` (BinderHub's chart default):
# the mixin puts address, base URL and token on its command line.
c.KubeSpawner.cmd = ["jupyterhub-singleuser"]
c.KubeSpawner.image_pull_policy = "IfNotPresent"  # image names carry the commit as their tag
c.KubeSpawner.start_timeout = 600  # a large image may take minutes to pull onto a node
c.KubeSpawner.http_timeout = 120
# labels binderapi's KubernetesLaunchQuota counts (app=jupyterhub,component=singleuser-server)
c.KubeSpawner.common_labels = {"app": "jupyterhub", "heritage": "jupyterhub"}
# on clusters with dedicated user nodes (the taint z2jh and BinderHub use)
c.KubeSpawner.tolerations = [
    {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
    {"key": "hub.jupyter.org_dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
]
# Binder servers keep nothing: no home volume.
c.KubeSpawner.storage_pvc_ensure = False
# modest defaults per server; tune to your nodes
c.KubeSpawner.mem_guarantee = "512M"
c.KubeSpawner.mem_limit = "2G"
c.KubeSpawner.cpu_limit = 1.0

ALLOWED_IMAGE_PREFIX = env("BINDER_ALLOWED_IMAGE_PREFIX")


async def check_image(spawner):
    """KubeSpawner takes the image from the mixin without a list of allowed images: enforce the
    operator's registry prefix here, so that nobody can run an arbitrary image through the API."""
    image = (spawner.user_options or {}).get("image")
    if ALLOWED_IMAGE_PREFIX and image and not str(image).startswith(ALLOWED_IMAGE_PREFIX):
        raise web.HTTPError(400, f"image {image} is not allowed")


c.KubeSpawner.pre_spawn_hook = check_image
