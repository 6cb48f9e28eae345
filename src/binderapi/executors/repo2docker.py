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


def git_config_environment(job: BuildJob, extra: dict[str, str]) -> dict[str, str]:
    """``job.git_config`` as git's environment configuration (``GIT_CONFIG_COUNT``, git >= 2.31),
    after any entries ``extra`` (the operator's ``extra_envs``) already holds, which it cannot
    override: git applies later entries last."""
    if not job.git_config:
        return {}
    try:
        first = int(extra.get("GIT_CONFIG_COUNT", "0"))
    except ValueError:
        first = 0
    env = {"GIT_CONFIG_COUNT": str(first + len(job.git_config))}
    for index, (key, value) in enumerate(job.git_config, start=first):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def builder_environment(job: BuildJob, registry_credentials: dict[str, str], extra: dict[str, str]) -> dict[str, Any]:
    """Environment of the builder: credentials travel here, never on the command line or in logs."""
    env = dict(extra)
    env.update(git_config_environment(job, extra))
    if job.git_credentials:
        env["GIT_CREDENTIAL_ENV"] = job.git_credentials
    if registry_credentials:
        env["CONTAINER_ENGINE_REGISTRY_CREDENTIALS"] = json.dumps(registry_credentials)
    return env
