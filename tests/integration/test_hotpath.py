"""The store's per-step statements: fenced batch recording, and the indexes that keep the
claims and the upstream countdown linear in the size of an instance."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from databases import create_database, drop_database
from stepline.core.definition import batch, step
from stepline.core.states import StepStatus
from stepline.stores.base import ClaimedStep, StepOutcome
from stepline.stores.hotpath import HotStatement
from stepline.stores.sqlalchemy import SqlAlchemyStore
from stepline.stores.transaction import (
    _ITEMS_DONE,
    _QUEUED_ITEMS,
    _QUEUED_STEPS,
    _UPSTREAM_DONE,
    _UPSTREAM_DONE_START,
)

OWNER = "test:1:aa"
RUNNER = "fixture_runners:work"


def _started(store: SqlAlchemyStore, keys: list[str]) -> tuple[int, list[ClaimedStep]]:
    stored = store.apply(batch("b", [step(k, RUNNER) for k in keys]))
    instance, _ = store.create_instance(stored, {}, "test", owner=OWNER)
    with store.instance_transaction(instance.id) as tx:
        ready = tx.pending_ready()
        claimed = tx.start(ready, 10, OWNER, now=datetime.now(UTC))
    return instance.id, claimed


def _outcome(c: ClaimedStep, *, attempt: int | None = None, ok: bool = True) -> StepOutcome:
    now = datetime.now(UTC)
    return StepOutcome(
        row_id=c.row_id,
        step_key=c.step_key,
        map_index=-1,
        attempt=c.attempt if attempt is None else attempt,
        succeeded=ok,
        payload='{"n":1}' if ok else None,
        error=None if ok else "ValueError: no",
        started_at=now,
        finished_at=now,
    )


def test_a_burst_of_outcomes_is_recorded_with_each_fenced(db_url: str) -> None:
    store = SqlAlchemyStore(db_url)
    store.initialize()
    try:
        instance_id, claimed = _started(store, ["a", "b", "c", "d"])
        a, b, c, d = sorted(claimed, key=lambda x: x.step_key)
        burst = [
            (_outcome(a), None),
            (_outcome(b, attempt=b.attempt + 5), None),  # a stale attempt: fenced off
            (_outcome(c, ok=False), None),
            (_outcome(d, ok=False), datetime.now(UTC)),  # a retry
        ]
        with store.instance_transaction(instance_id) as tx:
            assert tx.record_many(burst, owner=OWNER) == [True, False, True, True]
        rows = {r.step_key: r for r in store.step_results(instance_id)}
        assert rows["a"].status is StepStatus.SUCCEEDED and rows["a"].result_payload == {"n": 1}
        assert rows["b"].status is StepStatus.RUNNING
        assert rows["c"].status is StepStatus.FAILED
        assert rows["d"].status is StepStatus.QUEUED
        assert sorted(a.step_key for a in store.attempts(instance_id)) == ["c", "d"]
    finally:
        store.dispose()


def _plan(store: SqlAlchemyStore, sql: str, params: dict[str, object]) -> str:
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params).all()
    return " | ".join(str(r[-1]) for r in rows)


@pytest.fixture
def pg_store(tmp_path: Path) -> Iterator[SqlAlchemyStore]:
    """A store on a new PostgreSQL database: no statistics, as after a first deployment
    (or anywhere autovacuum has not run yet)."""
    url, handle = create_database("postgresql", tmp_path)
    store = SqlAlchemyStore(url)
    try:
        store.initialize()
        yield store
    finally:
        store.dispose()
        drop_database("postgresql", handle)


def _explained(
    store: SqlAlchemyStore, statement: HotStatement, params: dict[str, Any]
) -> dict[str, Any]:
    """PostgreSQL's plan of ``statement`` run as the store sends it (lists and times
    alike), with what it read; its changes rolled back."""
    explain = HotStatement(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement.sql, times=statement.times
    )
    with store.engine.connect() as conn:
        plan: dict[str, Any] = explain.run(conn, params).fetchone()[0][0]["Plan"]
        conn.rollback()
    return plan


def _read(node: Mapping[str, Any]) -> int:
    """The pages a plan node read (from the cache or not)."""
    return int(node["Shared Hit Blocks"] + node["Shared Read Blocks"])


def test_the_per_step_statements_seek_their_rows(tmp_path: Path) -> None:
    """On SQLite the plans are stable: each statement uses an index that starts at its
    rows, so a claim does not walk past every finished item (quadratic in a wide map)."""
    store = SqlAlchemyStore(f"sqlite:///{tmp_path}/plans.db")
    store.initialize()
    try:
        now = "2026-01-01 00:00:00.000000"
        items = _QUEUED_ITEMS.sql.replace(":limit", "50")
        plan = _plan(store, items, {"iid": 1, "key": "each", "now": now, "after": 100})
        assert "USING INDEX ix_step_result_items" in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # map_index order comes from the index
        steps = _QUEUED_STEPS.sql.replace(":limit", "50")
        plan = _plan(store, steps, {"iid": 1, "now": now})
        assert "USING INDEX ix_step_result_queue" in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # id order comes from the index
        countdown = _UPSTREAM_DONE.sql.replace(":ids", "(:k0, :k1)")
        plan = _plan(store, countdown, {"amount": 1, "k0": 1, "k1": 2})
        # One row per step, by primary key (not a scan of the instance's pending rows).
        assert "INTEGER PRIMARY KEY" in plan, plan
    finally:
        store.dispose()


def test_a_finished_item_counts_down_its_step_without_reading_the_others(
    pg_store: SqlAlchemyStore,
) -> None:
    """Each transaction that records items counts down their step's own row. On
    PostgreSQL, with no statistics yet (a new instance, autovacuum not run), the planner
    took ix_step_result_items for it and read every item's index entry: the per-item cost
    of a 50,000-item map was twice a 5,000-item one's. Found by the buffers it reads."""
    instance_id = _mapped_instance(pg_store, 5000)
    with pg_store.instance_transaction(instance_id) as tx:
        (parent,) = tx.row_ids(["each"])
    top = _explained(pg_store, _ITEMS_DONE, {"n": 1, "id": parent})
    assert top["Plans"][0]["Actual Rows"] == 1, top
    # One seek: a few index pages and the row's heap page (the items span dozens).
    assert _read(top) <= 10, top


def _mapped_instance(store: SqlAlchemyStore, items: int) -> int:
    """An instance whose mapped step ``each`` is running with ``items`` queued items."""
    definition = batch(
        "m", [step("list", RUNNER, ["each"]), step("each", RUNNER, map={"over": "list"})]
    )
    instance, _ = store.create_instance(store.apply(definition), {}, "test", owner=OWNER)
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE batch_step_result SET status = 'running' WHERE step_key = 'each'"
        )
    with store.instance_transaction(instance.id) as tx:
        tx.expand("each", items)
    return instance.id


def _claim(store: SqlAlchemyStore, instance_id: int, limit: int) -> list[ClaimedStep]:
    with store.instance_transaction(instance_id) as tx:
        return tx.claim_items("each", limit, OWNER, now=datetime.now(UTC))


def test_items_queued_again_behind_the_claims_are_claimed_too(db_url: str) -> None:
    """The claim seeks past the items this process already claimed. A retry it decided is
    claimed once due, before the items after it; an item queued again behind the cursor
    that it does not know of (a lost attempt) is found once the items ahead run out; a
    process that claimed nothing yet starts from item 0."""
    store = SqlAlchemyStore(db_url)
    store.initialize()
    other = SqlAlchemyStore(db_url)  # another process: cursors of its own
    try:
        instance_id = _mapped_instance(store, 8)
        first = _claim(store, instance_id, 3)
        assert [c.map_index for c in first] == [0, 1, 2]
        now = datetime.now(UTC)

        def fail(claimed: ClaimedStep, retry_at: datetime) -> None:
            with store.instance_transaction(instance_id) as tx:
                outcome = replace(_outcome(claimed, ok=False), map_index=claimed.map_index)
                assert tx.record(outcome, retry_at=retry_at, owner=OWNER)

        fail(first[1], now - timedelta(seconds=1))  # due
        again = _claim(store, instance_id, 2)
        assert [(c.map_index, c.attempt) for c in again] == [(1, 2), (3, 1)]
        fail(again[1], now + timedelta(hours=1))  # item 3: not due for an hour
        assert [c.map_index for c in _claim(store, instance_id, 2)] == [4, 5]
        assert [c.map_index for c in _claim(other, instance_id, 1)] == [6]  # from item 0
        with store.instance_transaction(instance_id) as tx:  # item 2 is lost, queued again
            tx.conn.exec_driver_sql(
                "UPDATE batch_step_result SET status = 'queued'"
                " WHERE step_key = 'each' AND map_index = 2"
            )
        late = _claim(store, instance_id, 5)
        assert [(c.map_index, c.attempt) for c in late] == [(7, 1), (2, 2)]
        assert _claim(store, instance_id, 5) == []  # item 3 waits for its retry
    finally:
        other.dispose()
        store.dispose()


def test_a_claim_late_in_a_wide_map_seeks_its_items(pg_store: SqlAlchemyStore) -> None:
    """Late in a map, a claim from item 0 walks an index entry (on PostgreSQL, a dead row
    version until vacuum) for every item claimed before it: 13 ms a claim at 40,000 of
    50,000 items. The store keeps where its claims got to and seeks there."""
    store = pg_store
    instance_id = _mapped_instance(store, 3000)
    for _ in range(30):
        claimed = _claim(store, instance_id, 100)
        with store.instance_transaction(instance_id) as tx:
            outcomes = [(replace(_outcome(c), map_index=c.map_index), None) for c in claimed]
            assert all(tx.record_many(outcomes, owner=OWNER))
    assert claimed[-1].map_index == 2999
    with store.engine.begin() as conn:  # two items near the end are queued again
        conn.exec_driver_sql(
            "UPDATE batch_step_result SET status = 'queued' WHERE map_index IN (2990, 2995)"
        )

    def buffers(after: int) -> int:
        params = {"iid": instance_id, "key": "each", "limit": 1, "after": after}
        # The claim's own search, without its update.
        top = _explained(store, _QUEUED_ITEMS, {**params, "now": datetime.now(UTC)})
        assert top["Actual Rows"] == 1, top
        return _read(top)

    # The store claims after the last item it claimed: a seek to a few pages, where
    # from item 0 the search reads the entries of the 3,000 items claimed before.
    assert store._item_cursors.after[(instance_id, "each")] == 2999
    assert buffers(-1) > 3 * buffers(2989), (buffers(-1), buffers(2989))
    # Nothing after the cursor: the claim looks from the start for the items queued
    # again behind it.
    again = _claim(store, instance_id, 1)
    assert [c.map_index for c in again] == [2990]


def test_the_indexes_are_in_the_schema() -> None:
    from stepline.stores.schema import batch_step_result

    indexes = {i.name: [c.name for c in i.columns] for i in batch_step_result.indexes}
    assert indexes["ix_step_result_items"] == [
        "batch_instance_id",
        "step_key",
        "status",
        "map_index",
    ]
    # id last: PostgreSQL keeps equal keys in heap order, so without it every claim of
    # queued steps sorted all of them.
    assert indexes["ix_step_result_queue"] == ["batch_instance_id", "status", "map_index", "id"]


@pytest.mark.parametrize("mapped", [False, True])
def test_adopting_an_instance_reads_no_definition(tmp_path: Path, mapped: bool) -> None:
    """The driver adopts every instance it runs; the version it started with is already
    in memory, so adoption reads and decodes no stored document. Nor does it compile and
    run the typed query of steps left running when a cheap probe finds none, with a mapped
    step (whose own row is excluded from that query) or without."""
    from sqlalchemy import event

    from stepline.service import Stepline

    steps = [step("a", "fixture_runners:work")]
    if mapped:
        steps = [
            step("a", "fixture_runners:work", ["each"], args={"value": [1, 2]}),
            step("each", "fixture_runners:work", map={"over": "a"}),
        ]
    app = Stepline(db=f"sqlite:///{tmp_path}/adopt.db")
    try:
        app.apply(batch("b", steps))
        instance, _ = app.trigger("b", owned=True)
        seen: list[str] = []
        event.listen(app.store.engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
        assert app.run_instance(instance.id).status == "succeeded"
        assert not [sql for sql in seen if "batch_definition_version" in sql]
        assert not [sql for sql in seen if "batch_step_result.started_at" in sql], seen
    finally:
        app.close()


def test_applying_an_unchanged_definition_in_a_new_process_does_not_parse_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stepline run FILE` applies the file it has just parsed; when the stored version is
    the same document, that definition is the version's (parsing 500 steps back: ~5 ms)."""
    import stepline.stores.sqlalchemy as module

    url = f"sqlite:///{tmp_path}/apply.db"
    first = SqlAlchemyStore(url)
    first.initialize()
    definition = batch(
        "b", [step("a", "fixture_runners:work", ["b"]), step("b", "fixture_runners:work")]
    )
    first.apply(definition)
    first.dispose()
    again = SqlAlchemyStore(url)  # a new process: nothing cached
    parsed: list[object] = []
    real = module.parse_definition
    monkeypatch.setattr(
        module, "parse_definition", lambda *a, **k: parsed.append(a) or real(*a, **k)
    )
    stored = again.apply(
        batch("b", [step("a", "fixture_runners:work", ["b"]), step("b", "fixture_runners:work")])
    )
    assert stored.version == 1 and parsed == []
    assert again.definition("b").definition == definition
    again.dispose()


def test_a_countdown_starts_the_steps_decided_to_run(db_url: str) -> None:
    """``upstream_done(start=...)`` counts down and starts in one statement; ``start``
    returns those first and within its limit; a key the statement did not take (other
    upstream steps left) is counted down as usual and left pending."""
    store = SqlAlchemyStore(db_url)
    store.initialize()
    try:
        stored = store.apply(
            batch(
                "fused",
                [
                    step("a", "fixture_runners:work", ["x", "y"]),
                    step("b", "fixture_runners:work", ["y"]),
                    step("x", "fixture_runners:work"),
                    step("y", "fixture_runners:work"),
                ],
            )
        )
        instance, _ = store.create_instance(stored, {}, "test", owner=OWNER)
        now = datetime.now(UTC)
        with store.instance_transaction(instance.id) as tx:
            claimed = tx.start(tx.pending_ready(), 10, OWNER, now=now)
            assert sorted(c.step_key for c in claimed) == ["a", "b"]
        a = next(c for c in claimed if c.step_key == "a")
        with store.instance_transaction(instance.id) as tx:
            assert tx.record_many([(_outcome(a), None)], owner=OWNER) == [True]
            ready = tx.upstream_done({"x": 1, "y": 1}, start=["x", "y"], owner=OWNER, now=now)
            assert ready == ["x"]  # y still waits for b
            started = tx.start(ready, 1, OWNER, now=now)
        assert [(c.step_key, c.attempt) for c in started] == [("x", 1)]
        rows = {r.step_key: r for r in store.step_results(instance.id)}
        assert rows["x"].status is StepStatus.RUNNING and rows["x"].attempt == 1
        assert rows["y"].status is StepStatus.PENDING
        b = next(c for c in claimed if c.step_key == "b")
        with store.instance_transaction(instance.id) as tx:
            tx.record_many([(_outcome(b), None)], owner=OWNER)
            assert tx.upstream_done({"y": 1}, start=["y"], owner=OWNER, now=now) == ["y"]
            assert [c.step_key for c in tx.start(["y"], 5, OWNER, now=now)] == ["y"]
        with store.instance_transaction(instance.id) as tx:
            # A countdown of a step that is no longer pending changes nothing.
            assert tx.upstream_done({"y": 1}, start=["y"], owner=OWNER, now=now) == []
        rows = {r.step_key: r for r in store.step_results(instance.id)}
        assert rows["y"].status is StepStatus.RUNNING and rows["y"].attempt == 1
    finally:
        store.dispose()


def test_a_countdown_late_in_a_chain_seeks_its_one_step(pg_store: SqlAlchemyStore) -> None:
    """A chain step counts its successor down by key. With the key sent as ``= ANY`` and
    the pending status as an index key, PostgreSQL took ix_step_result_queue (instance,
    status) and walked the entries of every step that had been pending, old row versions
    included: a 3,000-step chain grew quadratic. Found by the buffers the statement reads,
    as the store sends it."""
    store = pg_store
    keys = [f"s{i}" for i in range(1000)]
    steps = [step(k, RUNNER, [keys[i + 1]] if i < 999 else []) for i, k in enumerate(keys)]
    instance, _ = store.create_instance(store.apply(batch("c", steps)), {}, "t", owner=OWNER)
    with store.engine.begin() as conn:  # 900 steps ran: each left its pending entries
        for status in ("running", "succeeded"):
            conn.exec_driver_sql(
                f"UPDATE batch_step_result SET status = '{status}'"
                " WHERE CAST(SUBSTR(step_key, 2) AS INTEGER) < 900"
            )
    with store.instance_transaction(instance.id) as tx:
        ids = tx.row_ids(["s900"])
    params = {"amount": 1, "ids": ids, "owner": OWNER, "now": datetime.now(UTC)}
    top = _explained(store, _UPSTREAM_DONE_START, params)
    scan = top["Plans"][0]
    assert scan["Actual Rows"] == 1, top
    assert scan.get("Rows Removed by Filter", 0) == 0, top
    assert _read(scan) <= 6, top


def test_a_list_of_thousands_of_keys_is_answered_whole_and_sent_as_one_array(db_url: str) -> None:
    """PostgreSQL takes a list as one array (``= ANY``): a 1,200-step fan-out's statuses
    are read in one statement by primary key, not in lists of 500; other databases keep
    lists of 500. Either way every key is answered."""
    from stepline.stores.transaction import _STATUSES_OF

    assert "id = ANY(%(ids)s)" in _STATUSES_OF._arrays
    store = SqlAlchemyStore(db_url)
    store.initialize()
    try:
        keys = [f"f{i}" for i in range(1200)]
        stored = store.apply(
            batch("wide", [step("root", RUNNER, keys), *(step(k, RUNNER) for k in keys)])
        )
        instance, _ = store.create_instance(stored, {}, "cli", owner="o")
        with store.instance_transaction(instance.id, instance) as tx:
            assert tx.statuses(keys) == dict.fromkeys(keys, StepStatus.PENDING)
            assert tx.pending_among(keys[::-1]) != []
    finally:
        store.dispose()


def test_sqlite_takes_a_list_as_positional_binds(tmp_path: Path) -> None:
    """SQLite looks every ``:name`` up among the names seen before it while it prepares a
    statement: a list of 500 named binds took 2.4 ms to prepare, 0.4 ms as ``?``. With a
    list the whole statement goes positional; a name used twice, a time and an empty list
    still bind where they belong."""
    import sqlite3

    statement = HotStatement(
        "SELECT id, label FROM t WHERE id IN :ids AND (label = :label OR note = :label)"
        " AND at < :before AND id NOT IN :skip ORDER BY id",
        times=["before"],
    )
    raw = sqlite3.connect(tmp_path / "binds.db")
    raw.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, label TEXT, note TEXT, at TEXT)")
    at = "2026-01-01 00:00:00.000000"
    raw.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?)",
        [(i, "a" if i % 2 else "b", "a" if i % 3 == 0 else "c", at) for i in range(600)],
    )
    sent: list[str] = []

    class Cursor(sqlite3.Cursor):
        def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
            sent.append(sql)
            return super().execute(sql, parameters)

    cursor = raw.cursor(Cursor)
    later = datetime(2026, 1, 2, tzinfo=UTC)
    params = {"ids": list(range(500)), "label": "a", "before": later, "skip": [1, 3]}
    rows = statement.run_on(cursor, True, params).fetchall()
    expected = [(i, "a" if i % 2 else "b") for i in range(500) if i % 2 or i % 3 == 0]
    assert rows == [r for r in expected if r[0] not in (1, 3)]
    assert ":" not in sent[-1] and sent[-1].count("?") == 505, sent[-1][:200]
    # The same shape again reuses the text; an empty list matches nothing.
    assert statement.run_on(cursor, True, {**params, "ids": []}).fetchall() == []
    earlier = datetime(2025, 1, 1, tzinfo=UTC)
    assert statement.run_on(cursor, True, {**params, "before": earlier}).fetchall() == []
    raw.close()
