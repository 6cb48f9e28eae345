"""The repo2docker command line every backend runs (BinderHub's arguments, repo URL last)."""

from __future__ import annotations

import json
from typing import Any

from .base import BuildJob


def repo2docker_command(job: BuildJob, *, memory_limit: int = 0, extra_args: list[str] | None = None) -> list[str]:
    """The repo URL comes last so it can never be taken for an option; providers refuse URLs and
    refs starting with ``-``."""
    command = [
        "jupyter-repo2docker",
        f"--ref={job.ref}",
        f"--image={job.image_name}",
        "--no-clean",
        "--no-run",
        "--json-logs",
        "--user-name=jovyan",
        "--user-id=1000",
    ]
    if job.appendix:
        command += ["--appendix", job.appendix]
    if job.push:
        command.append("--push")
    if memory_limit:
        command += ["--build-memory-limit", str(memory_limit)]
    command += list(extra_args or [])
    command.append(job.repo_url)
    return command


def builder_environment(job: BuildJob, registry_credentials: dict[str, str], extra: dict[str, str]) -> dict[str, Any]:
    """Environment of the builder: credentials travel here, never on the command line or in logs."""
    env = dict(extra)
    if job.git_credentials:
        env["GIT_CREDENTIAL_ENV"] = job.git_credentials
    if registry_credentials:
        env["CONTAINER_ENGINE_REGISTRY_CREDENTIALS"] = json.dumps(registry_credentials)
    return env
