"""`stepline --help` and the import of the CLI load none of the heavy dependencies: every
command pays the CLI's start-up, so SQLAlchemy, pydantic-settings, structlog, httpx and
rich's tables are imported where a command needs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
HEAVY = ("sqlalchemy", "pydantic_settings", "structlog", "httpx", "rich.table", "yaml", "alembic")

_PROBE = """
import json, sys
sys.argv = ["stepline", *sys.argv[1:]]
from stepline.cli.app import main
code = 0
if len(sys.argv) > 1:
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}))
"""


def _probe(*args: str) -> tuple[str, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE % (HEAVY,), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    *shown, last = done.stdout.strip().splitlines()
    return "\n".join(shown), json.loads(last)


def test_importing_the_cli_loads_no_heavy_dependency() -> None:
    _, result = _probe()
    assert result["loaded"] == []


def test_help_loads_no_heavy_dependency_and_lists_the_commands() -> None:
    shown, result = _probe("--help")
    assert result == {"code": 0, "loaded": []}
    for command in ("run", "serve", "retry", "show", "validate"):
        assert command in shown


def test_a_command_still_gets_its_dependencies() -> None:
    shown, result = _probe("validate", "examples/diamond/farm_readings.yaml")
    assert result["code"] == 0, shown
    assert "ok (farm_readings, 4 steps)" in shown
