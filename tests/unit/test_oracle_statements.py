"""Every statement the store and the scheduler issue, recompiled for Oracle and checked.

A full engine run on SQLite is recorded through SQLAlchemy's events (Core statements and
driver SQL) and a recording wrapper around the hot path (which bypasses SQLAlchemy on
SQLite). Each statement is then compiled for the Oracle dialect, as Oracle would receive
it, and checked against Oracle's rules (tests/oracle_rules.py). No Oracle server runs here:
this proves the SQL text, not its execution.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import oracle

from oracle_rules import problems
from stepline import InstanceStatus, batch
from stepline.scheduling.scheduler import Scheduler
from stepline.service import Stepline
from stepline.stores import hotpath
from stepline.stores.schema import metadata
from stepline.stores.transaction import CHUNK, CLOCK_SQL, SqlInstanceTransaction

W = "fixture_runners:"
ORACLE = oracle.dialect()
IDENTIFIERS = frozenset(
    {t.name for t in metadata.tables.values()}
    | {c.name for t in metadata.tables.values() for c in t.c}
)


class Recorder:
    """Statements issued through one engine, and through the hot path."""

    def __init__(self) -> None:
        self.core: list[tuple[sa.Executable, dict[str, Any]]] = []
        self.driver: list[str] = []
        self.hot: list[tuple[hotpath.HotStatement, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def attach(self, engine: sa.Engine) -> None:
        @event.listens_for(engine, "before_execute")
        def _core(conn: Any, clause: Any, multiparams: Any, params: Any, options: Any) -> None:
            with self._lock:
                if isinstance(clause, str):
                    self.driver.append(clause)
                else:
                    first = multiparams[0] if multiparams else params
                    if isinstance(first, list):
                        first = first[0] if first else {}
                    self.core.append((clause, dict(first or {})))


@pytest.fixture
def recorder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Recorder, Stepline]]:
    rec = Recorder()
    original = hotpath.HotStatement.run

    def recording_run(self: hotpath.HotStatement, conn: Any, params: Mapping[str, Any]) -> Any:
        with rec._lock:
            rec.hot.append((self, dict(params)))
        return original(self, conn, params)

    monkeypatch.setattr(hotpath.HotStatement, "run", recording_run)
    with Stepline(db=f"sqlite:///{tmp_path / 'stepline.db'}") as app:
        rec.attach(app.store.engine)
        yield rec, app


def _step(key: str, nexts: list[str], runner: str = "work", **options: Any) -> dict[str, Any]:
    fields = {k: v for k, v in options.items() if k in {"retry", "trigger_rule", "map"}}
    args = {k: v for k, v in options.items() if k not in fields}
    return {"key": key, "runner": W + runner, "next_steps": nexts, "with": args, **fields}


def _full_run(app: Stepline) -> None:
    """Every path of the store and the scheduler: fan-out/in, a mapped step, a retry, a
    failure handler, a failed instance retried, a cancel, admission, recovery, leases and
    a scheduled instance."""
    name = f"ora{uuid.uuid4().hex[:8]}"
    steps = [
        _step("start", ["items", "b", "c"], value={"ok": True}),
        _step("items", ["fan"], value=[1, 2, 3]),
        _step("b", ["join"], value=1, fail_times=1, retry={"attempts": 2, "backoff": "0s"}),
        _step("c", ["join"], value=2),
        _step("fan", ["join"], value="item", map={"over": "items", "concurrency": 2}),
        _step("join", [], runner="fan_in"),
        _step("alert", [], trigger_rule="one_failed"),
    ]
    stored = app.apply(batch(name, steps, cron="0 * * * * *", timezone="UTC"))
    instance, _ = app.trigger(stored.name, owned=True)
    assert app.run_instance(instance.id).status is InstanceStatus.SUCCEEDED

    alerts = [{"type": "webhook", "url": "http://127.0.0.1:9/alerts"}]  # a closed port
    failing = app.apply(
        batch(name + "f", [_step("x", ["y"], fatal=True), _step("y", [])], alerts=alerts)
    )
    instance, _ = app.trigger(failing.name, owned=True)
    assert app.run_instance(instance.id).status is InstanceStatus.FAILED
    for alert in app.store.claim_alerts("probe", 30):  # the alert outbox's statements
        app.store.alert_done(alert, "probe", "refused")
    app.retry(instance.id)

    queued, _ = app.trigger(stored.name)  # unowned: admitted by serve's driver
    app.cancel(queued.id)
    again, _ = app.trigger(stored.name, idempotency_key="k1")
    app.trigger(stored.name, idempotency_key="k1")  # the same instance, found by its key
    stop = threading.Event()
    driver = threading.Thread(target=app.serve_forever, args=(stop,), kwargs={"grace_seconds": 5})
    driver.start()
    try:
        deadline = datetime.now(UTC).timestamp() + 20
        while app.store.instance(again.id).status not in (
            InstanceStatus.SUCCEEDED,
            InstanceStatus.FAILED,
        ):
            assert datetime.now(UTC).timestamp() < deadline, "admitted instance did not finish"
            stop.wait(0.05)
    finally:
        stop.set()
        driver.join(30)
    app.recover()
    app.store.instances(stored.name)
    app.store.attempts(instance.id)
    app.store.workers()
    app.store.heartbeat("gone:1", 30)
    app.store.release("gone:1")

    scheduler = Scheduler(app, holder="h1", clock=lambda: datetime.now(UTC))
    scheduler.tick()
    scheduler.tick()
    app.store.last_scheduled(stored.id)
    app.store.release_lease("scheduler", "h1")
    app.store.lease_valid("scheduler", "h1", 1)


def _oracle_sql(clause: sa.Executable, params: Mapping[str, Any]) -> str:
    if isinstance(clause, sa.TextClause) and params:
        used = {k: v for k, v in params.items() if re.search(rf":{k}\b", clause.text)}
        clause = clause.bindparams(**used)
    elif params and not isinstance(clause, sa.Insert):
        clause = clause.params(params)  # type: ignore[attr-defined]
    compiled = clause.compile(dialect=ORACLE, compile_kwargs={"render_postcompile": True})
    return str(compiled)


def test_every_statement_of_a_full_run_follows_oracles_rules(
    recorder: tuple[Recorder, Stepline],
) -> None:
    rec, app = recorder
    _full_run(app)
    assert len(rec.core) > 50 and len(rec.hot) > 20, "the run did not exercise the store"
    kinds = {type(clause).__name__ for clause, _ in rec.core}
    assert {"Select", "Insert", "Update", "Delete"} <= kinds, kinds

    checked: dict[str, list[str]] = {}
    for clause, params in rec.core:
        sql = _oracle_sql(clause, params)
        checked[sql] = problems(sql, IDENTIFIERS)
    for statement, params in rec.hot:
        sql = _oracle_sql(statement.oracle_clause(params), params)
        checked[sql] = problems(sql, IDENTIFIERS)
    # Driver SQL issued as text: on SQLite the transaction mode and the clock; on Oracle
    # only the clock is driver SQL (no BEGIN: Oracle opens transactions implicitly).
    assert set(rec.driver) <= {CLOCK_SQL["sqlite"]}, rec.driver
    checked[CLOCK_SQL["oracle"]] = problems(CLOCK_SQL["oracle"], IDENTIFIERS)

    bad = {sql: found for sql, found in checked.items() if found}
    assert not bad, "\n\n".join(f"{sql}\n  -> {found}" for sql, found in bad.items())
    assert len(checked) > 40
    assert any("FOR UPDATE" in sql for sql in checked), "the instance lock was not recorded"
    assert any("FETCH FIRST" in sql for sql in checked), "no limited query was recorded"
    assert any('"trigger"' in sql for sql in checked), "the reserved column was not quoted"
    assert any("stepline_alert_outbox" in sql for sql in checked), "no alert was recorded"


def test_the_rules_catch_what_oracle_refuses() -> None:
    """The checker itself: each rule fails on a statement that breaks it."""
    assert problems("SELECT id FROM t LIMIT 5")
    assert problems("SELECT id FROM t WHERE flag = true")
    assert problems("SELECT trigger FROM batch_instance", frozenset({"trigger"}))
    assert not problems('SELECT "trigger" FROM batch_instance', frozenset({"trigger"}))
    assert problems("SELECT id FROM t WHERE id = :uid")
    assert problems("SELECT id FROM t WHERE id = :_private")
    assert problems("SELECT 1")
    assert problems("SELECT id FROM t FETCH FIRST 1 ROWS ONLY FOR UPDATE")
    assert problems("SELECT id FROM t WHERE id IN (" + ", ".join(["1"] * 1000) + ")")
    assert problems("DELETE FROM t;")
    assert not problems("BEGIN p(:1); END;")
    assert not problems("SELECT SYS_EXTRACT_UTC(SYSTIMESTAMP) FROM DUAL")


def test_long_in_lists_are_chunked_on_every_path(recorder: tuple[Recorder, Stepline]) -> None:
    """A fan-out wider than Oracle's 1,000-expression IN list still runs, in chunks."""
    rec, app = recorder
    width = 2 * CHUNK + 30
    middle = [f"m{i}" for i in range(width)]
    steps = [_step("root", middle, value=1)]
    steps += [_step(k, ["join"], value=i) for i, k in enumerate(middle)]
    stored = app.apply(batch(f"wide{uuid.uuid4().hex[:6]}", [*steps, _step("join", [], "fan_in")]))
    instance, _ = app.trigger(stored.name, owned=True)
    assert app.run_instance(instance.id).status is InstanceStatus.SUCCEEDED
    with app.store.engine.begin() as conn:  # a step left running: the requeue reads them
        conn.exec_driver_sql(
            "UPDATE batch_step_result SET status = 'running'"
            f" WHERE batch_instance_id = {instance.id} AND step_key = 'join'"
        )
    with app.store.instance_transaction(instance.id) as tx:
        assert isinstance(tx, SqlInstanceTransaction)
        tx.requeue_running(exclude_owner=None, exclude_keys=middle)
        assert len(tx.statuses(middle)) == width
    longest = 0
    for clause, params in rec.core:
        sql = _oracle_sql(clause, params)
        longest = max([longest, *(s.count(",") + 1 for s in _in_lists(sql))])
    for statement, params in rec.hot:
        sql = _oracle_sql(statement.oracle_clause(params), params)
        longest = max([longest, *(s.count(",") + 1 for s in _in_lists(sql))])
    assert CHUNK // 2 < longest <= CHUNK


def _in_lists(sql: str) -> list[str]:
    return re.findall(r"\bIN\s*\(([^()]*)\)", sql, re.IGNORECASE)
