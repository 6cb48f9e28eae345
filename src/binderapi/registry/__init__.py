"""Where built images are kept, and the one question the build pipeline asks: "is it there yet?"

* :class:`DockerRegistry`: a Docker Registry HTTP API v2 registry (``use_registry: true``,
  BinderHub's default), configured by the ``DockerRegistry`` section and a docker ``config.json``.
* the local engine (``use_registry: false``; the backend kind's store, e.g. the Docker kind's
  ``LocalImages``); nothing is pushed.

Both raise :class:`~binderapi.errors.RegistryError` when they cannot answer, so a broken registry
fails the launch with a message instead of triggering a rebuild.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import httpx

from .._importing import resolve
from ..backends import local_image_store  # the table of kinds; it imports no kind's code
from ..singleflight import SingleFlight
from .docker import DockerRegistry

if TYPE_CHECKING:
    from ..settings import Settings


@runtime_checkable
class ImageStore(Protocol):
    """What the build pipeline and ``/health`` need from wherever images are kept."""

    async def image_exists(self, image_name: str) -> bool:
        """``image_name`` is the full name (registry host, path, ``:tag``). Raises
        :class:`~binderapi.errors.RegistryError` when the store cannot answer after its retries."""
        ...

    async def health(self) -> dict[str, Any]:
        """``{"ok": bool, ...}`` for ``/health``; never raises for an unhealthy store."""
        ...

    async def close(self) -> None: ...


class RememberedImages:
    """An :class:`ImageStore` that remembers, for ``seconds``, the images found present.

    An image is named after the resolved ref it was built from, so once present it does not
    change: asking the registry again on every request for a built image costs a round trip
    (most of a cached ``/build``) for nothing. Absent images are never remembered, because a build
    may push one at any moment. Concurrent checks of one name share one request.
    """

    def __init__(self, store: ImageStore, seconds: float, size: int = 65536,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.seconds = seconds
        self.size = size
        self._clock = clock
        self._present: OrderedDict[str, float] = OrderedDict()  # image name -> expiry
        self._asking: SingleFlight[bool] = SingleFlight()  # concurrent checks of one name share one request

    async def image_exists(self, image_name: str) -> bool:
        expires = self._present.get(image_name)
        if expires is not None and expires > self._clock():
            self._present.move_to_end(image_name)
            return True
        exists = await self._asking.run(image_name, lambda: self.store.image_exists(image_name))
        if exists:
            self._present[image_name] = self._clock() + self.seconds
            self._present.move_to_end(image_name)
            while len(self._present) > self.size:
                self._present.popitem(last=False)
        else:
            self._present.pop(image_name, None)
        return exists

    async def health(self) -> dict[str, Any]:
        return await self.store.health()

    async def close(self) -> None:
        self._present.clear()
        await self.store.close()

    def __getattr__(self, name: str) -> Any:  # the wrapped store's extras (e.g. get_image_manifest)
        return getattr(self.store, name)


# registry_class short names (and BinderHub's class names, via `binderhub.registry.<Name>`)
KNOWN_REGISTRIES = {
    "docker": "binderapi.registry.docker:DockerRegistry",
    "DockerRegistry": "binderapi.registry.docker:DockerRegistry",
}


def make_image_store(settings: Settings, http: httpx.AsyncClient,
                     local: Callable[[], ImageStore] | None = None) -> ImageStore:
    """The store the settings ask for, behind :class:`RememberedImages` unless
    ``DockerRegistry.exists_cache_seconds`` is 0.

    ``use_registry: false`` asks the build backend's engine, through ``local()`` (the backend
    kind's store; by default the kind ``build_class`` names: see :mod:`binderapi.backends`). Otherwise ``BinderHub.registry_class`` is instantiated as
    ``cls(settings.DockerRegistry, http, image_prefix=BinderHub.image_prefix)``, so a class given by
    import path must accept those arguments.
    """
    store = _make_store(settings, http, local)
    seconds = settings.DockerRegistry.exists_cache_seconds
    return RememberedImages(store, seconds) if seconds > 0 else store


def _make_store(settings: Settings, http: httpx.AsyncClient, local: Callable[[], ImageStore] | None) -> ImageStore:
    binderhub = settings.BinderHub
    registry = settings.DockerRegistry
    if not binderhub.use_registry:
        return local() if local is not None else local_image_store(settings)
    try:
        cls = resolve(binderhub.registry_class, KNOWN_REGISTRIES, "registry class")
    except ImportError as e:
        raise ValueError(f"BinderHub.registry_class: {e}") from None
    return cls(registry, http, image_prefix=binderhub.image_prefix)


__all__ = ["KNOWN_REGISTRIES", "DockerRegistry", "ImageStore", "RememberedImages", "make_image_store"]
