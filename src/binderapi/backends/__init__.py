"""The registry of build backend kinds: ``build_class: docker`` or ``kubernetes`` (or a registered
name, or an import path) picks one :class:`BackendKind`, and everything specific to it comes from
there (see docs/architecture.md, "Where to add a backend kind").

Each kind lives in its own package (``backends/docker/``, ``backends/kubernetes/``) exporting one
``KIND``; adding a kind is one package plus one :func:`register_kind` line. Nothing outside
``backends/`` imports from inside those packages: it goes through this registry.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from .._importing import import_object
from . import docker, kubernetes
from .kind import ActiveKind, BackendKind, load

if TYPE_CHECKING:
    from ..settings import Settings

#: registered kinds by name; add one with :func:`register_kind`
KINDS: dict[str, BackendKind] = {}

#: ``launch_quota_class`` values meaning "no limits", whatever the kind
NO_QUOTA = {"none": "binderapi.quota:LaunchQuota", "LaunchQuota": "binderapi.quota:LaunchQuota"}


def register_kind(kind: BackendKind) -> BackendKind:
    """Make ``kind`` selectable by its names in ``build_class`` (a later kind of the same name
    replaces the earlier one)."""
    KINDS[kind.name] = kind
    return kind


register_kind(docker.KIND)
register_kind(kubernetes.KIND)


def _lookup(ref: str, names: dict[str, Any]) -> Any:
    """``ref`` as a known name, BinderHub's dotted names (``binderhub.build.KubernetesBuildExecutor``)
    included."""
    if ref in names:
        return names[ref]
    if ref.startswith("binderhub."):
        return names.get(ref.rsplit(".", 1)[-1])
    return None


def _known_builds() -> dict[str, BackendKind]:
    return {name: kind for kind in KINDS.values() for name in kind.names}


def find_kind(build_class: str) -> BackendKind | None:
    """The registered kind ``build_class`` names, without importing anything (``None`` for an
    import path or an unknown name)."""
    return _lookup(build_class, _known_builds())


def open_kind(settings: Settings) -> ActiveKind:
    """The kind ``BinderHub.build_class`` selects, with its engine client made. Raises
    ``ImportError`` with a message naming the choices when it selects nothing usable.

    An import path may name a :class:`BackendKind` or a build backend class; a class belongs to
    the registered kind named by its ``kind`` attribute (it reads that kind's settings sections).
    """
    ref = settings.BinderHub.build_class
    kind = find_kind(ref)
    if kind is not None:
        return kind.open(settings)
    known = ", ".join(sorted(n for n in _known_builds() if "." not in n))
    if "." not in ref and ":" not in ref:
        raise ImportError(f"unknown build backend {ref!r}; use one of {known} or a dotted import path")
    target = import_object(ref)
    if isinstance(target, BackendKind):
        return target.open(settings)
    if not inspect.isclass(target):
        raise ImportError(f"{ref!r} is neither a build backend class nor a BackendKind")
    kind = KINDS.get(getattr(target, "kind", ""))
    if kind is None:
        raise ImportError(
            f"{ref!r} has kind {getattr(target, 'kind', '')!r}, which is not a registered backend kind "
            f"({', '.join(sorted(KINDS))}): set its `kind` class attribute to one of them, or register "
            "its own with binderapi.backends.register_kind()")
    return kind.open(settings, target)


def launch_quota_class(ref: str) -> Any:
    """The class ``BinderHub.launch_quota_class`` names: ``none``, a kind's quota (by the kind's
    name or the class name), or an import path."""
    known = {**NO_QUOTA, **{name: kind.launch_quota or NO_QUOTA["none"] for kind in KINDS.values()
                            for name in kind.quota_names}}
    target = _lookup(ref, known)
    if target is not None:
        return load(target)
    if "." in ref or ":" in ref:
        return import_object(ref)
    raise ImportError(f"unknown launch quota {ref!r}; use one of {', '.join(sorted(known))} or a dotted import path")


def local_image_store(settings: Settings) -> Any:
    """The ``use_registry: false`` store of the kind ``build_class`` names (the Docker engine's for
    an import path, as before), with an engine client of its own: for a store made outside
    :class:`~binderapi.services.Services`, which passes its active kind's instead."""
    kind = find_kind(settings.BinderHub.build_class) or KINDS["docker"]
    return kind.image_store(settings)


def pair_defaults(binderhub: dict[str, Any]) -> None:
    """Left unset, ``build_cleaner_class`` and ``launch_quota_class`` follow ``build_class`` when it
    names a registered kind (their model defaults are Kubernetes', as in BinderHub)."""
    kind = find_kind(binderhub.get("build_class", "kubernetes"))
    if kind is not None:
        binderhub.setdefault("build_cleaner_class", kind.name)
        binderhub.setdefault("launch_quota_class", kind.name)


__all__ = ["KINDS", "ActiveKind", "BackendKind", "find_kind", "launch_quota_class", "local_image_store", "open_kind",
           "pair_defaults", "register_kind"]
