"""The engine's contract on every store: fan-in, concurrency, stored results, trigger rules."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import fixture_runners as fr
from databases import create_database, drop_database
from stepline import DefinitionError, InstanceStatus, StepStatus, batch
from stepline.service import Stepline
from stepline.settings import Secret, Settings
from stepline.stores.base import InstanceRecord, StepResultRecord

W = "fixture_runners:"


@pytest.fixture
def app(db_url: str) -> Iterator[Stepline]:
    with Stepline(db=db_url) as service:
        yield service


def name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


STEP_FIELDS = {"retry", "timeout", "trigger_rule", "condition", "map"}


def s(
    key: str, nexts: list[str] | None = None, runner: str = "work", **options: Any
) -> dict[str, Any]:
    """A step; options that are not step fields become the runner's ``with`` arguments."""
    fields = {k: v for k, v in options.items() if k in STEP_FIELDS}
    args = {k: v for k, v in options.items() if k not in STEP_FIELDS}
    return {"key": key, "runner": W + runner, "next_steps": nexts or [], "with": args, **fields}


def run(
    app: Stepline, steps: list[dict[str, Any]], **options: Any
) -> tuple[InstanceRecord, dict[str, StepResultRecord]]:
    stored = app.apply(batch(name(), steps, **options))
    instance, _ = app.trigger(stored.name, owned=True)
    final = app.run_instance(instance.id)
    return final, {r.step_key: r for r in app.store.step_results(final.id) if r.map_index < 0}


def calls(final: InstanceRecord, step: str) -> int:
    return fr.calls[(final.batch, step)]


def test_fan_in_runs_once_after_all_predecessors(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("a", ["b", "c"]),
            s("b", ["d"], value=1),
            s("c", ["d"], value=2),
            s("d", runner="fan_in"),
        ],
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert calls(final, "d") == 1
    assert rows["d"].result_payload == {"seen": ["b", "c"], "values": {"b": 1, "c": 2}}
    assert rows["d"].started_at >= max(rows["b"].finished_at, rows["c"].finished_at)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("held", ["b", "c"])
def test_fan_in_waits_for_its_last_predecessor_whichever_it_is(app: Stepline, held: str) -> None:
    """Deterministic: one branch is held on a gate until the other one's success is
    committed. A fan-in that became ready early would have been started in that same
    transaction, so it is checked then, not left to timing luck."""
    gate = f"fan-in-{uuid.uuid4().hex}"
    branches = {"b": 1, "c": 2}
    steps = [
        s(key, ["d"], value=value, **({"gate": gate} if key == held else {}))
        for key, value in branches.items()
    ]
    stored = app.apply(batch(name(), [*steps, s("d", runner="fan_in")]))
    instance, _ = app.trigger(stored.name, owned=True)
    finished: list[InstanceRecord] = []
    driver = threading.Thread(target=lambda: finished.append(app.run_instance(instance.id)))
    driver.start()
    try:
        free = "c" if held == "b" else "b"
        deadline = time.monotonic() + 30
        while _status(app, instance.id, free) is not StepStatus.SUCCEEDED:
            assert time.monotonic() < deadline, f"{free} did not succeed"
            time.sleep(0.02)
        assert _status(app, instance.id, held) is StepStatus.RUNNING
        assert _status(app, instance.id, "d") is StepStatus.PENDING
        assert fr.calls[(stored.name, "d")] == 0
    finally:
        fr.gates.setdefault(gate, threading.Event()).set()
        driver.join(60)
    (final,) = finished
    rows = {r.step_key: r for r in app.store.step_results(final.id)}
    assert final.status is InstanceStatus.SUCCEEDED
    assert fr.calls[(stored.name, "d")] == 1
    assert rows["d"].result_payload == {"seen": ["b", "c"], "values": branches}
    assert rows["d"].started_at >= rows[held].finished_at


def _status(app: Stepline, instance_id: int, key: str) -> StepStatus:
    return next(r.status for r in app.store.step_results(instance_id) if r.step_key == key)


def test_wide_fan_in_runs_once(app: Stepline) -> None:
    middle = [f"m{i}" for i in range(60)]
    steps = [s("root", middle)] + [s(k, ["join"], value=i) for i, k in enumerate(middle)]
    final, rows = run(app, [*steps, s("join", runner="fan_in")])
    assert final.status is InstanceStatus.SUCCEEDED
    assert calls(final, "join") == 1
    assert rows["join"].result_payload["values"] == {k: i for i, k in enumerate(middle)}


def test_independent_branches_run_concurrently(app: Stepline) -> None:
    """Each branch waits on a shared barrier until the other is running too: run one after
    the other, the first would wait alone and fail. No wall-clock bound, so a loaded
    machine makes it slower, never red."""
    together = {"barrier": uuid.uuid4().hex, "parties": 2}
    final, rows = run(
        app,
        [
            s("left", ["join"], runner="rendezvous", **together),
            s("right", ["join"], runner="rendezvous", **together),
            s("join", runner="fan_in"),
        ],
    )
    assert final.status is InstanceStatus.SUCCEEDED, rows["left"].error or rows["right"].error
    left, right = rows["left"], rows["right"]
    # The recorded running intervals (the runners' own start and end) overlap.
    assert left.started_at < right.finished_at and right.started_at < left.finished_at
    assert rows["join"].result_payload == {
        "seen": ["left", "right"],
        "values": {"left": "left", "right": "right"},
    }


def test_async_runners_run_concurrently_on_the_event_loop(app: Stepline) -> None:
    """Five async runners meet at one barrier: they must all be awaiting at once."""
    together = {"barrier": uuid.uuid4().hex, "parties": 5}
    final, rows = run(app, [s(f"a{i}", runner="arendezvous", **together) for i in range(5)])
    assert final.status is InstanceStatus.SUCCEEDED, [r.error for r in rows.values()]
    assert all(r.result_payload["async"] for r in rows.values())


def test_results_are_stored_with_the_spec_columns(app: Stepline, db_url: str) -> None:
    final, _ = run(app, [s("one", ["two"], value={"n": 1, "text": "한글"}), s("two")])
    engine = sa.create_engine(db_url.replace("postgresql+psycopg", "postgresql+psycopg"))
    columns = {c["name"] for c in sa.inspect(engine).get_columns("batch_step_result")}
    assert {
        "id",
        "batch_instance_id",
        "step_key",
        "map_index",
        "status",
        "attempt",
        "result_payload",
        "error",
        "started_at",
        "finished_at",
        "created_at",
    } <= columns
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT step_key, status, attempt, map_index, started_at, finished_at, created_at"
                " FROM batch_step_result WHERE batch_instance_id = :i ORDER BY id"
            ),
            {"i": final.id},
        ).all()
    engine.dispose()
    assert [(r.step_key, r.status, r.attempt, r.map_index) for r in rows] == [
        ("one", "succeeded", 1, -1),
        ("two", "succeeded", 1, -1),
    ]
    assert all(r.started_at and r.finished_at and r.created_at for r in rows)
    stored = {r.step_key: r for r in app.store.step_results(final.id)}
    assert stored["one"].result_payload == {"n": 1, "text": "한글"}


def test_failure_fails_dependants_and_instance_but_handlers_run(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("collect", ["report", "alert", "cleanup"], fatal=True),
            s("report", ["publish"]),
            s("publish"),
            s("alert", trigger_rule="one_failed"),
            s("cleanup", trigger_rule="all_done"),
        ],
    )
    assert final.status is InstanceStatus.FAILED
    status = {k: r.status for k, r in rows.items()}
    assert status == {
        "collect": StepStatus.FAILED,
        "report": StepStatus.UPSTREAM_FAILED,
        "publish": StepStatus.UPSTREAM_FAILED,
        "alert": StepStatus.SUCCEEDED,
        "cleanup": StepStatus.SUCCEEDED,
    }
    assert calls(final, "report") == calls(final, "publish") == 0
    assert calls(final, "alert") == calls(final, "cleanup") == 1
    assert "collect cannot succeed" in (rows["collect"].error or "")


def test_a_final_handler_named_by_no_step_runs_last_and_sees_every_outcome(
    app: Stepline,
) -> None:
    final, rows = run(
        app,
        [
            s("start", ["collect", "optional"]),
            s("collect", ["report"], fatal=True),
            s("report"),
            s("optional", condition="params.enabled"),
            s("alert", trigger_rule="one_failed"),  # a failure watcher: the handler waits for it
            s("job_log", runner="outcomes", trigger_rule="all_done"),  # in no next_steps
        ],
        params={"enabled": False},
    )
    assert final.status is InstanceStatus.FAILED
    assert rows["job_log"].status is StepStatus.SUCCEEDED
    assert rows["job_log"].result_payload == {
        "start": "succeeded",
        "collect": "failed",
        "report": "upstream_failed",
        "optional": "skipped",
        "alert": "succeeded",
    }
    others = [r for key, r in rows.items() if key != "job_log" and r.finished_at is not None]
    assert rows["job_log"].started_at >= max(r.finished_at for r in others)  # type: ignore[type-var]
    assert calls(final, "job_log") == 1


def test_runners_reach_the_services_named_connections(tmp_path: Path) -> None:
    report = tmp_path / "report.db"
    with sa.create_engine(f"sqlite:///{report}").begin() as conn:
        conn.exec_driver_sql("CREATE TABLE farm (id INTEGER)")
        conn.exec_driver_sql("INSERT INTO farm VALUES (1), (2), (3)")
    settings = Settings(connections={"Report": Secret(f"sqlite:///{report}")})
    with Stepline(settings, db=f"sqlite:///{tmp_path / 'stepline.db'}") as service:
        step = s("count", runner="query_connection", connection="report")
        step["with"]["sql"] = "SELECT count(*) FROM farm"
        final, rows = run(service, [step])
        connections = service.connections
    assert final.status is InstanceStatus.SUCCEEDED, rows["count"].error
    assert rows["count"].result_payload == 3
    assert connections.names() == ["report"]


def test_handlers_are_skipped_when_nothing_fails(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("collect", ["report", "alert"]),
            s("report"),
            s("alert", trigger_rule="one_failed"),
        ],
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert rows["alert"].status is StepStatus.SKIPPED
    assert calls(final, "alert") == 0


def test_a_false_condition_skips_the_step(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("count", ["big", "small"], value={"n": 3}),
            s("big", condition="results.count.n > 10"),
            s("small", condition="results.count.n <= 10 and params.mode == 'x'"),
        ],
        params={"mode": "x"},
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert rows["big"].status is StepStatus.SKIPPED and rows["small"].status is StepStatus.SUCCEEDED


def test_a_non_json_result_fails_the_step_with_a_message(app: Stepline) -> None:
    final, rows = run(app, [s("bad", runner="not_json", retry={"attempts": 3})])
    assert final.status is InstanceStatus.FAILED
    assert "not JSON-serialisable" in (rows["bad"].error or "")
    assert calls(final, "bad") == 1, "a result that cannot be stored is not retried"


def test_templates_in_with_are_resolved_from_params_and_results(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("a", ["b"], value={"rows": 7}),
            s("b", value={"period": "{{ params.period }}", "rows": "{{ results.a.rows }}"}),
        ],
        params={"period": "WEEK"},
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert rows["b"].result_payload == {"period": "WEEK", "rows": 7}


def test_an_instance_keeps_the_definition_version_it_started_with(app: Stepline) -> None:
    batch_name = name()
    first = app.apply(batch(batch_name, [s("a")]))
    instance, _ = app.trigger(batch_name, owned=True)
    second = app.apply(batch(batch_name, [s("a", ["b"]), s("b")]))
    assert (first.version, second.version) == (1, 2)
    assert app.apply(batch(batch_name, [s("a", ["b"]), s("b")])).version == 2
    final = app.run_instance(instance.id)
    assert final.definition_version == 1
    assert [r.step_key for r in app.store.step_results(final.id)] == ["a"]


def test_an_invalid_definition_writes_nothing(app: Stepline) -> None:
    with pytest.raises(DefinitionError, match="cycle: a -> b -> a"):
        app.apply(batch(name(), [s("a", ["b"]), s("b", ["a"])]))
    assert app.store.definitions() == []


def test_no_transaction_is_open_while_a_runner_executes(app: Stepline, db_url: str) -> None:
    final, rows = run(app, [s("a", ["probe"]), s("probe", runner="probe_transactions", url=db_url)])
    assert final.status is InstanceStatus.SUCCEEDED, rows["probe"].error
    assert rows["probe"].result_payload == {"open_transactions": 0}


def _hold_read_transaction(conn: sa.Connection) -> None:
    """Open a transaction on ``conn`` and read in it (no write, no lock that blocks a writer)."""
    if conn.dialect.name == "sqlite":
        raw = conn.connection.driver_connection
        raw.isolation_level = None  # type: ignore[union-attr]
        raw.execute("BEGIN")  # type: ignore[union-attr]
        raw.execute("SELECT count(*) FROM batch_definition").fetchall()  # type: ignore[union-attr]
    else:
        conn.exec_driver_sql("SELECT count(*) FROM batch_definition").scalar_one()


def test_the_transaction_probe_sees_readers_of_its_own_database_only(
    app: Stepline, db_url: str, tmp_path: Path
) -> None:
    """The probe behind the test above must see a read transaction, or that test proves
    nothing; and on a shared server it must not count other tests' databases."""
    backend = sa.make_url(db_url).get_backend_name()
    (tmp_path / "o").mkdir()
    other_url, handle = create_database(
        "mariadb" if backend == "mysql" else backend, tmp_path / "o"
    )
    connect_args = {"check_same_thread": False} if backend == "sqlite" else {}
    engines = [
        sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args)
        for url in (db_url, other_url)
    ]
    try:
        with Stepline(db=other_url):
            pass  # the other database gets Stepline's tables too
        mine, other = engines
        with other.connect() as elsewhere:
            _hold_read_transaction(elsewhere)
            final, rows = run(app, [s("probe", runner="probe_transactions", url=db_url)])
            assert rows["probe"].result_payload == {"open_transactions": 0}, rows["probe"].error
            with mine.connect() as reader:
                _hold_read_transaction(reader)
                final, rows = run(app, [s("probe", runner="probe_transactions", url=db_url)])
        assert final.status is InstanceStatus.SUCCEEDED, rows["probe"].error
        assert rows["probe"].result_payload == {"open_transactions": 1}
    finally:
        for engine in engines:
            engine.dispose()
        drop_database("mariadb" if backend == "mysql" else backend, handle)


@pytest.mark.parametrize("collect_fails", [True, False])
def test_a_failure_handler_named_by_no_step_watches_the_whole_batch(
    app: Stepline, collect_fails: bool
) -> None:
    """The SPEC's weekly_report shape: alert_admin (one_failed) is in no next_steps."""
    final, rows = run(
        app,
        [
            s("collect_stats", ["check"], fatal=collect_fails),
            s("collect_weather", ["check"]),
            s("check", ["run_report"]),
            s("run_report"),
            s("alert_admin", trigger_rule="one_failed"),
        ],
    )
    status = {k: r.status for k, r in rows.items()}
    if collect_fails:
        assert final.status is InstanceStatus.FAILED
        assert status["run_report"] is StepStatus.UPSTREAM_FAILED
        assert status["alert_admin"] is StepStatus.SUCCEEDED
        assert calls(final, "run_report") == 0
    else:
        assert final.status is InstanceStatus.SUCCEEDED
        assert status["alert_admin"] is StepStatus.SKIPPED
        assert calls(final, "alert_admin") == 0
        assert rows["alert_admin"].started_at is None
    # It alerts as soon as a step fails, not after the batch: test_trigger_rules.py.


def test_a_mapped_step_runs_once_per_item_with_bounded_concurrency(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("list", ["each"], value=list(range(12))),
            s(
                "each",
                ["total"],
                runner="item_work",
                sleep=0.05,
                map={"over": "list", "concurrency": 3},
            ),
            s("total", runner="fan_in"),
        ],
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert fr.calls[(final.batch, "each")] == 12
    assert fr.peak[final.batch] <= 3
    items = [r for r in app.store.step_results(final.id) if r.step_key == "each"]
    assert [r.map_index for r in items] == [-1, *range(12)]
    assert all(r.status is StepStatus.SUCCEEDED for r in items)
    expected = [{"item": i, "double": 2 * i} for i in range(12)]
    assert rows["each"].result_payload == expected  # the step's row holds the item list
    assert rows["total"].result_payload["values"]["each"] == expected


def test_a_mapped_step_over_params_and_over_an_empty_list(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("each", ["empty"], runner="item_work", map={"over": "farms"}),
            s("empty", runner="item_work", map={"over": "nothing"}),
        ],
        params={"farms": ["F1", "F2"], "nothing": []},
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert [r["item"] for r in rows["each"].result_payload] == ["F1", "F2"]
    assert rows["empty"].result_payload == []


def test_a_mapped_step_over_a_non_list_fails_with_a_message(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("one", ["each"], value={"not": "a list"}),
            s("each", runner="item_work", map={"over": "one"}),
        ],
    )
    assert final.status is InstanceStatus.FAILED
    assert "is a dict, not a list" in (rows["each"].error or "")


def test_retry_reruns_only_the_failed_items(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("list", ["each"], value=list(range(10))),
            s(
                "each",
                ["after"],
                runner="item_work",
                fail_items=[2, 5, 7],
                retry={"attempts": 2, "backoff": "10ms"},
                map={"over": "list", "concurrency": 4},
            ),
            s("after", runner="fan_in"),
        ],
    )
    assert final.status is InstanceStatus.FAILED
    assert "3 of 10 items failed: each[2], each[5], each[7]" in (rows["each"].error or "")
    assert rows["after"].status is StepStatus.UPSTREAM_FAILED
    assert fr.calls[(final.batch, "each")] == 10 + 3  # three items tried twice
    fr.healed.add(final.batch)
    app.retry(final.id)
    again = app.run_instance(final.id)
    assert again.status is InstanceStatus.SUCCEEDED
    assert fr.calls[(final.batch, "each")] == 13 + 3  # only the three failed items again
    assert fr.calls[(final.batch, "list")] == 1
    for i in range(10):
        assert fr.calls[(final.batch, f"each[{i}]")] == (3 if i in (2, 5, 7) else 1)
    after = {r.step_key: r for r in app.store.step_results(final.id) if r.map_index < 0}
    assert [r["item"] for r in after["each"].result_payload] == list(range(10))
