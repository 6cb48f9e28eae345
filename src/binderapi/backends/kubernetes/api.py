"""Kubernetes plumbing shared by the build backend and the launch quota (kubernetes-asyncio).

Imported only when a Kubernetes class is configured: kubernetes-asyncio takes over a second to
import, which the Docker set-up should not pay at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from ... import retry

log = logging.getLogger(__name__)

__all__ = ["CONNECTION_ERRORS", "ApiException", "Informer", "describe", "is_transient", "make_api_client", "retrying"]

T = TypeVar("T")

#: what a call to an apiserver that is down, restarting or overloaded raises besides ApiException:
#: no answer in time, refused or reset connections, answers cut off mid-way
CONNECTION_ERRORS = (TimeoutError, OSError, aiohttp.ClientError)
#: answers worth asking again: overload and server-side failures, never a refusal
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
#: an informer's first wait before relisting after a failure (then doubled, jittered, capped)
RELIST_DELAY = 2.0


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
    ``on_change(event_type, pod)`` sees every change; ``on_resync(pods)`` every full list. Pods are
    their JSON (dicts): kubernetes-asyncio's models cost ten times more to build, which for 10,000
    pods is seconds of the event loop at each resync.
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
        self.bookmarks = 0

    async def _list(self) -> str:
        response = await self.api.list_namespaced_pod(self.namespace, label_selector=self.selector,
                                                      _preload_content=False, _request_timeout=self.timeout)
        try:
            pods = json.loads(await response.read())
        finally:
            response.release()
        self.lists += 1
        self.on_resync(pods.get("items") or [])
        self.synced.set()
        return pods["metadata"]["resourceVersion"]

    async def run(self) -> None:
        """Run until cancelled; errors are logged and retried after the retry policy's wait,
        growing while the apiserver keeps failing, from the start again once a LIST succeeds."""
        backoff = retry.Backoff(transient=lambda e: True, attempts=None, delay=RELIST_DELAY,
                                what=f"Pod watch {self.selector} in {self.namespace}")
        while True:
            try:
                version = await self._list()
                backoff.reset()
                async with asyncio.timeout(self.resync_interval):
                    await self._watch(version)
            except TimeoutError:
                continue  # time for a full resync
            except asyncio.CancelledError:
                raise
            except Exception as e:
                await backoff.failed(e)  # logged: "Pod watch ... failed (attempt n): ...; retrying in ..."

    async def _watch(self, version: str) -> None:
        while True:
            stream = watch.Watch(return_type="object")  # plain dicts, no models
            try:
                async with stream.stream(
                    self.api.list_namespaced_pod, self.namespace, label_selector=self.selector,
                    resource_version=version, allow_watch_bookmarks=True, timeout_seconds=max(1, int(self.timeout)),
                    _request_timeout=self.timeout + 5,
                ) as events:
                    async for event in events:
                        pod = event["raw_object"]
                        version = pod["metadata"].get("resourceVersion") or version
                        if event["type"] == "BOOKMARK":
                            self.bookmarks += 1
                        else:
                            self.on_change(event["type"], pod)
            except ApiException as e:
                if e.status == 410:
                    return  # expired (kubernetes-asyncio raises the ERROR event): relist
                raise
            finally:
                with contextlib.suppress(Exception):
                    stream.stop()


def is_transient(error: BaseException) -> bool:
    """True when asking again may succeed (a failing or unreachable apiserver, not a refusal)."""
    if isinstance(error, ApiException):
        return error.status in TRANSIENT_STATUS
    return isinstance(error, CONNECTION_ERRORS)


def describe(error: BaseException) -> str:
    """One line saying what the apiserver answered, with the message of its ``Status`` body."""
    if isinstance(error, ApiException):
        message = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(error.body).get("message") or ""
        text = f"{error.status} {error.reason or ''}".strip()
        return f"{text}: {message}" if message else text
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return f"connection failed ({type(error).__name__}{': ' + str(error) if str(error) else ''})"


async def retrying(call: Callable[[], Awaitable[T]], *, attempts: int = 4, delay: float = 0.5) -> T:
    """``call()`` again after transient failures (5xx, 429, timeouts, broken connections), waiting
    ``delay`` seconds, doubled each time; the last failure, or any other error, is raised."""
    return await retry.retrying(call, attempts=attempts, delay=delay, what="Kubernetes API call",
                                transient=is_transient, describe=describe, level=logging.INFO)
