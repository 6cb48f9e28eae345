"""The ``docker`` and ``hub`` markers are enforced (tests/fixtures/markers.py): a test using an
infrastructure fixture without its marker fails collection, and an unmarked test that talks to a
Docker engine fails. Each case runs a small test suite of its own through ``pytester``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent

INI = """
[pytest]
markers =
    docker: needs the Docker engine
    hub: needs JupyterHub
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""

#: stand-ins named like the real fixtures: the check goes by name, so nothing real needs to start
CONFTEST = """
import pytest

pytest_plugins = ["fixtures.markers"]


@pytest.fixture
def jupyterhub():
    return "a hub"


@pytest.fixture
def tiny_image():
    return "an image"


@pytest.fixture
def open_registry(tiny_image):
    return "a registry holding " + tiny_image
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    return pytester


def test_a_test_using_the_hub_without_its_markers_fails_collection(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_launch="""
        import pytest

        def test_unmarked(jupyterhub):
            pass

        @pytest.mark.hub
        def test_half_marked(jupyterhub):
            pass

        @pytest.mark.docker
        @pytest.mark.hub
        def test_marked(jupyterhub):
            pass

        def test_without_infrastructure():
            pass
    """)
    result = suite.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        "*ERROR collecting test_launch.py*",
        "*test_launch.py::test_unmarked uses fixture 'jupyterhub' without marker 'hub', 'docker': "
        "add @pytest.mark.docker, @pytest.mark.hub (to the test, or to the module's pytestmark)",
        "*test_launch.py::test_half_marked uses fixture 'jupyterhub' without marker 'docker': add @pytest.mark.docker *",
    ])
    assert "test_marked uses" not in result.stdout.str()


def test_a_fixture_needing_the_engine_through_another_is_caught(suite: pytest.Pytester) -> None:
    # names no module of the suite has: the whole suite runs in one process, where a second
    # "test_registry" would collide with the real one
    suite.makepyfile(test_pushes_unmarked="""
        def test_push(open_registry):
            pass
    """, test_pushes_marked="""
        import pytest

        pytestmark = pytest.mark.docker

        def test_push(open_registry):
            pass
    """)
    result = suite.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        "*test_pushes_unmarked.py::test_push uses fixture 'tiny_image' without marker 'docker'*",
        "*1 error*",
    ])
    assert "ERROR collecting test_pushes_marked.py" not in result.stdout.str()
    assert "test_pushes_marked.py::test_push" in result.stdout.str()


def test_marked_tests_collect_and_run(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_fine="""
        import pytest

        pytestmark = [pytest.mark.docker, pytest.mark.hub]

        def test_hub(jupyterhub, open_registry):
            assert jupyterhub == "a hub"
    """)
    suite.runpytest().assert_outcomes(passed=1)


def test_an_unmarked_test_talking_to_an_engine_fails(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine chosen by settings, not by fixture: an engine (a stand-in speaking the Engine API
    on a unix socket) answers an unmarked test, which fails even though it swallowed every error;
    the same test marked passes, and asking a socket where no engine listens is no violation."""
    suite.makepyfile(test_engine="""
        import contextlib
        import shutil
        import tempfile
        from pathlib import Path

        import aiodocker
        import pytest
        from aiohttp import web


        async def version(request):
            return web.json_response({"ApiVersion": "1.43", "Version": "stand-in"})


        @pytest.fixture
        async def engine():
            app = web.Application()
            app.router.add_get("/version", version)
            app.router.add_get("/v1.43/version", version)
            runner = web.AppRunner(app)
            await runner.setup()
            directory = Path(tempfile.mkdtemp(prefix="engine-"))  # a socket path must fit in 108 bytes
            await web.UnixSite(runner, str(directory / "docker.sock")).start()
            yield f"unix://{directory}/docker.sock"
            await runner.cleanup()
            shutil.rmtree(directory, ignore_errors=True)


        async def ask(url):
            with contextlib.suppress(Exception):
                async with aiodocker.Docker(url=url) as docker:
                    return await docker.version()


        async def test_unmarked(engine):
            assert (await ask(engine))["Version"] == "stand-in"


        @pytest.mark.docker
        async def test_marked(engine):
            assert (await ask(engine))["Version"] == "stand-in"


        async def test_no_engine_there(tmp_path):
            assert await ask(f"unix://{tmp_path}/nothing.sock") is None
    """)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(TESTS.parent / "src"),
                                                      os.environ.get("PYTHONPATH", "")]))
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*test_engine.py::test_unmarked talked to the Docker engine (GET version) without the docker marker: "
        "add @pytest.mark.docker*",
    ])
