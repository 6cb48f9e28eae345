"""Image and build names, byte-for-byte as BinderHub computes them.

Operators moving from BinderHub keep their registry cache only if a repo and ref map to the same
image name, so these functions follow BinderHub's scheme exactly (escapism with ``-`` as escape
character, a sha256 suffix, lower case).
"""

from __future__ import annotations

import hashlib
import re
import string

import escapism

_SLUG_SAFE = set(string.ascii_letters + string.digits)
MAX_IMAGE_NAME = 255
MAX_BUILD_NAME = 63


def safe_build_slug(slug: str, limit: int, hash_length: int = 6) -> str:
    """Escape a provider's build slug and make it unique with a hash of the original."""
    digest = hashlib.sha256(slug.encode("utf-8")).hexdigest()
    escaped = escapism.escape(slug, safe=_SLUG_SAFE, escape_char="-")
    return f"{escaped[: limit - hash_length - 1]}-{digest[:hash_length]}".lower()


def image_name(image_prefix: str, build_slug: str, ref: str) -> str:
    """``<image_prefix><safe slug>:<ref>``, the name a build is pushed under."""
    slug = safe_build_slug(build_slug, limit=MAX_IMAGE_NAME - len(image_prefix))
    return f"{image_prefix}{slug}:{ref}".replace("_", "-").lower()


def build_name(build_slug: str, ref: str, prefix: str = "build-", ref_length: int = 6) -> str:
    """A DNS-safe name (<= 63 characters), deterministic per repo and ref.

    It names the build pod or container, and that name is the lock that makes concurrent requests
    (even on other replicas) join one build.
    """
    slug = safe_build_slug(build_slug, limit=MAX_BUILD_NAME - len(prefix) - ref_length - 1)
    short_ref = safe_build_slug(ref, limit=ref_length, hash_length=2)
    return f"{prefix}{slug}-{short_ref[:ref_length]}".lower()


_DOCKER_HUB_NAME = re.compile(r"[a-z0-9]{4,40}/[a-z0-9._-]{2,255}")


def split_image_name(full_name: str) -> tuple[str, str]:
    """``registry/path/name:tag`` -> (``path/name``, ``tag``); a bare Docker Hub ``org/name`` keeps
    its org. The tag defaults to ``latest``."""
    name, sep, tag = full_name.rpartition(":")
    if not sep or "/" in tag:
        name, tag = full_name, "latest"
    if _DOCKER_HUB_NAME.fullmatch(name):
        return name, tag
    return "/".join(name.split("/")[1:]), tag


def repo_of_image(full_name: str) -> str:
    """The image without its tag: quotas count servers per repository, not per commit."""
    name, sep, tag = full_name.rpartition(":")
    return name if sep and "/" not in tag else full_name
