"""Acceptance: ``stepline serve`` as a process — scheduler, HTTP API and driver together.

1. Three ``serve`` processes on one PostgreSQL or MariaDB database, a batch firing every
   second: each fire time yields exactly one instance, including across ``kill -9`` of the
   leader (SPEC guarantee 4), and every instance ends ``succeeded`` (after one
   ``stepline recover`` for what the stopped processes left).
2. SIGTERM drains: with ``--grace`` long enough, the running step ends and the process exits
   0; with a short grace the process exits promptly and another ``serve`` finishes the rest.
3. ``serve`` refuses a non-loopback address without ``STEPLINE_API_TOKEN``.
4. An HTTP trigger runs to ``succeeded``; ``max_active_instances: 1`` queues a second trigger
   until the first one ends.

Every process runs in a scratch directory holding a copy of serve_fixture/ (the runners
import from the working directory) with JSON logs on stderr, kept in files for the reports.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from stepline.stores.schema import batch_definition, batch_instance, batch_step_result

STEPLINE = Path(sys.executable).parent / "stepline"
FIXTURE = Path(__file__).parent / "serve_fixture"
TESTS_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
LEASE = 3.0  # STEPLINE_LEASE_SECONDS of every process here
READY = 30.0  # seconds a `serve` gets to answer /healthz
STOP = 15.0  # seconds a `serve` gets to exit after SIGTERM
WINDOW = 13.0  # seconds test 1 watches the cron batch fire
KILL_AFTER = 6.0  # ... and when, in that window, it kills the leader


class UngracefulExit(AssertionError):
    """``serve`` did not exit 0 on SIGTERM after draining."""


# uvicorn.Server.run() ends by re-raising the SIGTERM it caught (capture_signals, uvicorn
# >= 0.29): the default handler kills the process right there, so the `finally` of
# stepline.cli.app.serve (stop the scheduler, drain for --grace, release the lease and the
# worker row) never runs, and the exit status is -15.
# -- processes ----------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    for noise in ("FORCE_COLOR", "PYTHONPATH", "COLUMNS"):
        env.pop(noise, None)
    env["NO_COLOR"] = "1"
    env["STEPLINE_LOG_FORMAT"] = "json"
    env["STEPLINE_LEASE_SECONDS"] = str(LEASE)
    env["SERVE_LOG"] = str(root / "runners.log")
    env.update(extra)
    return env


class Serve:
    """One ``stepline serve`` subprocess; its stdout and stderr go to files in ``root``."""

    def __init__(
        self, root: Path, name: str, args: list[str], *, port: int, env: dict[str, str]
    ) -> None:
        self.root, self.name, self.port = root, name, port
        self.out, self.err = root / f"{name}.out", root / f"{name}.err"
        with self.out.open("wb") as stdout, self.err.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [str(STEPLINE), "serve", *args, "--port", str(port)],
                cwd=root,
                env=env,
                stdout=stdout,
                stderr=stderr,
            )
        self.url = f"http://127.0.0.1:{port}"
        self.stopped_in: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"serve exited {self.proc.returncode}\n{self}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve did not answer /healthz in {READY} s\n{self}")

    @property
    def owner(self) -> str:
        """The owner id ``host:pid:suffix`` that serve printed as it started."""
        for line in self.stdout().splitlines():
            if "(owner " in line:
                return line.rsplit("(owner ", 1)[1].rstrip(")")
        raise AssertionError(f"serve printed no owner id\n{self}")

    def stdout(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines of event ``name`` on stderr."""
        found = []
        for line in self.stderr().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                found.append(record)
        return found

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = STOP) -> int:
        """The exit status; a process that does not exit in time is killed (an error)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"serve did not exit within {timeout} s of SIGTERM\n{self}"
            ) from None

    def stop(self, timeout: float = STOP) -> int:
        """SIGTERM, then the exit status; records how long the exit took."""
        start = time.monotonic()
        self.signal(signal.SIGTERM)
        code = self.wait(timeout)
        self.stopped_in = time.monotonic() - start
        return code

    def __str__(self) -> str:
        return (
            f"--- {self.name} (pid {self.pid}, exit {self.proc.returncode}) stdout\n"
            f"{self.stdout()}--- stderr\n{self.stderr()}"
        )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A scratch working directory with a copy of serve_fixture/."""
    assert STEPLINE.exists(), f"console script not installed next to the interpreter: {STEPLINE}"
    shutil.copytree(FIXTURE, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__py*"))
    return tmp_path


@pytest.fixture
def spawn(root: Path) -> Iterator[Callable[..., Serve]]:
    """Start ``serve`` processes in ``root``; whatever still runs at teardown is killed."""
    started: list[Serve] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None) -> Serve:
        (port,) = _free_ports(1)
        serve = Serve(root, name, list(args), port=port, env=env or _env(root))
        started.append(serve)
        return serve

    yield start
    for serve in started:
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait()


def _tests_conftest(config: pytest.Config) -> ModuleType:
    """tests/conftest.py as pytest loaded it (the name ``conftest`` is the acceptance one)."""
    module = config.pluginmanager.get_plugin(str(TESTS_CONFTEST))
    assert isinstance(module, ModuleType), f"{TESTS_CONFTEST} is not loaded as a conftest"
    return module


@pytest.fixture(params=["postgresql", "mariadb"])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database on a server that several processes share."""
    shared = _tests_conftest(request.config)
    url, handle = shared.create_database(request.param, tmp_path)
    yield str(url)
    shared.drop_database(request.param, handle)


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def _instances(url: str, batch: str) -> list[dict[str, Any]]:
    bi, bd = batch_instance, batch_definition
    query = (
        sa.select(bi)
        .join(bd, bd.c.id == bi.c.definition_id)
        .where(bd.c.name == batch)
        .order_by(bi.c.id)
    )
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if "batch_instance" not in tables:
                return []
            return [dict(r._mapping) for r in conn.execute(query)]
    finally:
        engine.dispose()


def _step_rows(url: str) -> list[dict[str, Any]]:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(batch_step_result))]
    finally:
        engine.dispose()


def _lease_holder(url: str) -> tuple[str, int] | None:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT holder, epoch FROM stepline_lease WHERE name = 'scheduler'"
            ).first()
    finally:
        engine.dispose()
    return None if row is None else (str(row[0]), int(row[1]))


def _runner_log(root: Path) -> list[list[str]]:
    """``[event, batch, step, instance_id, pid]`` per line the runners logged."""
    path = root / "runners.log"
    if not path.exists():
        return []
    return [line.split() for line in path.read_text(encoding="utf-8").splitlines()]


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting until {what}")


def _recover(root: Path, db: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STEPLINE), "recover", "--db", db],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- 1. several schedulers, one instance per fire time ------------------------------------


@pytest.mark.slow
def test_three_serve_processes_fire_each_second_exactly_once_across_a_leader_kill(
    root: Path, server_db: str, spawn: Callable[..., Serve]
) -> None:
    db = server_db
    # The first process applies the definition alone: three first-time applies of one new
    # batch at once race on batch_definition's unique name (an IntegrityError, not what
    # this test is about). The other two then find it stored, unchanged.
    first = spawn("serve1", "cron", "--db", db)
    first.wait_ready()
    others = [spawn(f"serve{n}", "cron", "--db", db) for n in (2, 3)]
    for serve in others:
        serve.wait_ready()
    serves = [first, *others]
    by_pid = {s.pid: s for s in serves}

    def report() -> str:
        return "\n".join(str(s) for s in serves)

    _wait_until(lambda: bool(_instances(db, "ticker")), 10, "the cron batch fired once")
    window_start = time.monotonic()

    # About midway, kill -9 whichever process leads now.
    time.sleep(max(0.0, window_start + KILL_AFTER - time.monotonic()))
    holder = _lease_holder(db)
    assert holder is not None, f"no scheduler lease row while the batch fires\n{report()}"
    holder_id, epoch = holder
    leader = by_pid.get(int(holder_id.rsplit(":", 2)[-2]))
    assert leader is not None, f"lease holder {holder_id} is none of {sorted(by_pid)}"
    assert leader.owner == holder_id
    leader.proc.kill()
    leader.proc.wait()
    killed_at = datetime.now(UTC)
    survivors = [s for s in serves if s is not leader]

    # Another scheduler takes over within the lease time.
    def taken_over() -> bool:
        now = _lease_holder(db)
        return now is not None and now[0] != holder_id and now[1] > epoch

    _wait_until(taken_over, LEASE + 2, f"a survivor took the lease from {holder_id}")
    new_holder = _lease_holder(db)
    assert new_holder is not None and new_holder[0] in {s.owner for s in survivors}

    time.sleep(max(0.0, window_start + WINDOW - time.monotonic()))
    stop_at = datetime.now(UTC)
    for serve in survivors:
        serve.signal(signal.SIGTERM)
    codes = {serve.name: serve.wait() for serve in survivors}

    rows = _instances(db, "ticker")
    fires = [r["scheduled_for"] for r in rows]
    assert all(f is not None for f in fires), "a cron instance without scheduled_for"
    duplicates = [f for f, n in Counter(fires).items() if n > 1]
    assert not duplicates, f"several instances for fire times {duplicates}"
    assert all(r["trigger"] == "cron" for r in rows)

    # What the schedulers say they fired: each fire time once, by one process, all stored.
    logged = Counter(
        datetime.fromisoformat(e["scheduled_for"]) for s in serves for e in s.events("fired")
    )
    twice = [f.isoformat() for f, n in logged.items() if n > 1]
    assert not twice, f"fire times logged as fired more than once: {twice}\n{report()}"
    assert set(logged) <= set(fires), f"fired but not stored: {set(logged) - set(fires)}"
    # kill -9 may land between the commit of an instance and its log line: at most one such.
    unlogged = sorted(set(fires) - set(logged))
    assert len(unlogged) <= 1 and all(
        abs(f - killed_at) < timedelta(seconds=2) for f in unlogged
    ), f"stored but not logged by any scheduler: {unlogged} (leader killed at {killed_at})"
    leads = [e for s in survivors for e in s.events("scheduler leads")]
    assert any(int(e["epoch"]) > epoch for e in leads), (
        f"no survivor led after the kill\n{report()}"
    )

    # No fire time is missing: no gap longer than the lease (+1 s), none after the last one
    # while a scheduler lived; the new leader even fires what the gap left behind.
    fires = sorted(fires)
    too_long = [
        (a.isoformat(), b.isoformat())
        for a, b in itertools.pairwise(fires)
        if b - a > timedelta(seconds=LEASE + 1)
    ]
    assert not too_long, f"gaps between fire times over {LEASE + 1} s: {too_long}"
    assert stop_at - fires[-1] <= timedelta(seconds=LEASE + 1), (
        f"last fire time {fires[-1]} but schedulers ran until {stop_at}"
    )
    assert fires[0] < killed_at < fires[-1], "the fire times do not span the leader's kill"
    expected = [fires[0] + timedelta(seconds=n) for n in range(len(fires))]
    assert fires == expected, (
        "fire times are not every second from the first to the last: missing "
        f"{sorted(set(expected) - set(fires))}"
    )

    # Each instance is final, or unfinished and owned by a stopped process (or by nobody yet).
    owners = {s.owner for s in serves}
    for r in rows:
        if r["status"] in ("queued", "running"):
            assert r["owner_id"] in owners | {None}, f"instance {r['id']} owned by {r['owner_id']}"
        else:
            assert r["status"] == "succeeded", f"instance {r['id']}: {r['status']} {r['error']}"

    recover = _recover(root, db)
    assert recover.returncode == 0, f"recover exit {recover.returncode}\n{recover.stderr}"
    rows = _instances(db, "ticker")
    assert sorted(r["scheduled_for"] for r in rows) == fires  # recover creates none
    unfinished = {r["id"]: r["status"] for r in rows if r["status"] != "succeeded"}
    assert not unfinished, f"not succeeded after recover: {unfinished}\n{recover.stdout}"
    steps = Counter((s["batch_instance_id"], s["step_key"], s["status"]) for s in _step_rows(db))
    assert steps == Counter((r["id"], "tick", "succeeded") for r in rows)

    bad = {name: code for name, code in codes.items() if code != 0}
    if bad:
        raise UngracefulExit(f"SIGTERM exit statuses {bad} (want 0)\n{report()}")


# -- 2. SIGTERM drains for --grace --------------------------------------------------------


def _trigger(serve: Serve, batch: str, params: dict[str, Any] | None = None) -> int:
    body = {"params": params} if params is not None else None
    response = httpx.post(f"{serve.url}/api/batches/{batch}/run", json=body, timeout=10)
    assert response.status_code == 202, response.text
    return int(response.json()["instance_id"])


def _instance(serve: Serve, instance_id: int, headers: dict[str, str] | None = None) -> Any:
    response = httpx.get(f"{serve.url}/api/instances/{instance_id}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _wait_succeeded(serve: Serve, instance_id: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = _instance(serve, instance_id)
        if body["status"] == "succeeded":
            return dict(body)
        assert body["status"] in ("queued", "running"), f"instance {instance_id}: {body}"
        assert time.monotonic() < deadline, f"instance {instance_id} not done in {timeout} s"
        time.sleep(0.1)


def _started(root: Path, instance_id: int) -> Callable[[], bool]:
    return lambda: any(r[0] == "start" and r[3] == str(instance_id) for r in _runner_log(root))


def test_sigterm_lets_the_running_step_finish_within_grace(
    root: Path, spawn: Callable[..., Serve]
) -> None:
    db = f"sqlite:///{root / 'stepline.db'}"
    serve = spawn("serve", "manual", "--db", db, "--grace", "5")
    serve.wait_ready()
    instance_id = _trigger(serve, "sleeper", {"seconds": 2})
    _wait_until(_started(root, instance_id), 10, "the 2 s step started")
    code = serve.stop()

    (row,) = [r for r in _instances(db, "sleeper") if r["id"] == instance_id]
    log = [r[0] for r in _runner_log(root) if r[3] == str(instance_id)]
    problems = []
    if row["status"] != "succeeded":
        problems.append(f"instance {instance_id} is {row['status']}, not succeeded")
    if log != ["start", "end"]:
        problems.append(f"the step's runner logged {log}, want start then end")
    if code != 0:
        raise UngracefulExit(
            f"exit {code} {serve.stopped_in:.2f} s after SIGTERM (want 0 once the step ended); "
            f"also: {problems}\n{serve}"
        )
    assert not problems, f"{problems}\n{serve}"
    assert serve.stopped_in is not None and serve.stopped_in < 5


def test_sigterm_with_short_grace_exits_promptly_and_another_serve_finishes(
    root: Path, spawn: Callable[..., Serve]
) -> None:
    db = f"sqlite:///{root / 'stepline.db'}"
    first = spawn("serve1", "manual", "--db", db, "--grace", "0.5")
    first.wait_ready()
    owner = first.owner
    instance_id = _trigger(first, "sleeper", {"seconds": 5})
    _wait_until(_started(root, instance_id), 10, "the 5 s step started")
    time.sleep(0.5)
    first_code = first.stop()
    # Grace 0.5 s, then only shutting down: well before the step's remaining 4.5 s.
    assert first.stopped_in is not None and first.stopped_in < 3.0, (
        f"exit took {first.stopped_in:.2f} s after SIGTERM with --grace 0.5\n{first}"
    )
    (row,) = [r for r in _instances(db, "sleeper") if r["id"] == instance_id]
    assert row["status"] == "running" and row["owner_id"] == owner, row
    assert [r[0] for r in _runner_log(root)] == ["start"]

    second = spawn("serve2", "manual", "--db", db)
    second.wait_ready()
    body = _wait_succeeded(second, instance_id, 15)
    assert [s["status"] for s in body["steps"]] == ["succeeded"]
    assert body["steps"][0]["result_payload"] == {"slept": 5.0, "pid": second.pid}
    log = [(r[0], int(r[4])) for r in _runner_log(root)]
    assert log == [("start", first.pid), ("start", second.pid), ("end", second.pid)]
    second_code = second.stop()

    bad = {n: c for n, c in (("serve1", first_code), ("serve2", second_code)) if c != 0}
    if bad:
        raise UngracefulExit(f"SIGTERM exit statuses {bad} (want 0)\n{first}\n{second}")


# -- 3. no open API beyond this machine ---------------------------------------------------


def test_serve_refuses_a_public_address_without_a_token(
    root: Path, spawn: Callable[..., Serve]
) -> None:
    db = f"sqlite:///{root / 'stepline.db'}"
    (port,) = _free_ports(1)
    refused = subprocess.run(
        [str(STEPLINE), "serve", "manual", "--host", "0.0.0.0", "--port", str(port), "--db", db],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 2, f"exit {refused.returncode}\n{refused.stdout}{refused.stderr}"
    assert "refusing to listen on '0.0.0.0' without an API token" in message
    assert "STEPLINE_API_TOKEN" in message
    assert not (root / "stepline.db").exists(), "the refused serve touched the database"

    token = "s3cr3t-token-for-serve-test"
    serve = spawn(
        "serve", "manual", "--host", "0.0.0.0", "--db", db, env=_env(root, STEPLINE_API_TOKEN=token)
    )
    serve.wait_ready()
    url = f"{serve.url}/api/batches"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    answer = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert "sleeper" in answer.text
    serve.stop()
    assert token not in serve.stdout() + serve.stderr()


# -- 4. HTTP triggers through serve -------------------------------------------------------


def test_http_trigger_runs_and_a_busy_batch_queues_the_next(
    root: Path, spawn: Callable[..., Serve]
) -> None:
    db = f"sqlite:///{root / 'stepline.db'}"
    serve = spawn("serve", "manual", "--db", db)
    serve.wait_ready()

    quick = _trigger(serve, "quick")
    body = _wait_succeeded(serve, quick, 10)
    assert body["trigger"] == "http"
    assert [(s["key"], s["status"]) for s in body["steps"]] == [("tick", "succeeded")]
    assert body["steps"][0]["result_payload"] == {"instance_id": quick, "pid": serve.pid}

    # max_active_instances: 1, on_busy: queue — the second waits for the first to end.
    first = _trigger(serve, "one_at_a_time")
    second = _trigger(serve, "one_at_a_time")
    assert _instance(serve, second)["status"] == "queued"
    done = [_wait_succeeded(serve, i, 15) for i in (first, second)]
    first_end = datetime.fromisoformat(done[0]["finished_at"])
    second_start = datetime.fromisoformat(done[1]["started_at"])
    assert second_start >= first_end, f"overlap: {done}"
    order = [(r[0], r[3]) for r in _runner_log(root) if r[1] == "one_at_a_time"]
    assert order == [
        ("start", str(first)),
        ("end", str(first)),
        ("start", str(second)),
        ("end", str(second)),
    ]
    serve.stop()
