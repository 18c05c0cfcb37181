"""Acceptance: SPEC guarantee 1 — a run survives ``kill -9`` at any instant.

``stepline run crash.yaml`` (crash_fixture/: seven steps, a diamond and a chain that fan in)
is killed with SIGKILL at many moments — at spawn, during start-up, once the instance exists,
after each ``start``/``end`` line its runners log, and after the run finished — then
``stepline recover`` runs with the same database. After each kill:

(a) an instance that was created ends ``succeeded`` (the runners never fail);
(b) each step's runner ran at most once more than it had when killed;
(c) a step that was ``succeeded`` right after the kill did not run again;
(d) every succeeded step has exactly one result row, holding the expected payload;
(e) no step row is left running/queued/pending, no instance running/queued.

Every kill point gets its own database (a fresh SQLite file or PostgreSQL database), so a
kill can land in the first start's migrations too, and kill points run a few at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

STEPLINE = Path(sys.executable).parent / "stepline"
FIXTURE = Path(__file__).parent / "crash_fixture"
TESTS_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
DEFINITION = yaml.safe_load((FIXTURE / "crash.yaml").read_text(encoding="utf-8"))
STEPS = [s["key"] for s in DEFINITION["steps"]]
UPSTREAM = {
    key: sorted(s["key"] for s in DEFINITION["steps"] if key in s.get("next_steps", []))
    for key in STEPS
}
LOG_LINES = 2 * len(STEPS)  # one `start` and one `end` line per step in an uninterrupted run
POLL = 0.002
WAIT = 20.0
RECOVER_TIMEOUT = 60.0
WORKERS = 3  # kill points at once; each one starts two interpreters (~1 s of CPU each)
UNFINISHED_STEP = {"running", "queued", "pending"}
UNFINISHED_INSTANCE = {"running", "queued"}


@dataclass(frozen=True)
class KillPoint:
    """When to send SIGKILL to ``stepline run``.

    ``lines``: once the runners' log has that many lines (None: do not wait for the log);
    ``started``: once stdout says the instance started; ``delay``: then sleep this long;
    ``finish``: let the run end by itself (the kill then hits an exited process).
    """

    name: str
    lines: int | None = None
    started: bool = False
    delay: float = 0.0
    finish: bool = False


def _kill_points() -> list[KillPoint]:
    points = [
        KillPoint("at spawn"),  # before the interpreter has imported anything
        KillPoint("start-up +0.5s", delay=0.5),  # importing
        KillPoint("start-up +1.2s", delay=1.2),  # importing, migrating, applying or triggering
        KillPoint("instance started", started=True),  # stdout printed; roots being claimed
    ]
    for k in range(1, LOG_LINES + 1):
        # At once: a runner just started (its step `running`), or just returned (its outcome
        # reported, maybe not yet committed).
        points.append(KillPoint(f"log line {k}", lines=k))
        if k in (3, 8, 10, LOG_LINES):
            # 30 ms later: an outcome committed, successors claimed and started; at the last
            # line, the instance final and the process closing.
            points.append(KillPoint(f"log line {k} +0.03s", lines=k, delay=0.03))
    points.append(KillPoint("after the run finished", finish=True))
    return points


KILL_POINTS = _kill_points()


def _tests_conftest(config: pytest.Config) -> ModuleType:
    """tests/conftest.py as pytest loaded it (the name ``conftest`` is the acceptance one)."""
    module = config.pluginmanager.get_plugin(str(TESTS_CONFTEST))
    assert isinstance(module, ModuleType), f"{TESTS_CONFTEST} is not loaded as a conftest"
    return module


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[Path], tuple[str, Callable[[], None]]]]:
    """A factory of fresh, empty databases on the backend: (url, drop it), one per kill point.

    Each kill point drops its database as soon as it is done (on PostgreSQL, DROP DATABASE
    waits for a checkpoint: overlapped with the other kill points); what is left is dropped
    at teardown.
    """
    shared = _tests_conftest(request.config)
    backend: str = request.param
    # Fail or skip (per tests/conftest.py's policy) before any kill point runs.
    _, probe = shared.create_database(backend, tmp_path)
    shared.drop_database(backend, probe)
    handles: dict[str, object] = {}

    def make(directory: Path) -> tuple[str, Callable[[], None]]:
        url, handle = shared.create_database(backend, directory)
        handles[url] = handle

        def drop() -> None:
            shared.drop_database(backend, handles.pop(url))

        return str(url), drop

    yield make
    for handle in handles.values():
        shared.drop_database(backend, handle)


# -- one kill point -----------------------------------------------------------------------


def _env(db_url: str, log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    for noise in ("FORCE_COLOR", "PYTHONPATH", "COLUMNS"):
        env.pop(noise, None)
    env["NO_COLOR"] = "1"
    env["STEPLINE_DB"] = db_url
    env["CRASH_LOG"] = str(log)
    return env


def _log_lines(log: Path) -> list[str]:
    try:
        return log.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def _runs(lines: list[str]) -> tuple[Counter[str], Counter[str]]:
    """(runner calls per step, runner returns per step) from the log."""
    starts: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    for line in lines:
        event, step, _pid = line.split()
        (starts if event == "start" else ends)[step] += 1
    return starts, ends


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[bytes]) -> bool:
    """Poll until ``condition`` holds; False if the process exited or time ran out first."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(POLL)
    return False


@dataclass
class DbState:
    instances: dict[int, str]
    steps: dict[tuple[int, str, int], str]
    rows: dict[tuple[int, str, int], int]
    payloads: dict[tuple[int, str, int], Any]

    def describe(self) -> str:
        if not self.instances and not self.steps:
            return "    (no instance)"
        out = [f"    instance {i}: {status}" for i, status in sorted(self.instances.items())]
        for (iid, key, index), status in sorted(self.steps.items()):
            payload = self.payloads.get((iid, key, index))
            out.append(f"    instance {iid} step {key}[{index}]: {status} {payload}")
        return "\n".join(out)


def _read_state(db_url: str) -> DbState:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if not {"batch_instance", "batch_step_result"} <= tables:
                return DbState({}, {}, {}, {})
            instances = {
                int(i): str(s)
                for i, s in conn.exec_driver_sql("SELECT id, status FROM batch_instance")
            }
            steps: dict[tuple[int, str, int], str] = {}
            payloads: dict[tuple[int, str, int], Any] = {}
            for iid, key, index, status, payload in conn.exec_driver_sql(
                "SELECT batch_instance_id, step_key, map_index, status, result_payload"
                " FROM batch_step_result"
            ):
                where = (int(iid), str(key), int(index))
                steps[where] = str(status)
                payloads[where] = json.loads(payload) if isinstance(payload, str) else payload
            rows = {
                (int(iid), str(key), int(index)): int(n)
                for iid, key, index, n in conn.exec_driver_sql(
                    "SELECT batch_instance_id, step_key, map_index, count(*)"
                    " FROM batch_step_result GROUP BY batch_instance_id, step_key, map_index"
                )
            }
    finally:
        engine.dispose()
    return DbState(instances, steps, rows, payloads)


def _expected_payload(step: str) -> dict[str, Any]:
    return {"step": step, "upstream": {key: key for key in UPSTREAM[step]}}


def _output(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _crash_and_recover(point: KillPoint, root: Path, db_url: str) -> list[str]:
    """Run, kill at ``point``, recover; the problems found (empty if the guarantee held)."""
    root.mkdir(parents=True)
    for name in ("crash.yaml", "crash_steps.py"):
        shutil.copy(FIXTURE / name, root / name)
    log = root / "crash.log"
    env = _env(db_url, log)
    run_out, run_err = root / "run.out", root / "run.err"
    with run_out.open("wb") as stdout, run_err.open("wb") as stderr:
        proc = subprocess.Popen(
            [str(STEPLINE), "run", "crash.yaml"], cwd=root, env=env, stdout=stdout, stderr=stderr
        )
        try:
            reached = True
            if point.finish:
                proc.wait(timeout=WAIT)
            elif point.started:
                reached = _wait_for(lambda: b" started " in run_out.read_bytes(), proc)
            elif point.lines is not None:
                k = point.lines
                reached = _wait_for(lambda: len(_log_lines(log)) >= k, proc)
            if point.delay:
                time.sleep(point.delay)
        finally:
            proc.kill()
            code = proc.wait()
    lines_at_kill = _log_lines(log)
    at_kill = _read_state(db_url)
    starts_at_kill, ends_at_kill = _runs(lines_at_kill)

    recover = subprocess.run(
        [str(STEPLINE), "recover"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=RECOVER_TIMEOUT,
        check=False,
    )
    lines = _log_lines(log)
    after = _read_state(db_url)
    starts, ends = _runs(lines)

    problems: list[str] = []
    if not reached:
        problems.append(f"the run never reached the kill point (exit {code})")
    if point.finish and code != 0:
        problems.append(f"the uninterrupted run exited {code}")
    if recover.returncode != 0:
        problems.append(f"`stepline recover` exited {recover.returncode}")
    if len(after.instances) > 1:
        problems.append(f"{len(after.instances)} instances for one `stepline run`")
    if not after.instances and (lines or point.started or point.lines or point.finish):
        problems.append("no instance, yet the run got as far as this kill point")
    for iid, status in sorted(after.instances.items()):
        # (a) a created instance finishes, successfully: the runners never fail.
        if status != "succeeded":
            problems.append(f"(a) instance {iid} is {status} after recover, not succeeded")
        for key in STEPS:
            if (iid, key, -1) not in after.steps:
                problems.append(f"(d) instance {iid} has no result row for step {key}")
    for key in STEPS:
        # (b) at most one more call per step than at the kill.
        if starts[key] > starts_at_kill[key] + 1:
            problems.append(
                f"(b) step {key} ran {starts[key]} times, {starts_at_kill[key]} at the kill"
            )
    for (_iid, key, _index), status in sorted(at_kill.steps.items()):
        if status != "succeeded":
            continue
        # A step the database calls succeeded must have returned (its `end` line) before.
        if ends_at_kill[key] < 1:
            problems.append(f"step {key} was succeeded at the kill but its runner never returned")
        # (c) no succeeded step runs again.
        if starts[key] != starts_at_kill[key]:
            problems.append(
                f"(c) step {key} was succeeded at the kill and ran again: "
                f"{starts_at_kill[key]} calls at the kill, {starts[key]} after recover"
            )
    for (iid, key, index), status in sorted(after.steps.items()):
        if status == "succeeded":
            # (d) exactly one result row, with the expected payload, per succeeded step.
            if after.rows[(iid, key, index)] != 1:
                problems.append(f"(d) step {key}[{index}] has {after.rows[(iid, key, index)]} rows")
            if after.payloads[(iid, key, index)] != _expected_payload(key):
                problems.append(
                    f"(d) step {key}[{index}] stored {after.payloads[(iid, key, index)]!r}, "
                    f"expected {_expected_payload(key)!r}"
                )
            if starts[key] < 1 or ends[key] < 1:
                problems.append(f"(d) step {key} is succeeded but its runner never returned")
        # (e) nothing left unfinished.
        if status in UNFINISHED_STEP:
            problems.append(f"(e) instance {iid} step {key}[{index}] left {status}")
    for iid, status in sorted(after.instances.items()):
        if status in UNFINISHED_INSTANCE:
            problems.append(f"(e) instance {iid} left {status}")
    if not problems:
        return []
    return [
        f"kill point {point.name!r} ({point}) on {db_url}, in {root}:\n  "
        + "\n  ".join(problems)
        + f"\n  run exit code {code} (-9 = killed); log at the kill ({len(lines_at_kill)} lines),"
        f" then after recover:\n    "
        + "\n    ".join(lines_at_kill)
        + "\n    ---\n    "
        + "\n    ".join(lines[len(lines_at_kill) :])
        + f"\n  steps at the kill:\n{at_kill.describe()}"
        + f"\n  steps after recover:\n{after.describe()}"
        + f"\n  run stdout:\n{_output(run_out)}  run stderr:\n{_output(run_err)}"
        + f"  recover stdout:\n{recover.stdout}  recover stderr:\n{recover.stderr}"
        + f"  by hand, in a copy of {FIXTURE} with a new database: "
        f"CRASH_LOG=crash.log STEPLINE_DB=<url> stepline run crash.yaml, kill -9 it at the "
        "kill point, then CRASH_LOG=crash.log STEPLINE_DB=<url> stepline recover"
    ]


def _guarded(point: KillPoint, root: Path, database: tuple[str, Callable[[], None]]) -> list[str]:
    db_url, drop = database
    try:
        problems = _crash_and_recover(point, root, db_url)
    except Exception:
        return [f"kill point {point.name!r} on {db_url}, in {root}:\n{traceback.format_exc()}"]
    drop()
    return problems


@pytest.mark.slow
def test_kill_minus_nine_at_any_moment_then_recover(
    new_database: Callable[[Path], tuple[str, Callable[[], None]]], tmp_path: Path
) -> None:
    assert STEPLINE.exists(), f"console script not installed next to the interpreter: {STEPLINE}"
    assert len(KILL_POINTS) >= 20
    jobs = []
    for n, point in enumerate(KILL_POINTS):
        root = tmp_path / f"k{n:02d}"
        jobs.append((point, root, new_database(root)))
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        reports = list(pool.map(lambda job: _guarded(*job), jobs))
    failures = [problem for report in reports for problem in report]
    assert not failures, (
        f"{len(failures)} of {len(KILL_POINTS)} kill points broke guarantee 1:\n\n"
        + "\n\n".join(failures)
    )
