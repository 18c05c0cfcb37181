"""The layering of STYLE.md, checked on the source: the core imports no adapter, and the
heavy outer dependencies are imported only where they are used."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "src" / "stepline"


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


@pytest.mark.parametrize("path", modules("core"), ids=lambda p: p.name)
def test_core_imports_no_adapter_or_shell(path: Path) -> None:
    forbidden = (
        "stepline.stores",
        "stepline.dispatchers",
        "stepline.engine",
        "stepline.notifiers",
        "stepline.cli",
        "stepline.api",
        "stepline.service",
        "sqlalchemy",
        "fastapi",
        "celery",
        "httpx",
    )
    bad = {name for name in imports_of(path) if name.startswith(forbidden)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize(
    ("dependency", "allowed"),
    [("fastapi", ("api",)), ("celery", ("dispatchers/celery", "worker")), ("typer", ("cli",))],
)
def test_outer_dependencies_stay_in_their_layer(dependency: str, allowed: tuple[str, ...]) -> None:
    users = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(name.split(".")[0] == dependency for name in imports_of(path))
    ]
    assert all(u.startswith(allowed) for u in users), users


def test_stores_and_dispatchers_do_not_import_the_shells() -> None:
    for folder in ("stores", "dispatchers", "engine", "notifiers"):
        for path in modules(folder):
            bad = {n for n in imports_of(path) if n.startswith(("stepline.cli", "stepline.api"))}
            assert not bad, f"{path} imports {sorted(bad)}"


def test_the_engine_depends_on_the_ports_not_on_their_implementations() -> None:
    for folder in ("engine", "dispatchers"):
        for path in modules(folder):
            bad = {
                n
                for n in imports_of(path)
                if n.startswith(("stepline.stores.sqlalchemy", "stepline.stores.transaction"))
                or n.split(".")[0] == "sqlalchemy"
            }
            assert not bad, f"{path} imports {sorted(bad)}"
