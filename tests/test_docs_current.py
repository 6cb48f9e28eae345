"""The documentation says what the code does: generated references are current, links lead
somewhere, and the README's route table matches the app's routes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.routing import Match

from binderapi.app import create_app
from binderapi.settings.docs import END, START, render_readme
from binderapi.settings.dump import env_example
from fixtures.server import make_settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").glob("*.md")])
REGENERATE = "run `python -m binderapi.settings.docs` from the repository root and commit the result"

# [text](target) and [text]: target, outside code; a bare #anchor is a link into the same file
INLINE_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)
CODE_BLOCK = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)


def test_readme_configuration_reference_is_current():
    readme = README.read_text()
    assert START in readme and END in readme, "README.md lost the configuration reference markers"
    assert render_readme(readme) == readme, f"README.md's configuration reference is out of date: {REGENERATE}"


def test_env_example_is_current():
    assert (ROOT / ".env.example").read_text() == env_example(), f".env.example is out of date: {REGENERATE}"


def relative_links(path: Path) -> list[str]:
    text = CODE.sub("", path.read_text())
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [t for t in targets if not EXTERNAL.match(t)]


def test_link_extraction_finds_relative_links_only(tmp_path):
    """The link check below would pass vacuously if it found nothing: prove what it sees."""
    sample = tmp_path / "sample.md"
    sample.write_text('See [a](docs/a.md#part), [b](https://example.org/x), [c](#anchor), [d](../e.md "title"),\n'
                      "`[not](a-link.md)` and\n[ref]: docs/f.md\n")
    assert relative_links(sample) == ["docs/a.md#part", "#anchor", "../e.md", "docs/f.md"]


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", CODE_BLOCK.sub("", markdown), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def test_heading_anchors_follow_github():
    text = "# The `/build` event stream\n## Auth mode: tokens and browser logins\n## x\n## x\n```\n# not a heading\n```\n"
    assert heading_anchors(text) == {"the-build-event-stream", "auth-mode-tokens-and-browser-logins", "x", "x-1"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(doc):
    missing = []
    for target in relative_links(doc):
        path, _, anchor = target.partition("#")
        path = path.split("?", 1)[0]
        file = doc.parent / path if path else doc
        if not file.exists():
            missing.append(target)
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text()):
            missing.append(target + " (no such heading)")
    assert not missing, f"{doc.relative_to(ROOT)} links to files or headings that do not exist: {missing}"


def readme_routes() -> list[tuple[str, str]]:
    """(method, path) pairs from the first column of the README's route table, e.g.
    ``GET|HEAD /health`` -> GET /health and HEAD /health; a path without a method means GET, and a
    query string is dropped."""
    section = README.read_text().split("## Using the API", 1)[1].split("\n## ", 1)[0]
    routes = []
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        first_cell = re.split(r"(?<!\\)\|", row)[1]
        for item in re.findall(r"`([^`]+)`", first_cell):
            *methods, path = item.replace("\\|", "|").split()
            path = path.split("?", 1)[0]  # `GET /oauth_login?next=`: the query is not part of the route
            for method in (methods[0].split("|") if methods else ["GET"]):
                routes.append((method, path))
    return routes


def sample_path(template: str) -> str:
    """A concrete path for a documented template: ``<spec>`` gets slashes, as real specs do."""
    return re.sub(r"<(\w+)>", lambda m: "org/repo/HEAD" if m.group(1) == "spec" else "gh", template)


def route_exists(app, method: str, path: str) -> bool:
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}
    return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)


def test_readme_route_table_is_parsed():
    routes = readme_routes()
    assert ("GET", "/build/<prefix>/<spec>") in routes
    assert ("HEAD", "/health") in routes
    assert len(routes) >= 7


@pytest.mark.parametrize("base_url", ["/", "/binder/"])
def test_every_route_in_the_readme_exists(base_url):
    """Under any base_url, as the README says; and a made-up route is not found (so the check can fail)."""
    app = create_app(make_settings(build_class="docker", use_registry=False, base_url=base_url))
    missing = [f"{m} {p}" for m, p in readme_routes() if not route_exists(app, m, base_url + sample_path(p).lstrip("/"))]
    assert not missing, f"README.md's API table names routes the app does not have: {missing}"
    assert not route_exists(app, "GET", base_url + "no-such-route")
    assert not route_exists(app, "POST", base_url + "health")


def test_every_public_route_is_in_the_readme():
    """New routes get a line in the table: every path in the OpenAPI schema is documented."""
    app = create_app(make_settings(build_class="docker", use_registry=False))
    documented = {(m, re.sub(r"<(\w+)>", r"{\1}", p)) for m, p in readme_routes()}
    undocumented = [f"{method.upper()} {path}" for path, operations in app.openapi()["paths"].items()
                    for method in operations if (method.upper(), path) not in documented]
    assert not undocumented, f"routes missing from README.md's API table: {undocumented}"


def test_every_path_parameter_is_documented():
    """Each ``{name}`` of a path has its parameter in the schema, with a description: ``spec`` of
    ``/build`` is read from the raw path, not taken as an argument, and must stay documented."""
    schema = create_app(make_settings(build_class="docker", use_registry=False)).openapi()
    missing = [f"{method.upper()} {path}: {name}" for path, operations in schema["paths"].items()
               for method, operation in operations.items() for name in re.findall(r"\{(\w+)\}", path)
               if not any(p["in"] == "path" and p["name"] == name and p.get("required") and p.get("description")
                          for p in operation.get("parameters", []))]
    assert not missing, f"path parameters missing from the OpenAPI schema: {missing}"
    assert "/build/{prefix}/{spec}" in schema["paths"]  # so the check above saw it


# `tests/x.py::name`, `test_x.py::name`, `routers/build.py::frames`, `builds.py::Class.method`
CODE_REFERENCE = re.compile(r"`((?:[\w.-]+/)*[\w.-]+\.py)(?:::([\w.]+))?`")
NOT_OURS = {"binderhub_config.py"}  # BinderHub's config file, named for contrast


def code_references(markdown: str) -> list[tuple[str, str]]:
    return [(path, symbol) for path, symbol in CODE_REFERENCE.findall(markdown) if path not in NOT_OURS]


def reference_problem(path: str, symbol: str) -> str | None:
    """Why a `file.py::symbol` reference does not resolve: test files live in tests/, code in
    src/binderapi/; each dotted part of the symbol must be defined (def, async def or class)."""
    base = ROOT if path.startswith("tests/") else ROOT / "tests" if path.startswith("test_") else ROOT / "src" / "binderapi"
    file = base / path
    if not file.is_file():
        return f"{path}: no such file"
    source = file.read_text()
    for part in filter(None, symbol.split(".")):
        if not re.search(rf"^\s*(?:async\s+def|def|class)\s+{re.escape(part)}\b", source, re.MULTILINE):
            return f"{path}::{symbol}: {part} is not defined there"
    return None


def test_code_reference_check_can_fail():
    assert reference_problem("builds.py", "BuildManager._follow") is None
    assert reference_problem("test_events.py", "test_encoding_drops_unset_fields") is None
    assert reference_problem("tests/fixtures/server.py", "read_events") is None
    assert reference_problem("builds.py", "BuildManager.no_such_method") is not None
    assert reference_problem("test_events.py", "test_that_was_renamed") is not None
    assert reference_problem("no_such_module.py", "") is not None


def test_the_comparison_cites_code_and_tests_that_exist():
    """docs/compared-to-binderhub.md backs each claim with code and tests: renaming or deleting
    one of them must update the claim too."""
    references = code_references((ROOT / "docs" / "compared-to-binderhub.md").read_text())
    assert len(references) > 50
    problems = [p for p in (reference_problem(path, symbol) for path, symbol in references) if p]
    assert not problems, "docs/compared-to-binderhub.md cites code or tests that do not exist:\n" + "\n".join(problems)


def test_the_security_page_cites_code_and_tests_that_exist():
    """docs/security.md names the test behind each defence: renaming or deleting one must update
    the page, and a defence whose test is gone shows up here."""
    text = (ROOT / "docs" / "security.md").read_text()
    references = code_references(text)
    assert len(references) > 60
    problems = [p for p in (reference_problem(path, symbol) for path, symbol in references) if p]
    assert not problems, "docs/security.md cites code or tests that do not exist:\n" + "\n".join(problems)


def test_the_architecture_page_cites_code_that_exists():
    """docs/architecture.md walks a request through named modules and functions: a rename or a
    move must update the walk-through."""
    references = code_references((ROOT / "docs" / "architecture.md").read_text())
    assert len(references) > 20
    problems = [p for p in (reference_problem(path, symbol) for path, symbol in references) if p]
    assert not problems, "docs/architecture.md cites code that does not exist:\n" + "\n".join(problems)



def test_the_api_page_cites_code_and_tests_that_exist():
    """docs/api.md points at the code deciding each behaviour and the tests proving it."""
    references = code_references((ROOT / "docs" / "api.md").read_text())
    assert len(references) > 20
    problems = [p for p in (reference_problem(path, symbol) for path, symbol in references) if p]
    assert not problems, "docs/api.md cites code or tests that do not exist:\n" + "\n".join(problems)
