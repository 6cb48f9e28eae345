"""Confining upstream API paths: strict names at parse time, one quoted segment per component.

A provider puts parts of the user's spec into API URLs (``/repos/{owner}/{repo}/commits/{ref}``).
Were a ``../`` let through, the client would normalise it away and the request, carrying the
operator's token, would reach another path (``/repos/<victim>/<private>/...``): an oracle for private
repositories. Two layers stop that:

* :func:`check_git_ref` refuses refs git itself refuses (``..``, ``\\``, ``?``, control characters ...)
  and the ``%`` of a second URL encoding, with a message naming the spec;
* :func:`segments` quotes every component as its own path segment and refuses the dot segments a
  client would resolve, so that even a case the patterns miss cannot leave its place in the path.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from ..errors import SpecError

#: what ``git check-ref-format`` refuses, plus ``%`` (the router already decoded the spec once) and
#: ``#`` (a fragment); a 40-hex SHA, ``HEAD`` and branch names like ``feature/x`` all pass
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\%#]|\.\.|@\{|//|/\.|\.lock(/|$)|^[./]|[./]$|^@$")
MAX_REF_LENGTH = 255


def check_git_ref(ref: str, spec: str, provider: str) -> str:
    """``ref`` if it is a valid git ref name (or SHA), else :class:`SpecError`."""
    if len(ref) > MAX_REF_LENGTH or _BAD_REF.search(ref):
        raise SpecError(f'"{ref[:100]}" is not a valid {provider} ref (in "{spec[:200]}"): git ref names '
                        'may not contain "..", "\\", "?", "#", "%", spaces or control characters.')
    return ref


def segments(value: str, *, split: bool = False) -> str:
    """``value`` as quoted path segments: one segment, or with ``split`` one per ``/``-separated part
    (a ref like ``feature/x``). Empty, ``.`` and ``..`` segments are refused: the parsers refuse
    them first, so this is the backstop for a case they miss."""
    parts = value.split("/") if split else [value]
    for part in parts:
        if part in ("", ".", ".."):
            raise SpecError(f'"{value[:200]}" cannot be part of an upstream API path.')
    return "/".join(quote(part, safe="") for part in parts)
