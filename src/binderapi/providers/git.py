"""Any git server (``git``): ``git/<url-escaped repository URL>/<ref>``, resolved by ``git ls-remote``.

The URL comes from the user, so it is treated as hostile: no argument injection (nothing may start
with ``-``, and ``--`` precedes the URL), only the allowed schemes (``file``, ``ext::`` and ``fd::``
never), no control characters, and its host must not resolve into ``denied_networks``. git itself
is confined too: ``GIT_ALLOW_PROTOCOL``, no prompts, no HTTP redirects (which would bypass the host
check), no user or system configuration, HTTP connections pinned to the address checked
(``http.curloptResolve``), its output and its memory bounded. A 40-hex ref needs no resolution, but
the repository must still pass the check and exist (one cached ``ls-remote`` of ``HEAD``) before a
build is queued for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

from ..errors import SpecError, UpstreamError
from ..settings.models import NEVER_ALLOWED_GIT_PROTOCOLS
from ._cache import Resolution
from ._net import Pin, check_url, denied_networks, redact
from .base import RepoProvider, is_sha1

if TYPE_CHECKING:
    from ..settings import models

log = logging.getLogger(__name__)

#: ``user@host:path``, git's scp-like syntax, rewritten to ``ssh://user@host/path`` as BinderHub does
GIT_SSH_PATTERN = re.compile(r"([\w\-]+@[\w\-\.]+):(.+)", re.IGNORECASE)
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: stderr of ``git ls-remote`` meaning "no such repository (or not public)", not "server down"
_NOT_FOUND = re.compile(
    r"not found|does not exist|not exported|no such repository|does not appear to be a git repository|"
    r"authentication failed|could not read username|terminal prompts disabled|access denied|"
    r"repository .* not found|HTTP 40[134]",
    re.IGNORECASE,
)


def normalize_url(url: str) -> str:
    """``user@host:path`` -> ``ssh://user@host/path``; anything else unchanged."""
    match = GIT_SSH_PATTERN.match(url)
    if match and not _SCHEME.match(url):
        user_host, path = match.groups()
        return f"ssh://{user_host}/{path}"
    return url


def validate_url(url: str, allowed_protocols: list[str]) -> str:
    """The URL's scheme, or :class:`SpecError` if git must not be given this URL."""
    if _CONTROL.search(url):
        raise SpecError("The git repository URL contains control characters.")
    if url.startswith("-"):
        raise SpecError(f'"{url}" is not a git repository URL (it starts with "-").')
    match = _SCHEME.match(url)
    # "transport::address" (ext::, fd::, any remote helper) has no "://" right after the scheme
    scheme = match.group(1).lower() if match else urlsplit(url).scheme.lower() or "(none)"
    if not match or scheme in NEVER_ALLOWED_GIT_PROTOCOLS or scheme not in allowed_protocols:
        raise SpecError(
            f"Unsupported git url {redact(url)}, protocol {scheme} not in {', '.join(allowed_protocols)}")
    parts = urlsplit(url)
    if not parts.hostname:
        raise SpecError(f"The git repository URL {redact(url)} has no host.")
    if parts.password is not None:
        # the spec is echoed in events, logs and metric labels: a token in it would leak everywhere
        raise SpecError("Credentials do not belong in the repository URL; an operator can set "
                        "GitRepoProvider.git_credentials for private repositories.")
    if parts.hostname.startswith("-") or (parts.username or "").startswith("-"):
        raise SpecError(f"The git repository URL {redact(url)} has a host or user starting with \"-\".")
    return scheme


def pick_ref(ls_remote: str, ref: str) -> str | None:
    """The commit ``ref`` names in ``git ls-remote`` output, most specific match first.

    ``ls-remote <pattern>`` matches refs *ending* in the pattern, so ``x`` also matches
    ``refs/heads/feature/x``; taking the first line (as BinderHub does) can pick the wrong branch.
    Annotated tags resolve to the commit they point to (``^{}``), like GitHub's API does.
    """
    refs: dict[str, str] = {}
    for line in ls_remote.splitlines():
        sha, _, name = line.partition("\t")
        if is_sha1(sha) and name:
            refs.setdefault(name, sha)
    candidates = [ref] if ref == "HEAD" or ref.startswith("refs/") else []
    candidates += [f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/{ref}"]
    for name in candidates:
        if name in refs:
            return refs.get(f"{name}^{{}}", refs[name])
    tails = sorted(name for name in refs if name.endswith("/" + ref))
    return refs.get(f"{tails[0]}^{{}}", refs[tails[0]]) if tails else None


class GitRepoProvider(RepoProvider):
    """``git/<url-escaped URL>/<ref>``; a 40-hex ref is used as is once the repository is known to
    exist."""

    name = "Git"
    config_section = "GitRepoProvider"
    config: models.GitRepoProvider
    display_config: ClassVar[dict[str, Any]] = {
        "displayName": "Git repository",
        "id": "git",
        "spec": {"validateRegex": r"[^/]+/.+"},
        "repo": {
            "label": "Arbitrary git repository URL (http://git.example.com/repo)",
            "placeholder": "example: https://git.example.com/repo",
            "urlEncode": True,
        },
        "ref": {"enabled": True, "default": "HEAD"},
    }

    def __init__(self, spec: str, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.escaped_url, _, ref = spec.partition("/")
        self.repo = normalize_url(unquote(self.escaped_url))
        self.scheme = validate_url(self.repo, self.config.allowed_protocols)
        self.unresolved_ref = unquote(ref)
        if not self.unresolved_ref:
            raise SpecError(
                f'Spec is not of the form "<url-escaped repository URL>/<ref>": a ref is required, e.g. "{spec.rstrip("/")}/HEAD".')
        if _CONTROL.search(self.unresolved_ref) or self.unresolved_ref.startswith("-"):
            raise SpecError(f'"{redact(self.unresolved_ref)}" is not a valid git ref.')
        self.resolved_ref: str | None = None

    async def get_resolved_ref(self) -> str | None:
        if self.resolved_ref is None:
            cache = self.context.cache("git", self.config)
            if is_sha1(self.unresolved_ref):
                # nothing to resolve, but a build is only worth queuing for a repository that exists
                exists = await cache.get_or_compute((self.repo, None), lambda stale: self._exists())
                self.resolved_ref = self.unresolved_ref if exists else None
            else:
                key = (self.repo, self.unresolved_ref)
                self.resolved_ref = await cache.get_or_compute(key, lambda stale: self._ls_remote())
        return self.resolved_ref

    async def _exists(self) -> Resolution:
        """The repository answers ``ls-remote`` (an empty or HEAD-less one too)."""
        listing = await self._list("HEAD")
        if listing is None:
            return Resolution(None, self.config.cache_404_ttl)
        return Resolution(True, self.config.cache_ttl)

    async def _ls_remote(self) -> Resolution:
        listing = await self._list(self.unresolved_ref)
        sha = pick_ref(listing, self.unresolved_ref) if listing is not None else None
        if sha is None:
            return Resolution(None, self.config.cache_404_ttl)
        return Resolution(sha, self.config.cache_ttl)

    async def _list(self, ref: str) -> str | None:
        """``git ls-remote`` of ``ref`` (and the commit it peels to, for annotated tags), after the
        host passed the check and pinned to the address checked; ``None`` if there is no such
        repository (or it is private)."""
        host = urlsplit(self.repo).hostname
        pin = await check_url(self.repo, denied_networks(self.config.denied_networks), "git server")
        code, stdout, stderr = await self._run_git(*_config_args(self.clone_git_config(pin)),
                                                   "ls-remote", "--", self.repo, ref, f"{ref}^{{}}")
        if code != 0:
            message = redact(stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {code}")
            if _NOT_FOUND.search(stderr):
                log.info("git ls-remote: %s not found: %s", redact(self.repo), message)
                return None
            if "out of memory" in stderr.lower():
                raise UpstreamError(
                    f"The git server {host} sent a list of refs larger than this service reads "
                    f"(GitRepoProvider.ls_remote_memory_limit is {self.config.ls_remote_memory_limit // 1024**2} MiB).")
            raise UpstreamError(f"The git server {host} is unreachable or failing: {message.removeprefix('fatal: ')}")
        return stdout

    def clone_git_config(self, pin: Pin | None) -> list[tuple[str, str]]:
        """Never follow an HTTP redirect (its target was not checked)."""
        return [("http.followRedirects", "false"), *super().clone_git_config(pin)]

    def _git_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_ALLOW_PROTOCOL": ":".join(self.config.allowed_protocols),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=10",
        }

    async def _run_git(self, *args: str) -> tuple[int, str, str]:
        """Run git, bounded by ``ls_remote_timeout``, ``ls_remote_max_output`` bytes of output and
        ``ls_remote_memory_limit`` of address space; past the first two its whole process group (git
        and its remote helper) is killed. No shell sees the arguments: ``sh`` only sets the limit
        and execs git with them as they are."""
        command = ["git", "-c", "http.followRedirects=false", *args]
        if self.config.ls_remote_memory_limit:
            # the limit is set before git starts, so the remote helper it forks inherits it
            kib = str(max(self.config.ls_remote_memory_limit // 1024, 1))
            command = ["/bin/sh", "-c", 'ulimit -v "$0" && exec "$@"', kib, *command]
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=self._git_env(), start_new_session=True,
        )
        host = urlsplit(self.repo).hostname
        readers = (asyncio.ensure_future(_read_capped(process.stdout, self.config.ls_remote_max_output)),
                   asyncio.ensure_future(_read_capped(process.stderr, 64 * 1024, truncate=True)))
        try:
            async with asyncio.timeout(self.config.ls_remote_timeout):
                stdout, stderr = await asyncio.gather(*readers)
                await process.wait()
        except (TimeoutError, asyncio.CancelledError, _TooMuchOutput) as e:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await _reap(process)
            if isinstance(e, asyncio.CancelledError):
                raise
            if isinstance(e, _TooMuchOutput):
                raise UpstreamError(
                    f"The git server {host} sent more than {self.config.ls_remote_max_output // 1024} KiB of refs, "
                    "the most this service reads (GitRepoProvider.ls_remote_max_output).") from None
            raise UpstreamError(
                f"The git server {host} is unreachable: no answer within {self.config.ls_remote_timeout:g} seconds.") from None
        assert process.returncode is not None
        return process.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")

    async def get_resolved_spec(self) -> str:
        return f"{self.escaped_url}/{await self._require_ref()}"

    def get_repo_url(self) -> str:
        return self.repo

    async def get_resolved_ref_url(self) -> str:
        # a commit URL cannot be built for an unknown kind of server
        return self.get_repo_url()

    def get_build_slug(self) -> str:
        return self.repo


class _TooMuchOutput(Exception):
    pass


async def _reap(process: asyncio.subprocess.Process, bound: float = 10.0) -> None:
    """Wait for a killed git to be gone. asyncio's ``wait()`` returns only once the process has
    exited *and* its pipes are closed, and a pipe left unread past the cap stays paused with data
    in it: without draining it, ``wait()`` never returns (seen as a /build stream hanging until its
    client gave up). The writers are dead, so what is left to drain is bounded."""

    async def drain(stream: asyncio.StreamReader | None) -> None:
        while stream is not None and await stream.read(65536):
            pass

    try:
        async with asyncio.timeout(bound):
            await asyncio.gather(drain(process.stdout), drain(process.stderr))
            await process.wait()
    except TimeoutError:
        log.warning("git (pid %d) did not go away within %g seconds of being killed", process.pid, bound)


async def _read_capped(stream: asyncio.StreamReader | None, limit: int, truncate: bool = False) -> bytes:
    """Everything ``stream`` gives until EOF; past ``limit`` bytes :class:`_TooMuchOutput`, or with
    ``truncate`` the first ``limit`` bytes (the rest is read and dropped)."""
    assert stream is not None
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(65536):
        if size + len(chunk) > limit:
            if not truncate:
                raise _TooMuchOutput
            chunk = chunk[:max(limit - size, 0)]
        size += len(chunk)
        chunks.append(chunk)
    return b"".join(chunks)


def _config_args(pairs: list[tuple[str, str]]) -> list[str]:
    return [arg for key, value in pairs for arg in ("-c", f"{key}={value}")]
