"""Builds in pods through the Kubernetes API, as BinderHub's ``KubernetesBuildExecutor``.

The pod name is the build name, so a ``409 AlreadyExists`` on create means another replica is
building the same image: the manager attaches to it (the Kubernetes API is the lock). Phases come
from a watch (never polling), logs from ``pods/log`` with ``follow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..errors import BuildError
from ..kube import ApiException, make_api_client
from .base import COMPONENT_LABEL, BuildBackend, BuildExistsError, BuildInfo, BuildJob
from .repo2docker import repo2docker_command

if TYPE_CHECKING:
    from ..settings import Settings

from kubernetes_asyncio import client, watch

log = logging.getLogger(__name__)

IMAGE_ANNOTATION = "binderapi/image"
REPO_ANNOTATION = "binder-repo"
#: reasons a container waits forever: fail the build instead of waiting for max_age
HOPELESS_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                    "CreateContainerError", "ErrImageNeverPull"}


def rendezvous_rank(buckets: list[str], key: str) -> list[str]:
    """Buckets (nodes) ranked for ``key`` (a repo URL), identically to BinderHub's ranking, so the
    same nodes keep their layer caches after a move from BinderHub."""
    scored = [(int.from_bytes(hashlib.blake2b(f"{key}-{bucket}".encode(), digest_size=8).digest(), "big"), bucket)
              for bucket in buckets]
    return [bucket for _, bucket in sorted(scored, reverse=True)]


def _epoch(value: Any) -> float | None:
    return value.timestamp() if value is not None else None


class KubernetesBuildBackend(BuildBackend):
    kind = "kubernetes"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = settings.KubernetesBuildExecutor
        self.namespace = self.config.namespace
        self.timeout = self.config.api_timeout
        self._api_client: client.ApiClient | None = None
        self._lock = asyncio.Lock()
        self._secrets_allowed = self.config.credentials_in_secret

    @property
    def builder_info(self) -> dict[str, Any]:
        return {"build_image": self.config.build_image}

    async def api(self) -> client.CoreV1Api:
        async with self._lock:
            if self._api_client is None:
                try:
                    self._api_client = await make_api_client(self.config.kubeconfig)
                except RuntimeError as e:
                    raise BuildError(f"Cannot reach Kubernetes: {e}") from None
        return client.CoreV1Api(self._api_client)

    # -- the pod ----------------------------------------------------------------------------------
    def _resources(self) -> dict[str, Any]:
        if self.config.resources:
            return self.config.resources
        limits = {"memory": str(self.config.memory_limit)} if self.config.memory_limit else {}
        requests = {"memory": str(self.config.memory_request)} if self.config.memory_request else {}
        return {"limits": limits, "requests": requests}

    def _env(self, job: BuildJob, secret_name: str | None) -> list[dict[str, Any]]:
        env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in self.config.extra_envs.items()]
        credentials = self._credentials(job)
        for key, value in credentials.items():
            if secret_name:
                env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}})
            else:
                env.append({"name": key, "value": value})
        return env

    def _credentials(self, job: BuildJob) -> dict[str, str]:
        import json

        values = {}
        if job.git_credentials:
            values["GIT_CREDENTIAL_ENV"] = job.git_credentials
        if self.config.registry_credentials:
            values["CONTAINER_ENGINE_REGISTRY_CREDENTIALS"] = json.dumps(self.config.registry_credentials)
        return values

    def pod_manifest(self, job: BuildJob, *, sticky_node: str | None = None, secret_name: str | None = None) -> dict[str, Any]:
        """BinderHub's build pod: one ``builder`` container running repo2docker."""
        config = self.config
        volumes: list[dict[str, Any]] = []
        mounts: list[dict[str, Any]] = []
        if config.docker_host:
            socket = config.docker_host.removeprefix("unix://")
            volumes.append({"name": "docker-socket", "hostPath": {"path": socket, "type": "Socket"}})
            mounts.append({"name": "docker-socket", "mountPath": "/var/run/docker.sock"})
        if job.push and not config.registry_credentials and config.push_secret:
            volumes.append({"name": "docker-config", "secret": {"secretName": config.push_secret}})
            mounts.append({"name": "docker-config", "mountPath": "/root/.docker/config.json", "subPath": "config.json"})
        if sticky_node:
            affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100,
                "preference": {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [sticky_node]}]},
            }]}}
        else:
            affinity = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100,
                "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {"matchLabels": {"component": COMPONENT_LABEL}}},
            }]}}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": job.name,
                "labels": {"name": job.name, "component": COMPONENT_LABEL},
                "annotations": {REPO_ANNOTATION: job.repo_url, IMAGE_ANNOTATION: job.image_name},
            },
            "spec": {
                "containers": [{
                    "name": "builder",
                    "image": config.build_image,
                    "args": repo2docker_command(job, memory_limit=config.memory_limit, extra_args=config.repo2docker_extra_args),
                    "env": self._env(job, secret_name),
                    "volumeMounts": mounts,
                    "resources": self._resources(),
                }],
                "volumes": volumes,
                "tolerations": config.tolerations,
                "nodeSelector": config.node_selector or None,
                "restartPolicy": "Never",
                "affinity": affinity,
                "imagePullSecrets": [{"name": name} for name in config.image_pull_secrets] or None,
            },
        }

    async def sticky_node(self, job: BuildJob) -> str | None:
        """The image-builder node ranked first for this repository (sticky builds)."""
        if not self.config.sticky_builds:
            return None
        api = await self.api()
        pods = await api.list_namespaced_pod(self.namespace, label_selector=self.config.builder_pod_selector,
                                             _request_timeout=self.timeout)
        nodes = sorted({pod.spec.node_name for pod in pods.items if pod.spec.node_name})
        return rendezvous_rank(nodes, job.repo_url)[0] if nodes else None

    # -- BuildBackend --------------------------------------------------------------------------------
    async def start(self, job: BuildJob) -> None:
        api = await self.api()
        try:
            secret_name = await self._store_credentials(api, job)
            pod = self.pod_manifest(job, sticky_node=await self.sticky_node(job), secret_name=secret_name)
            await api.create_namespaced_pod(self.namespace, pod, _request_timeout=self.timeout)
        except ApiException as e:
            if e.status == 409:
                raise BuildExistsError(job.name) from None
            raise BuildError(f"Kubernetes refused to create the build pod {job.name}: {e.status} {e.reason}") from None
        except (TimeoutError, OSError) as e:
            raise BuildError(f"The Kubernetes API did not answer when creating the build pod ({type(e).__name__})") from None
        log.info("Created build pod %s for %s", job.name, job.image_name)

    async def _store_credentials(self, api: client.CoreV1Api, job: BuildJob) -> str | None:
        """Credentials go to a Secret when RBAC allows, else (logged once) into the pod's env."""
        credentials = self._credentials(job)
        if not credentials or not self._secrets_allowed:
            return None
        name = f"{job.name}-credentials"
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "stringData": credentials,
                "metadata": {"name": name, "labels": {"component": COMPONENT_LABEL, "name": job.name}}}
        try:
            await api.create_namespaced_secret(self.namespace, body, _request_timeout=self.timeout)
        except ApiException as e:
            if e.status == 409:
                return name
            if e.status == 403:
                log.warning("Not allowed to create Secrets in %s: build credentials go in the pod environment", self.namespace)
                self._secrets_allowed = False
                return None
            raise
        return name

    async def inspect(self, name: str) -> BuildInfo | None:
        api = await self.api()
        try:
            pod = await api.read_namespaced_pod(name, self.namespace, _request_timeout=self.timeout)
        except ApiException as e:
            if e.status == 404:
                return None
            raise BuildError(f"Kubernetes did not answer about build pod {name}: {e.status} {e.reason}") from None
        return self._info(pod)

    @staticmethod
    def _info(pod: Any) -> BuildInfo:
        phase = pod.status.phase if pod.status else None
        terminated = None
        for status in (pod.status.container_statuses or []) if pod.status else []:
            if status.state and status.state.terminated:
                terminated = status.state.terminated
        exit_code = None
        if phase == "Succeeded":
            exit_code = 0
        elif phase == "Failed":
            exit_code = terminated.exit_code if terminated and terminated.exit_code is not None else 1
        annotations = pod.metadata.annotations or {}
        return BuildInfo(
            name=pod.metadata.name,
            image_name=annotations.get(IMAGE_ANNOTATION, ""),
            repo_url=annotations.get(REPO_ANNOTATION, ""),
            running=phase in (None, "Pending", "Running", "Unknown"),
            exit_code=exit_code,
            started_at=_epoch(pod.status.start_time if pod.status else None) or _epoch(pod.metadata.creation_timestamp),
            finished_at=_epoch(terminated.finished_at) if terminated else None,
        )

    async def _phases(self, name: str) -> AsyncIterator[tuple[str, Any]]:
        """(event type, pod) for the build pod: its current state, then every change."""
        api = await self.api()
        while True:
            pods = await api.list_namespaced_pod(self.namespace, field_selector=f"metadata.name={name}",
                                                 _request_timeout=self.timeout)
            if not pods.items:
                yield "DELETED", None
                return
            yield "MODIFIED", pods.items[0]
            version = pods.metadata.resource_version
            stream = watch.Watch()
            try:
                async with stream.stream(api.list_namespaced_pod, self.namespace, field_selector=f"metadata.name={name}",
                                         resource_version=version, timeout_seconds=int(self.timeout),
                                         _request_timeout=self.timeout + 5) as events:
                    async for event in events:
                        if event["type"] == "ERROR":
                            break  # expired or failed watch: relist
                        if event["type"] != "BOOKMARK":
                            yield event["type"], event["object"]
                            if event["type"] == "DELETED":
                                return
            except ApiException as e:
                if e.status != 410:
                    raise
            finally:
                with contextlib.suppress(Exception):
                    stream.stop()

    @staticmethod
    def _hopeless(pod: Any) -> str | None:
        for status in (pod.status.container_statuses or []) if pod and pod.status else []:
            waiting = status.state.waiting if status.state else None
            if waiting and waiting.reason in HOPELESS_WAITING:
                return f"{waiting.reason}: {waiting.message or 'the builder container cannot start'}"
        return None

    async def _wait_started(self, name: str) -> bool:
        """Wait until the builder runs or ended; False if the pod vanished."""
        async for kind, pod in self._phases(name):
            if kind == "DELETED":
                return False
            reason = self._hopeless(pod)
            if reason:
                raise BuildError(f"The build pod cannot start: {reason}")
            if pod.status and pod.status.phase in ("Running", "Succeeded", "Failed"):
                return True
        return False

    async def follow_logs(self, name: str, tail: int | None = None) -> AsyncIterator[str]:
        if not await self._wait_started(name):
            return
        api = await self.api()
        try:
            response = await api.read_namespaced_pod_log(name, self.namespace, container="builder", follow=True,
                                                         tail_lines=tail, _preload_content=False,
                                                         _request_timeout=None)
        except ApiException as e:
            if e.status in (400, 404):  # gone, or not startable
                return
            raise BuildError(f"Could not read the logs of build pod {name}: {e.status} {e.reason}") from None
        try:
            async for raw in response.content:
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                if text.strip():
                    yield text
        finally:
            response.release()

    async def wait(self, name: str) -> int | None:
        last_phase = None
        async for kind, pod in self._phases(name):
            if kind == "DELETED":
                # BinderHub #583: a deleted pod counts as a success only if it had succeeded
                return 0 if last_phase == "Succeeded" else None
            last_phase = pod.status.phase if pod.status else None
            reason = self._hopeless(pod)
            if reason:
                raise BuildError(f"The build pod cannot start: {reason}")
            if last_phase in ("Succeeded", "Failed"):
                return self._info(pod).exit_code
        return None

    async def stop(self, name: str) -> None:
        api = await self.api()
        for delete, target in ((api.delete_namespaced_pod, name), (api.delete_namespaced_secret, f"{name}-credentials")):
            try:
                await delete(target, self.namespace, grace_period_seconds=0, _request_timeout=self.timeout)
            except ApiException as e:
                if e.status not in (404, 403):
                    raise BuildError(f"Could not delete {target}: {e.status} {e.reason}") from None

    async def list_builds(self) -> list[BuildInfo]:
        api = await self.api()
        pods = await api.list_namespaced_pod(self.namespace, label_selector=f"component={COMPONENT_LABEL}",
                                             _request_timeout=self.timeout)
        return [self._info(pod) for pod in pods.items]

    async def check(self) -> dict[str, Any]:
        await self.api()
        version = await client.VersionApi(self._api_client).get_code(_request_timeout=self.timeout)
        return {"ok": True, "backend": "kubernetes", "kubernetes_version": version.git_version,
                "namespace": self.namespace, "build_image": self.config.build_image}

    async def close(self) -> None:
        if self._api_client is not None:
            await self._api_client.close()
