"""Services.start: a bad setting is one clear StartupError naming it, and whatever was built before
the failing step is closed (the shared HTTP client, the engine client, tasks).

In process, no infrastructure: the Docker kind's aiodocker client is made but never connects, and
the engine of the background case is a socket that does not exist. Clients are found the honest
way: every ``httpx.AsyncClient`` and ``aiodocker.Docker`` alive after the failed start that was not
alive before it (the failed start's frames, kept by the exception, hold what it built).
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import aiodocker
import httpx
import pytest

from binderapi.errors import StartupError
from binderapi.services import Services
from fixtures.server import make_settings

NOT_A_HOOK = "a string, not a function"


class WrongSignatureStore:
    """A ``registry_class`` that does not take the arguments binderapi passes."""

    def __init__(self, config: Any) -> None:
        pass


def clients() -> dict[int, Any]:
    return {id(o): o for o in gc.get_objects() if isinstance(o, (httpx.AsyncClient, aiodocker.Docker))}


def is_closed(client: Any) -> bool:
    return client.is_closed if isinstance(client, httpx.AsyncClient) else client.session.closed


BAD_SETTINGS = [
    pytest.param({"Launcher": {"pre_launch_hook": "no_such_module_for_binderapi.hook"}},
                 r"^Launcher\.pre_launch_hook: cannot import 'no_such_module_for_binderapi' for "
                 r"'no_such_module_for_binderapi\.hook'", id="hook-not-importable"),
    pytest.param({"Launcher": {"pre_launch_hook": f"{__name__}:NO_SUCH_HOOK"}},
                 rf"^Launcher\.pre_launch_hook: '{__name__}' has no attribute 'NO_SUCH_HOOK'$", id="hook-missing"),
    pytest.param({"Launcher": {"pre_launch_hook": f"{__name__}:NOT_A_HOOK"}},
                 rf"^Launcher\.pre_launch_hook: '{__name__}:NOT_A_HOOK' is a str, not a function$", id="hook-not-callable"),
    pytest.param({"BinderHub": {"build_class": "no_such_module_for_binderapi.Backend"}},
                 r"^BinderHub\.build_class: cannot import 'no_such_module_for_binderapi'", id="build-class"),
    pytest.param({"BinderHub": {"launch_quota_class": "no_such_module_for_binderapi.Quota"}},
                 r"^BinderHub\.launch_quota_class: cannot import 'no_such_module_for_binderapi'", id="quota-class"),
    pytest.param({"BinderHub": {"registry_class": "no_such_module_for_binderapi.Registry"}},
                 r"^BinderHub\.registry_class: cannot import 'no_such_module_for_binderapi'", id="registry-class"),
    pytest.param({"BinderHub": {"registry_class": f"{__name__}:WrongSignatureStore"}},
                 r"^BinderHub\.registry_class: WrongSignatureStore\.__init__\(\) got an unexpected keyword argument",
                 id="registry-class-signature"),
    pytest.param({"EventLog": {"path": "/no-such-dir-for-binderapi/events.jsonl"}},
                 r"^EventLog: \[Errno 2\] No such file or directory", id="event-log"),
    pytest.param({"DockerBuildExecutor": {"docker_host": "/no-such-dir-for-binderapi/docker.sock"}},
                 r"^The build backend \(docker\) is unreachable: .*builder_required: false", id="engine-unreachable"),
]


@pytest.mark.parametrize(("config", "message"), BAD_SETTINGS)
async def test_a_bad_setting_is_a_clear_start_up_error_and_leaks_nothing(config, message):
    config = {section: dict(options) for section, options in config.items()}
    binderhub = {"build_class": "docker", "launch_quota_class": "docker", "build_cleaner_class": "docker",
                 **config.pop("BinderHub", {})}
    settings = make_settings(config, **binderhub)
    before, tasks = clients(), asyncio.all_tasks()
    with pytest.raises(StartupError, match=message) as info:
        await Services.start(settings)
    made = [c for i, c in clients().items() if i not in before]
    assert any(isinstance(c, httpx.AsyncClient) for c in made), "the shared HTTP client (made first) was not found"
    if binderhub["build_class"] == "docker":  # the kind's engine client was made before the failing step
        assert any(isinstance(c, aiodocker.Docker) for c in made), "the engine client was not found"
    left_open = [c for c in made if not is_closed(c)]
    assert not left_open, f"left open after a failed start: {left_open}"
    assert asyncio.all_tasks() - tasks == set(), "tasks left running after a failed start"
    del info  # the failed start's frames, and what they hold
