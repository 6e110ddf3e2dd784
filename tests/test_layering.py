"""The layering rule, checked on the source: services never import each other, core imports no service.

``core/`` is the one home of the contract, the settings, database access and the demand-response domain
(``core.dr``); the services (api, gateway, ingest, ocpp_server, dr_controller) meet on MQTT and in the
database; the simulators stand apart and may import only core. ``lishui/``, ``tests/`` and ``bench/``
compose everything and are not checked. Every import counts: at module level, inside functions, under
``if TYPE_CHECKING:``, relative ones (resolved; they cannot leave their top-level package), and
``importlib.import_module("...")`` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = frozenset({"api", "gateway", "ingest", "ocpp_server", "dr_controller"})
# What each checked package may import from this repository (third-party imports are always fine).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "core": frozenset({"core"}),
    "simulators": frozenset({"core", "simulators"}),
    **{service: frozenset({"core", service}) for service in SERVICES},
}
FIRST_PARTY = frozenset({*MAY_IMPORT, "lishui", "tests", "bench"})

# Known exceptions, file -> the exact modules it may still import across the line. Keep this short and
# remove an entry as soon as its reason is gone (a stale entry fails the test).
ALLOWED: dict[str, frozenset[str]] = {}


def imported_modules(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """Every module a source file imports, absolute and dotted, with its line.

    ``from a.b import c`` yields ``a.b.c`` (``c`` may be a submodule), relative imports are resolved
    against ``module`` (the file's dotted name; ``is_package`` for an ``__init__.py``).
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in {"import_module", "__import__"})
            )
        ):
            yield node.lineno, node.args[0].value


def violations(path: str, source: str, allowed: frozenset[str] = frozenset()) -> list[str]:
    """The imports in one file (``path`` relative to the repository root) that cross the layering line."""
    package = path.split("/", 1)[0]
    dotted = path.removesuffix(".py").replace("/", ".")
    is_package = dotted.endswith(".__init__")
    found = []
    for line, name in imported_modules(source, dotted.removesuffix(".__init__"), is_package):
        top = name.split(".", 1)[0]
        if top in FIRST_PARTY and top not in MAY_IMPORT[package] and name not in allowed:
            found.append(f"{path}:{line}: {package} imports {name}")
    return found


def checked_files() -> list[Path]:
    files = [p for package in MAY_IMPORT for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 50, "the scan found too few files: is ROOT right?"
    return files


def test_no_service_imports_another_and_core_imports_no_service() -> None:
    found = []
    for file in checked_files():
        rel = file.relative_to(ROOT).as_posix()
        found += violations(rel, file.read_text(encoding="utf-8"), ALLOWED.get(rel, frozenset()))
    assert not found, "layering violations:\n" + "\n".join(found)


def test_every_allowed_exception_is_still_needed() -> None:
    for rel, modules in ALLOWED.items():
        source = (ROOT / rel).read_text(encoding="utf-8")
        used = {name for _, name in imported_modules(source, rel.removesuffix(".py").replace("/", "."))}
        assert modules <= used, f"{rel} no longer imports {sorted(modules - used)}: drop it from ALLOWED"


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("api/routes_dr.py", "from dr_controller import fleet\n"),
        ("api/routes_dr.py", "import dr_controller.fleet as f\n"),
        ("api/routes_dr.py", "def f():\n    from ocpp_server.registry import x\n"),
        ("api/routes_dr.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import gateway\n"),
        ("api/routes_dr.py", "import importlib\nm = importlib.import_module('ingest.writer')\n"),
        ("core/dr/fleet.py", "from dr_controller.allocation import Target\n"),
        ("core/db.py", "from lishui import cli\n"),
        ("simulators/ocpp/pile.py", "from ocpp_server import rpc\n"),
        ("api/routes_charging.py", "from ocpp_server import registry\n"),
    ],
)
def test_a_crossing_import_is_caught(path: str, source: str) -> None:
    assert violations(path, source, ALLOWED.get(path, frozenset()))


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("api/routes_dr.py", "from core.dr.fleet import load_devices\nimport fastapi\n"),
        ("api/routes_dr.py", "from . import models\nfrom .queries import x\n"),
        ("dr_controller/__init__.py", "from . import allocation\n"),
        ("core/dr/fleet.py", "from .. import db\nfrom ..dr.resources import Direction\n"),
        ("simulators/ocpp/pile.py", "from core.payloads import Command\nfrom simulators.ocpp import base\n"),
        ("api/routes_charging.py", "from core.charging import registry, sessions\n"),
    ],
)
def test_a_permitted_import_passes(path: str, source: str) -> None:
    assert violations(path, source, ALLOWED.get(path, frozenset())) == []
