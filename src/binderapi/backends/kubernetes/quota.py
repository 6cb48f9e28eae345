"""Launch quota counted from single-user pods, kept current by a watch (an informer).

BinderHub listed every single-user pod on every build and launch; here a check reads in-memory
counts, so it costs the same with 10 or 10,000 pods and makes no API call at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from kubernetes_asyncio import client

from ...errors import StartupError
from ...executors.base import COMPONENT_LABEL
from ...quota import CountingQuota
from .api import Informer, make_api_client

if TYPE_CHECKING:
    from ...settings import Settings
    from ...supervisor import Supervisor
    from .engine import SharedApiClient

ENDED = ("Succeeded", "Failed")


class KubernetesLaunchQuota(CountingQuota):
    def __init__(self, settings: Settings, supervisor: Supervisor | None = None,
                 engine: SharedApiClient | None = None) -> None:
        super().__init__(settings, supervisor)
        self._engine = engine  # the kind's shared client (closed by the kind), else one of our own
        self.config = settings.KubernetesLaunchQuota
        self.total_quota = self.config.total_quota
        self.namespace = self.config.namespace or settings.KubernetesBuildExecutor.namespace
        self.kubeconfig = settings.KubernetesBuildExecutor.kubeconfig
        self.timeout = settings.KubernetesBuildExecutor.api_timeout
        self.supervisor = supervisor
        self.build_pods: set[str] = set()
        self._api_client: client.ApiClient | None = None
        self.informers: list[Informer] = []
        self.start_error = ""  # why start() could not reach Kubernetes (builder_required: false starts anyway)

    # single-user pods (as JSON dicts, see Informer) ---------------------------------------------
    @staticmethod
    def _key(pod: dict[str, Any]) -> str:
        return pod["metadata"].get("uid") or pod["metadata"]["name"]

    @staticmethod
    def _image(pod: dict[str, Any]) -> str:
        containers = (pod.get("spec") or {}).get("containers") or []
        return containers[0].get("image", "") if containers else ""

    @staticmethod
    def _ended(pod: dict[str, Any]) -> bool:
        return (pod.get("status") or {}).get("phase") in ENDED

    def _user_pod(self, kind: str, pod: dict[str, Any]) -> None:
        if kind == "DELETED" or self._ended(pod):
            self.removed(self._key(pod))
        else:
            self.added(self._key(pod), self._image(pod))

    def _user_resync(self, pods: list[dict[str, Any]]) -> None:
        self.replace_all({self._key(p): self._image(p) for p in pods if not self._ended(p)})

    # build pods (for the health check) -----------------------------------------------------------
    def _build_pod(self, kind: str, pod: dict[str, Any]) -> None:
        if kind == "DELETED":
            self.build_pods.discard(pod["metadata"]["name"])
        else:
            self.build_pods.add(pod["metadata"]["name"])

    def _build_resync(self, pods: list[dict[str, Any]]) -> None:
        self.build_pods = {p["metadata"]["name"] for p in pods}

    async def start(self) -> None:
        assert self.supervisor is not None
        try:
            self._api_client = await (self._engine.get() if self._engine else make_api_client(self.kubeconfig))
        except RuntimeError as e:
            self.start_error = f"KubernetesLaunchQuota cannot reach Kubernetes: {e}"
            raise StartupError(self.start_error) from None
        api = client.CoreV1Api(self._api_client)
        interval = self.config.resync_interval
        self.informers = [
            Informer(api, self.namespace, self.config.pod_selector, on_change=self._user_pod,
                     on_resync=self._user_resync, resync_interval=interval, timeout=self.timeout),
            Informer(api, self.namespace, f"component={COMPONENT_LABEL}", on_change=self._build_pod,
                     on_resync=self._build_resync, resync_interval=interval, timeout=self.timeout),
        ]
        for informer in self.informers:
            self.supervisor.run_forever(f"quota: watch {informer.selector}", informer.run)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in self.informers)), self.timeout)

    async def health(self, build_count: int) -> dict[str, Any]:
        """The counts, or why there are none: counts never listed from the API are not zero."""
        if self.start_error:
            return {"ok": False, "error": self.start_error}
        result = await super().health(len(self.build_pods))
        unsynced = [informer.selector for informer in self.informers if not informer.synced.is_set()]
        if unsynced:
            host = self._api_client.configuration.host if self._api_client else "the Kubernetes API"
            result.update(ok=False, error=f"pods not listed yet from {host} ({', '.join(unsynced)}): "
                                          "counts unknown until the API answers; see the log")
        return result

    async def close(self) -> None:
        if self._api_client is not None and self._engine is None:
            await self._api_client.close()
