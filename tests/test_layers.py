"""The layering docs/architecture.md promises, checked on the source: nothing below ``services.py``
imports it (not even for type checking), and nothing outside ``backends/`` reaches inside a backend
kind's package except through the registry of kinds."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "binderapi"
#: the layers above services.py: the app, the command line, the worker processes and the routers build on it
ABOVE_SERVICES = {"app.py", "cli.py", "workers.py", "services.py", "__main__.py"}
KIND_PACKAGES = ("binderapi.backends.docker", "binderapi.backends.kubernetes")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved to absolute names."""
    package = ".".join(("binderapi", *path.relative_to(SRC).parent.parts))
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            module = ".".join(filter(None, (base, node.module)))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def modules(where: Path = SRC) -> list[Path]:
    return sorted(p for p in where.rglob("*.py") if "__pycache__" not in p.parts)


def test_nothing_below_services_imports_it():
    below = [p for p in modules() if p.relative_to(SRC).parts[0] != "routers"
             and str(p.relative_to(SRC)) not in ABOVE_SERVICES]
    offenders = [str(p.relative_to(SRC)) for p in below if "binderapi.services" in imported_modules(p)]
    assert not offenders, f"these modules import services.py, a layer above them: {offenders}"


def test_only_the_registry_of_kinds_reaches_into_a_kind():
    outside = [p for p in modules() if p.relative_to(SRC).parts[0] != "backends"]
    offenders = {str(p.relative_to(SRC)): sorted(m for m in imported_modules(p) if m.startswith(KIND_PACKAGES))
                 for p in outside}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_the_checks_can_fail():
    """The import reader sees both kinds of import, relative ones resolved."""
    assert "binderapi.services" in imported_modules(SRC / "app.py")
    assert any(m.startswith("binderapi.backends.docker") for m in imported_modules(SRC / "backends" / "__init__.py"))
