"""Kubernetes plumbing shared by the build backend and the launch quota (kubernetes-asyncio).

Imported only when a Kubernetes class is configured: kubernetes-asyncio takes over a second to
import, which the Docker set-up should not pay at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

log = logging.getLogger(__name__)

__all__ = ["ApiException", "Informer", "make_api_client"]


async def make_api_client(kubeconfig: str = "") -> client.ApiClient:
    """In-cluster service account first, then ``kubeconfig`` / ``$KUBECONFIG`` / ``~/.kube/config``."""
    configuration = client.Configuration()
    if not kubeconfig:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except ConfigException:
            pass
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.join(os.environ.get("HOME", "/"), ".kube", "config")
    try:
        await config.load_kube_config(config_file=path, client_configuration=configuration)
    except (ConfigException, OSError) as e:
        raise RuntimeError(f"no in-cluster service account and no usable kubeconfig at {path} ({e})") from None
    return client.ApiClient(configuration)


class Informer:
    """A local copy of the pods matching a selector, kept current by a watch.

    One LIST, then a WATCH from its ``resourceVersion`` (with bookmarks); a ``410 Gone`` or a broken
    stream restarts from a fresh LIST, and a full LIST every ``resync_interval`` corrects any drift.
    ``on_change(event_type, pod)`` sees every change; ``on_resync(pods)`` every full list.
    """

    def __init__(
        self,
        api: client.CoreV1Api,
        namespace: str,
        label_selector: str,
        *,
        on_change: Callable[[str, Any], None],
        on_resync: Callable[[list[Any]], None],
        resync_interval: float = 300.0,
        timeout: float = 30.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.selector = label_selector
        self.on_change = on_change
        self.on_resync = on_resync
        self.resync_interval = resync_interval
        self.timeout = timeout
        self.synced = asyncio.Event()
        self.lists = 0

    async def _list(self) -> str:
        pods = await self.api.list_namespaced_pod(self.namespace, label_selector=self.selector,
                                                  _request_timeout=self.timeout)
        self.lists += 1
        self.on_resync(list(pods.items))
        self.synced.set()
        return pods.metadata.resource_version

    async def run(self) -> None:
        """Run until cancelled; errors are logged and retried after a pause."""
        while True:
            try:
                version = await self._list()
                async with asyncio.timeout(self.resync_interval):
                    await self._watch(version)
            except TimeoutError:
                continue  # time for a full resync
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("Pod watch %s in %s failed (%s); relisting soon", self.selector, self.namespace, e)
                await asyncio.sleep(2)

    async def _watch(self, version: str) -> None:
        while True:
            stream = watch.Watch()
            try:
                async with stream.stream(
                    self.api.list_namespaced_pod, self.namespace, label_selector=self.selector,
                    resource_version=version, allow_watch_bookmarks=True, timeout_seconds=int(self.timeout),
                    _request_timeout=self.timeout + 5,
                ) as events:
                    async for event in events:
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            code = getattr(obj, "code", None) or (obj.get("code") if isinstance(obj, dict) else None)
                            if code == 410:
                                return  # expired: relist
                            raise RuntimeError(f"watch error {obj}")
                        version = obj.metadata.resource_version or version
                        if kind != "BOOKMARK":
                            self.on_change(kind, obj)
            except ApiException as e:
                if e.status == 410:
                    return
                raise
            finally:
                with contextlib.suppress(Exception):
                    stream.stop()


async def call(coro: Awaitable[Any], what: str) -> Any:
    """Await a Kubernetes call, turning API errors into messages people can act on."""
    try:
        return await coro
    except ApiException as e:
        raise RuntimeError(f"{what}: Kubernetes API answered {e.status} {e.reason}") from e
