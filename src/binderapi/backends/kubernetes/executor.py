"""Builds in pods through the Kubernetes API, as BinderHub's ``KubernetesBuildExecutor``.

The pod name is the build name, so a ``409 AlreadyExists`` on create means another replica is
building the same image: the manager attaches to it (the Kubernetes API is the lock). Phases come
from a watch (never polling), logs from ``pods/log`` with ``follow``.

Credentials go in a Secret ``<build>-credentials`` created *after* the pod and owned by it
(``ownerReferences``): the pod mounts the Secret, and a kubelet mounts a pod's volumes before it
starts anything, retrying a missing Secret until it exists, so the builder never starts without
its credentials. Kubernetes' garbage collector deletes the Secret whenever the pod goes, however
it goes; binderapi never needs to read or list Secrets, which would expose the hub's too.

Every call survives a flaky apiserver: transient failures (5xx, 429, timeouts, cut connections)
are retried a few times with backoff, and what still fails becomes a :class:`BuildError` naming
the apiserver and what it answered, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ... import retry
from ...errors import BuildError
from ...executors.base import COMPONENT_LABEL, BuildBackend, BuildExistsError, BuildInfo, BuildJob
from ...executors.repo2docker import git_config_environment, repo2docker_command
from ..docker.engine import socket_path
from .api import (
    CONNECTION_ERRORS,
    ApiException,
    describe,
    is_transient,
    make_api_client,
    retrying,
)

if TYPE_CHECKING:
    from ...settings import Settings
    from .engine import SharedApiClient

from kubernetes_asyncio import client, watch

log = logging.getLogger(__name__)

T = TypeVar("T")

IMAGE_ANNOTATION = "binderapi/image"
REPO_ANNOTATION = "binder-repo"
#: which process created the pod: after a create whose answer was lost, the retry's 409 tells
#: "we made it" (own it) from "another replica made it" (attach)
CREATOR_ANNOTATION = "binderapi/creator"
#: the build's id (BuildJob.build_id), as a label: a restarted binderapi finds its builds by it
BUILD_ID_LABEL = "binderapi.jupyter.org/build-id"
#: attempts per API call on transient failures, and the first wait between them (then doubled)
API_ATTEMPTS = 4
RETRY_DELAY = 0.5
#: reasons a container waits forever: fail the build instead of waiting for max_age
HOPELESS_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                    "CreateContainerError", "ErrImageNeverPull"}
#: the pod's volume of its credentials Secret. The builder reads the credentials from its
#: environment (``secretKeyRef``); the mount is what makes the kubelet wait for the Secret, since
#: it sets up volumes before creating containers and resolves the environment only then
CREDENTIALS_VOLUME = "build-credentials"
CREDENTIALS_MOUNT = "/etc/binderapi/build-credentials"


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

    def __init__(self, settings: Settings, engine: SharedApiClient | None = None) -> None:
        self.settings = settings
        self._engine = engine  # the kind's shared client (closed by the kind), else one of our own
        self.config = settings.KubernetesBuildExecutor
        self.namespace = self.config.namespace
        self.timeout = self.config.api_timeout
        self._api_client: client.ApiClient | None = None
        self._lock = asyncio.Lock()
        self._secrets_allowed = self.config.credentials_in_secret
        self.creator = uuid.uuid4().hex

    @property
    def builder_info(self) -> dict[str, Any]:
        return {"build_image": self.config.build_image}

    async def api(self) -> client.CoreV1Api:
        async with self._lock:
            if self._api_client is None:
                try:
                    self._api_client = await (self._engine.get() if self._engine else make_api_client(self.config.kubeconfig))
                except RuntimeError as e:
                    raise BuildError(f"Cannot reach Kubernetes: {e}") from None
        return client.CoreV1Api(self._api_client)

    def _failure(self, doing: str, error: BaseException) -> BuildError:
        """A message an operator can act on: which apiserver, doing what, answered what."""
        host = self._api_client.configuration.host if self._api_client else "the Kubernetes API"
        hint = {401: " Check the credentials in the kubeconfig or the service account token.",
                403: f" Check binderapi's RBAC Role in namespace {self.namespace} (pods: get, list, watch, "
                     "create, delete; pods/log: get; secrets: create, delete with credentials_in_secret).",
                422: " The build pod was refused as invalid: check the KubernetesBuildExecutor settings."}
        extra = hint.get(error.status, "") if isinstance(error, ApiException) else ""
        down = is_transient(error)
        if down:
            extra = " The API server is failing or unreachable; try the build again later."
        return BuildError(f"Kubernetes API {host} failed {doing}: {describe(error)}.{extra}",
                          status_code=503 if down else None)  # 503: a dependency is down (docs/events.md)

    async def _call(self, doing: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` with retries on transient failures; any failure left is a BuildError."""
        try:
            return await retrying(call, attempts=API_ATTEMPTS, delay=RETRY_DELAY)
        except (ApiException, *CONNECTION_ERRORS) as e:
            raise self._failure(doing, e) from None

    # -- the pod ----------------------------------------------------------------------------------
    def _resources(self) -> dict[str, Any]:
        if self.config.resources:
            return self.config.resources
        limits = {"memory": str(self.config.memory_limit)} if self.config.memory_limit else {}
        requests = {"memory": str(self.config.memory_request)} if self.config.memory_request else {}
        return {"limits": limits, "requests": requests}

    def _env(self, job: BuildJob, secret_name: str | None) -> list[dict[str, Any]]:
        values = {**self.config.extra_envs, **git_config_environment(job, self.config.extra_envs)}
        env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items()]
        credentials = self._credentials(job)
        for key, value in credentials.items():
            if secret_name:
                env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}})
            else:
                env.append({"name": key, "value": value})
        return env

    def _credentials(self, job: BuildJob) -> dict[str, str]:
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
        socket = socket_path(config.docker_host) if config.docker_host else None
        if socket:  # the node engine's socket, read by the one rule for engine addresses; tcp:// has none
            volumes.append({"name": "docker-socket", "hostPath": {"path": socket, "type": "Socket"}})
            mounts.append({"name": "docker-socket", "mountPath": "/var/run/docker.sock"})
        if job.push and not config.registry_credentials and config.push_secret:
            volumes.append({"name": "docker-config", "secret": {"secretName": config.push_secret}})
            mounts.append({"name": "docker-config", "mountPath": "/root/.docker/config.json", "subPath": "config.json"})
        if secret_name:
            volumes.append({"name": CREDENTIALS_VOLUME, "secret": {"secretName": secret_name, "defaultMode": 0o400}})
            mounts.append({"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_MOUNT, "readOnly": True})
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
                "labels": {"name": job.name, "component": COMPONENT_LABEL,
                           **({BUILD_ID_LABEL: job.build_id} if job.build_id else {})},
                "annotations": {REPO_ANNOTATION: job.repo_url, IMAGE_ANNOTATION: job.image_name,
                                CREATOR_ANNOTATION: self.creator},
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
        try:
            pods = await self._call("listing the image-builder pods", lambda: api.list_namespaced_pod(
                self.namespace, label_selector=self.config.builder_pod_selector, _request_timeout=self.timeout))
        except BuildError as e:  # stickiness only saves time: build anywhere rather than not at all
            log.warning("Sticky builds: %s Building without a preferred node.", e.message)
            return None
        nodes = sorted({pod.spec.node_name for pod in pods.items if pod.spec and pod.spec.node_name})
        return rendezvous_rank(nodes, job.repo_url)[0] if nodes else None

    # -- BuildBackend --------------------------------------------------------------------------------
    async def start(self, job: BuildJob) -> None:
        """The pod first, then its credentials Secret owned by it (see the module docstring): a
        process that dies in between leaves a pod waiting for a Secret, which the cleaner removes
        at ``max_age`` like any build, and never a Secret without a pod."""
        api = await self.api()
        sticky = await self.sticky_node(job)
        use_secret = bool(self._credentials(job)) and self._secrets_allowed
        secret_name = f"{job.name}-credentials" if use_secret else None
        pod = await self._create_pod(api, self.pod_manifest(job, sticky_node=sticky, secret_name=secret_name))
        if secret_name is not None:
            try:
                stored = await self._store_credentials(api, job, secret_name, pod)
            except BuildError:
                with contextlib.suppress(BuildError):  # else it waits for its Secret until max_age
                    await self._delete(api.delete_namespaced_pod, job.name)
                raise
            if not stored:  # RBAC forbids Secrets: this pod would wait for one for ever
                await self._delete(api.delete_namespaced_pod, job.name)
                await self._create_pod(api, self.pod_manifest(job, sticky_node=sticky))
        log.info("Created build pod %s for %s", job.name, job.image_name)

    async def _create_pod(self, api: client.CoreV1Api, pod: dict[str, Any]) -> Any:
        """Create, retrying transient failures, and return the pod. A 409 is another replica's
        build (attach), unless the pod carries our creator mark: then an earlier attempt made it
        and only its answer was lost, and the build is ours."""
        name = pod["metadata"]["name"]
        attempts = 0

        async def create() -> Any:
            nonlocal attempts
            attempts += 1
            try:
                return await api.create_namespaced_pod(self.namespace, pod, _request_timeout=self.timeout)
            except ApiException as e:
                if e.status != 409:
                    raise
                if attempts > 1:
                    existing = await self._call(f"reading the build pod {name}", lambda: api.read_namespaced_pod(
                        name, self.namespace, _request_timeout=self.timeout))
                    if (existing.metadata.annotations or {}).get(CREATOR_ANNOTATION) == self.creator:
                        return existing
                raise BuildExistsError(name) from None

        return await self._call(f"creating the build pod {name}", create)

    async def _store_credentials(self, api: client.CoreV1Api, job: BuildJob, name: str, pod: Any) -> bool:
        """Create the credentials Secret ``name``, owned by ``pod``; False if RBAC forbids
        Secrets (then, logged once, credentials go in the pod's environment from now on).

        A 409 on a retry is our own create whose answer was lost. On a first try it is a Secret
        no live pod owns (we hold the pod's name): one the garbage collector has yet to remove
        after its pod went, or one from before Secrets had owners. It is replaced, once."""
        owner = {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid,
                 # not the Secret's controller, and deleting the pod need not wait for it (true would
                 # also need RBAC on pods/finalizers where OwnerReferencesPermissionEnforcement runs)
                 "controller": False, "blockOwnerDeletion": False}
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "stringData": self._credentials(job),
                "metadata": {"name": name, "labels": {"component": COMPONENT_LABEL, "name": job.name},
                             "ownerReferences": [owner]}}
        try:
            try:
                await self._create_secret(api, body)
            except ApiException as e:
                if e.status != 409:
                    raise
                log.info("Replacing Secret %s, which no build pod owns", name)
                await self._delete(api.delete_namespaced_secret, name)
                await self._create_secret(api, body)
        except ApiException as e:
            if e.status == 403:
                log.warning("Not allowed to create Secrets in %s: build credentials go in the pod environment",
                            self.namespace)
                self._secrets_allowed = False
                return False
            raise self._failure(f"storing the build credentials in Secret {name}", e) from None
        except CONNECTION_ERRORS as e:
            raise self._failure(f"storing the build credentials in Secret {name}", e) from None
        return True

    async def _create_secret(self, api: client.CoreV1Api, body: dict[str, Any]) -> None:
        """Create, retrying transient failures; a 409 on a retry is an earlier try whose answer
        was lost."""
        attempts = 0

        async def create() -> None:
            nonlocal attempts
            attempts += 1
            try:
                await api.create_namespaced_secret(self.namespace, body, _request_timeout=self.timeout)
            except ApiException as e:
                if e.status != 409 or attempts == 1:
                    raise
        await retrying(create, attempts=API_ATTEMPTS, delay=RETRY_DELAY)

    async def inspect(self, name: str) -> BuildInfo | None:
        api = await self.api()

        async def read() -> Any:
            try:
                return await api.read_namespaced_pod(name, self.namespace, _request_timeout=self.timeout)
            except ApiException as e:
                if e.status == 404:
                    return None
                raise
        pod = await self._call(f"reading the build pod {name}", read)
        return self._info(pod) if pod is not None else None

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
            build_id=(pod.metadata.labels or {}).get(BUILD_ID_LABEL, ""),
        )

    async def _phases(self, name: str) -> AsyncIterator[tuple[str, Any]]:
        """(event type, pod) for the build pod: its current state, then every change.

        One LIST, then watches resumed from the last resourceVersion seen (bookmarks keep it
        fresh); ``410 Gone`` starts again from a LIST. A failing watch is retried with backoff, and
        ends in a BuildError after ``API_ATTEMPTS`` failures in a row."""
        api = await self.api()
        selector = f"metadata.name={name}"
        version: str | None = None
        backoff = retry.Backoff(transient=is_transient, attempts=API_ATTEMPTS, delay=RETRY_DELAY,
                                what=f"Watching build pod {name}", describe=describe, level=logging.INFO)
        while True:
            if version is None:
                pods = await self._call(f"listing the build pod {name}", lambda: api.list_namespaced_pod(
                    self.namespace, field_selector=selector, _request_timeout=self.timeout))
                if not pods.items:
                    yield "DELETED", None
                    return
                yield "MODIFIED", pods.items[0]
                version = pods.metadata.resource_version
            stream = watch.Watch()
            try:
                async with stream.stream(api.list_namespaced_pod, self.namespace, field_selector=selector,
                                         resource_version=version, allow_watch_bookmarks=True,
                                         timeout_seconds=max(1, int(self.timeout)),
                                         _request_timeout=self.timeout + 5) as events:
                    async for event in events:
                        backoff.reset()
                        version = event["raw_object"]["metadata"].get("resourceVersion") or version
                        if event["type"] == "BOOKMARK":
                            continue
                        yield event["type"], event["object"]
                        if event["type"] == "DELETED":
                            return
            except (ApiException, *CONNECTION_ERRORS) as e:
                if isinstance(e, ApiException) and e.status == 410:
                    version = None  # expired: start again from a LIST
                    continue
                try:
                    await backoff.failed(e)  # waits, or raises after API_ATTEMPTS in a row
                except (ApiException, *CONNECTION_ERRORS):
                    raise self._failure(f"watching the build pod {name}", e) from None
            finally:
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
        """The builder's output. A stream cut off mid-way is resumed with new lines only; when the
        apiserver keeps failing, following stops and :meth:`wait` decides the outcome."""
        if not await self._wait_started(name):
            return
        api = await self.api()
        tail_lines = tail
        for _ in range(API_ATTEMPTS):
            try:
                response = await retrying(lambda tail_lines=tail_lines: self._open_log(api, name, tail_lines),
                                          attempts=API_ATTEMPTS, delay=RETRY_DELAY)
            except (ApiException, *CONNECTION_ERRORS) as e:
                if not is_transient(e):
                    raise self._failure(f"reading the log of build pod {name}", e) from None
                log.warning("Cannot follow the log of build pod %s (%s); waiting for its end without it", name, describe(e))
                return
            if response is None:
                return
            try:
                async for raw in response.content:
                    text = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if text.strip():
                        yield text
                return  # the log ends when the builder exits
            except CONNECTION_ERRORS as e:
                log.warning("The log stream of build pod %s broke (%s); resuming with new lines", name, describe(e))
                tail_lines = 0
            finally:
                response.release()

    async def _open_log(self, api: client.CoreV1Api, name: str, tail_lines: int | None) -> Any:
        """The log response once its answer starts (bounded), or None if the pod is gone or its
        builder never started; the stream itself may then stay quiet as long as the build does."""
        try:
            async with asyncio.timeout(self.timeout):
                return await api.read_namespaced_pod_log(name, self.namespace, container="builder", follow=True,
                                                         tail_lines=tail_lines, _preload_content=False,
                                                         _request_timeout=(self.timeout, None))
        except ApiException as e:
            if e.status in (400, 404):
                return None
            raise

    async def wait(self, name: str) -> int | None:
        last_phase = None
        async for kind, pod in self._phases(name):
            if kind == "DELETED":
                # BinderHub #583: a deleted pod counts as a success only if it had succeeded
                final = pod.status.phase if pod is not None and pod.status else None
                return 0 if "Succeeded" in (final, last_phase) else None
            last_phase = pod.status.phase if pod.status else None
            reason = self._hopeless(pod)
            if reason:
                raise BuildError(f"The build pod cannot start: {reason}")
            if last_phase in ("Succeeded", "Failed"):
                return self._info(pod).exit_code
        return None

    async def stop(self, name: str) -> None:
        """Delete the pod; the garbage collector deletes its credentials Secret."""
        api = await self.api()
        await self._delete(api.delete_namespaced_pod, name)

    async def _delete(self, delete: Callable[..., Awaitable[Any]], target: str) -> None:
        """Delete at once (grace 0); already gone is fine."""
        async def call() -> None:
            try:
                await delete(target, self.namespace, grace_period_seconds=0, _request_timeout=self.timeout)
            except ApiException as e:
                if e.status != 404:
                    raise
        await self._call(f"deleting {target}", call)

    async def list_builds(self) -> list[BuildInfo]:
        api = await self.api()
        pods = await self._call("listing build pods", lambda: api.list_namespaced_pod(
            self.namespace, label_selector=f"component={COMPONENT_LABEL}", _request_timeout=self.timeout))
        return [self._info(pod) for pod in pods.items]

    async def check(self) -> dict[str, Any]:
        await self.api()
        try:
            version = await client.VersionApi(self._api_client).get_code(_request_timeout=self.timeout)
        except (ApiException, *CONNECTION_ERRORS) as e:
            raise self._failure("answering /version", e) from None
        return {"ok": True, "backend": "kubernetes", "kubernetes_version": version.git_version,
                "namespace": self.namespace, "build_image": self.config.build_image}

    async def close(self) -> None:
        if self._api_client is not None and self._engine is None:
            await self._api_client.close()
