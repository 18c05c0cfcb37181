"""Acceptance fixtures: drive the real ``stepline`` console script in a scratch directory.

Every test gets its own ``tmp_path`` as the working directory and its own SQLite database
(``STEPLINE_DB=sqlite:///<tmp_path>/stepline.db``); no other ``STEPLINE_*`` variable from the
caller's environment reaches the command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

STEPLINE = Path(sys.executable).parent / "stepline"
FIXTURES = Path(__file__).parent / "fixtures"
TIMEOUT = 60
WIDTH = max(2, os.cpu_count() or 2)


class Result:
    """One finished ``stepline`` invocation."""

    def __init__(self, args: Sequence[str], proc: subprocess.CompletedProcess[str]) -> None:
        self.args = list(args)
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def out(self) -> str:
        """stdout with runs of whitespace collapsed (rich folds long lines at 160 columns)."""
        return " ".join(self.stdout.split())

    @property
    def err(self) -> str:
        """stderr with runs of whitespace collapsed."""
        return " ".join(self.stderr.split())

    @property
    def report(self) -> str:
        """The whole invocation, for assertion messages (pytest would shorten a repr)."""
        return (
            f"stepline {' '.join(self.args)} -> exit {self.code}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )

    def __repr__(self) -> str:
        return self.report


class Cli:
    """Runs ``stepline`` with ``cwd`` = the test's tmp_path and its own SQLite database."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db_path = root / "stepline.db"

    def env(self, db_path: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
        for noise in ("FORCE_COLOR", "PYTHONPATH", "COLUMNS"):
            env.pop(noise, None)
        env["NO_COLOR"] = "1"
        env["STEPLINE_DB"] = f"sqlite:///{db_path or self.db_path}"
        return env

    def __call__(
        self,
        *args: str,
        db_path: Path | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Result:
        """``stepline ARGS`` in ``cwd`` (default: this test's directory), ``env`` added."""
        proc = subprocess.run(
            [str(STEPLINE), *args],
            cwd=cwd or self.root,
            env={**self.env(db_path), **(env or {})},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        return Result(args, proc)

    def parallel(self, *calls: tuple[Sequence[str], Path | None]) -> list[Result]:
        """Independent invocations at once; each call is (args, db_path or None).

        Give concurrent calls that may write different databases.
        """
        return run_all([(self, args, db) for args, db in calls])

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def copy_fixture(self, name: str, dest: str | None = None) -> Path:
        target = self.root / (dest or name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / name, target)
        return target

    def rows(self, sql: str, db_path: Path | None = None) -> list[tuple[object, ...]]:
        """Rows of a query on the test database, opened read-only."""
        path = db_path or self.db_path
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return conn.execute(sql).fetchall()

    def count(self, table: str, db_path: Path | None = None) -> int:
        """Rows in ``table``; 0 when the database file or the table does not exist."""
        path = db_path or self.db_path
        if not path.exists():
            return 0
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            exists = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()[0]
            if not exists:
                return 0
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def nothing_written(self, db_path: Path | None = None) -> bool:
        return all(
            self.count(t, db_path) == 0
            for t in ("batch_definition", "batch_instance", "batch_step_result")
        )


def run_all(jobs: Sequence[tuple[Cli, Sequence[str], Path | None]]) -> list[Result]:
    """Run independent invocations concurrently, in order of ``jobs``.

    Each costs about a second of interpreter start-up and imports, on one core; overlapping
    them is what keeps this suite fast.
    """
    with ThreadPoolExecutor(max_workers=WIDTH) as pool:
        futures = [pool.submit(cli, *args, db_path=db) for cli, args, db in jobs]
        return [f.result() for f in futures]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    assert STEPLINE.exists(), f"console script not installed next to the interpreter: {STEPLINE}"
    return Cli(tmp_path)


@pytest.fixture(scope="module")
def make_cli(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Cli]:
    """A Cli in a fresh directory of its own, for module-scoped fixtures."""
    return lambda name: Cli(tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def run_concurrently() -> Callable[
    [Sequence[tuple[Cli, Sequence[str], Path | None]]], list[Result]
]:
    return run_all
