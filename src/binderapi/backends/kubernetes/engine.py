"""The one Kubernetes API client the build backend and the launch quota share."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .api import make_api_client

if TYPE_CHECKING:
    from kubernetes_asyncio import client

    from ...settings import Settings


class SharedApiClient:
    """Made on first use, so each user reports a failure in its own words (the build backend as a
    build error, the quota as a start-up error), and made again after one."""

    def __init__(self, settings: Settings) -> None:
        self.kubeconfig = settings.KubernetesBuildExecutor.kubeconfig
        self._client: client.ApiClient | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> client.ApiClient:
        """The client; ``RuntimeError`` saying why when no configuration reaches a cluster."""
        async with self._lock:
            if self._client is None:
                self._client = await make_api_client(self.kubeconfig)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
