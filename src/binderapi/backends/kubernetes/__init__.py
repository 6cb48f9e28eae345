"""The Kubernetes kind (BinderHub's default): build pods (``build_class: kubernetes``) and the
launch quota counted from a watch of single-user pods, through one shared API client.

Its modules import kubernetes-asyncio, which takes over a second: they are named here by import
path and imported only when this kind is in use.
"""

from __future__ import annotations

from typing import Any

from ..kind import BackendKind


def _local_images(settings: Any, engine: Any) -> Any:
    """``use_registry: false`` asks the Docker engine at ``DockerBuildExecutor.docker_host``, as
    BinderHub's local set-ups do, through a client of its own."""
    from ..docker.images import local_images

    return local_images(settings)

KIND = BackendKind(
    name="kubernetes",
    build_backend="binderapi.backends.kubernetes.executor:KubernetesBuildBackend",
    executor_section="KubernetesBuildExecutor",
    cleaner_section="KubernetesCleaner",
    launch_quota="binderapi.backends.kubernetes.quota:KubernetesLaunchQuota",
    engine="binderapi.backends.kubernetes.engine:SharedApiClient",
    local_images=_local_images,
    aliases=("KubernetesBuildExecutor",),
)
