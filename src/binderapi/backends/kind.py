"""What one kind of build backend brings: :class:`BackendKind`, and :class:`ActiveKind`, the kind
in use with its engine client, made once at start-up and shared by everything of that kind.

Generic code (:mod:`binderapi.builds`, :mod:`binderapi.quota`, :mod:`binderapi.registry`) knows
only the interfaces; ``services.py`` asks the active kind for the kind-specific objects.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._importing import import_object

if TYPE_CHECKING:
    from ..executors.base import BuildBackend
    from ..quota import LaunchQuota
    from ..registry import ImageStore
    from ..settings import Settings
    from ..supervisor import Supervisor

#: a health check as :class:`binderapi.health.HealthChecks` runs it
Check = Callable[[], Any]


def load(ref: Any) -> Any:
    """An object given as itself or as an import path (``package.module:Name``), imported only
    when used: kubernetes-asyncio takes a second to import, which a Docker set-up should not pay."""
    return import_object(ref) if isinstance(ref, str) else ref


@dataclass(frozen=True)
class BackendKind:
    """Everything specific to one kind of build backend (a Docker engine, a Kubernetes cluster).

    Objects are given as themselves or as import paths (see :func:`load`). Register a new kind
    with :func:`binderapi.backends.register_kind`; ``build_class: <name>`` then selects it.
    """

    #: the value of ``build_class`` (and of ``build_cleaner_class`` / ``launch_quota_class``)
    name: str
    #: the :class:`~binderapi.executors.base.BuildBackend` subclass, made as ``cls(settings)``, or
    #: ``cls(settings, engine)`` when the kind has an engine
    build_backend: Any
    #: settings sections: the build backend's (``log_tail_lines``, ``appendix``, ``push_secret``)
    #: and the cleaner's (``max_age``), as attribute names of :class:`~binderapi.settings.Settings`
    executor_section: str
    cleaner_section: str
    #: its :class:`~binderapi.quota.LaunchQuota` subclass, made as ``cls(settings, supervisor)``
    #: (plus ``engine=`` when the kind has an engine); ``None``: the generic one, without limits
    launch_quota: Any = None
    #: ``factory(settings)``: the engine or API client every part of this kind shares, closed
    #: (``await engine.close()``) after all of them; ``None`` when the parts need none
    engine: Any = None
    #: ``factory(settings, engine)``: the image store of ``use_registry: false`` (the local engine)
    local_images: Any = None
    #: other names ``build_class`` accepts for this kind (BinderHub's class names)
    aliases: tuple[str, ...] = ()
    #: ``checks(active)``: this kind's ``/health`` checks as ``(name, check)``; the default is
    #: BinderHub's ``Builder`` check, the build backend's own
    health_checks: Any = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every name of this kind in ``build_class``: its own, the aliases, the class name."""
        backend = self.build_backend
        class_name = backend.rsplit(":", 1)[-1].rsplit(".", 1)[-1] if isinstance(backend, str) else backend.__name__
        return (self.name, *self.aliases, class_name)

    @property
    def quota_names(self) -> tuple[str, ...]:
        """The names ``launch_quota_class`` accepts for this kind's quota."""
        quota = self.launch_quota
        if quota is None:
            return (self.name,)
        class_name = quota.rsplit(":", 1)[-1].rsplit(".", 1)[-1] if isinstance(quota, str) else quota.__name__
        return (self.name, class_name)

    @property
    def settings_sections(self) -> tuple[str, ...]:
        return (self.executor_section, self.cleaner_section)

    def image_store(self, settings: Settings, engine: Any = None) -> ImageStore:
        """The store of ``use_registry: false`` (the local engine), through ``engine`` if given."""
        if self.local_images is None:
            raise ValueError(f"BinderHub.use_registry: false is not supported by the {self.name} build backend")
        return load(self.local_images)(settings, engine)

    def open(self, settings: Settings, backend_class: type[BuildBackend] | None = None) -> ActiveKind:
        """This kind in use: its engine client made (once) now."""
        engine = load(self.engine)(settings) if self.engine is not None else None
        return ActiveKind(self, settings, engine, backend_class or load(self.build_backend))


@dataclass
class ActiveKind:
    """The kind in use: its settings sections, its engine client and the parts sharing it."""

    kind: BackendKind
    settings: Settings
    engine: Any
    backend_class: type[BuildBackend]

    @property
    def executor_settings(self) -> Any:
        return getattr(self.settings, self.kind.executor_section)

    @property
    def cleaner_settings(self) -> Any:
        return getattr(self.settings, self.kind.cleaner_section)

    def _shares_engine(self, cls: type, own: Any) -> bool:
        """A class of this kind (or a subclass) gets the shared engine; any other makes its own."""
        if self.engine is None or own is None:
            return False
        own = load(own)
        return inspect.isclass(own) and inspect.isclass(cls) and issubclass(cls, own)

    def build_backend(self) -> BuildBackend:
        cls = self.backend_class
        if self._shares_engine(cls, self.kind.build_backend):
            return cls(self.settings, self.engine)
        return cls(self.settings)

    def launch_quota(self, quota_class: type[LaunchQuota], supervisor: Supervisor) -> LaunchQuota:
        if self._shares_engine(quota_class, self.kind.launch_quota):
            return quota_class(self.settings, supervisor, engine=self.engine)  # type: ignore[call-arg]
        return quota_class(self.settings, supervisor)

    def local_images(self) -> ImageStore:
        """The store of ``use_registry: false``, through the shared engine client."""
        return self.kind.image_store(self.settings, self.engine)

    def health_checks(self, backend: BuildBackend) -> Iterable[tuple[str, Check]]:
        if self.kind.health_checks is not None:
            return load(self.kind.health_checks)(self, backend)
        return [("Builder", backend.check)]

    async def close(self) -> None:
        """Close the shared engine client, after every part using it."""
        if self.engine is not None:
            await self.engine.close()
