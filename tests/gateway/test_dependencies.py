"""Every third-party module the shipped code imports, even lazily, is a declared dependency.

The cloud credential sources and the bedrock kind import their libraries only when a
ProviderKey needs them, so no request in the test suite proves the image has them: a library
that only the test extra pulls in would pass every test and fail in a pod. This reads the
imports from the source and checks them against the distribution's declared requirements
(the runtime ones, plus the `operator` extra for the operator package).
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _normal(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def declared(extra: str | None) -> set[str]:
    """Distributions modelroute requires (with ``extra``), and what they require in turn."""
    out: set[str] = set()
    todo = []
    for req in requires("modelroute") or ():
        marker = req.split(";", 1)[1] if ";" in req else ""
        if "extra ==" in marker and (extra is None or f'"{extra}"' not in marker):
            continue
        m = _NAME.match(req)
        assert m
        todo.append(m.group(0))
    while todo:
        dist = _normal(todo.pop())
        if dist in out:
            continue
        out.add(dist)
        try:
            for req in requires(dist) or ():
                if "extra ==" not in req:
                    m = _NAME.match(req)
                    assert m
                    todo.append(m.group(0))
        except PackageNotFoundError:  # a platform-only requirement, not installed here
            continue
    return out


def imported_modules(package: Path) -> set[str]:
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
    return found


def undeclared(package: Path, extra: str | None) -> dict[str, list[str]]:
    have = declared(extra)
    dists = packages_distributions()
    own = {"modelroute_sidecar", "modelroute_operator"}
    missing: dict[str, list[str]] = {}
    for module in sorted(imported_modules(package) - own - set(sys.stdlib_module_names)):
        owners = [_normal(d) for d in dists.get(module, [])]
        if not any(d in have for d in owners):
            missing[module] = owners
    return missing


def test_the_sidecar_imports_only_its_runtime_dependencies() -> None:
    assert undeclared(ROOT / "sidecar" / "modelroute_sidecar", None) == {}


def test_the_operator_imports_only_its_runtime_dependencies_and_its_extra() -> None:
    assert undeclared(ROOT / "operator" / "modelroute_operator", "operator") == {}


def test_the_check_can_fail() -> None:
    # pyjwt is in the test extra only: a module importing it would not run in the image.
    assert "jwt" in imported_modules(ROOT / "tests" / "fakes")
    assert "jwt" in undeclared(ROOT / "tests" / "fakes", None)
