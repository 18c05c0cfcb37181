"""The fences of the remote (celery) path at the store and engine level, on every store:
pickup by attempt, handed-over claims, lost attempts, the worker's job without a broker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import remote_runners as rr
from faults import Faults, install
from stepline import InstanceStatus, StepStatus, batch
from stepline.dispatchers.base import RemoteDispatcher, StepMessage
from stepline.engine.advance import advance
from stepline.engine.remote import Recorder, RemoteOrchestrator, StepJob, lost_outcome
from stepline.service import Stepline
from stepline.stores.base import StepOutcome
from stepline.stores.sqlalchemy import SqlAlchemyStore


class Outbox(RemoteDispatcher):
    """A dispatcher that keeps what would be published, so a test delivers it by hand."""

    capacity = 1000

    def __init__(self) -> None:
        self.sent: list[StepMessage] = []

    def start(self, report: Any) -> None:
        pass

    def send(self, messages: Any) -> None:
        self.sent.extend(messages)

    def shutdown(self, wait: bool = True) -> None:
        pass


@pytest.fixture
def store(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SqlAlchemyStore]:
    monkeypatch.setenv("STEPLINE_TEST_CALLS", str(tmp_path))
    with Stepline(db=db_url) as service:
        yield service.store


def step(key: str, nexts: list[str] | None = None, **options: Any) -> dict[str, Any]:
    fields = {k: v for k, v in options.items() if k in ("retry", "map", "timeout")}
    args = {k: v for k, v in options.items() if k not in fields}
    return {
        "key": key,
        "runner": "remote_runners:work",
        "next_steps": nexts or [],
        "with": args,
        **fields,
    }


def start(
    store: SqlAlchemyStore, steps: list[dict[str, Any]]
) -> tuple[RemoteOrchestrator, Outbox, int]:
    stored = store.apply(batch(f"t{uuid.uuid4().hex[:10]}", steps))
    outbox = Outbox()
    owner = RemoteOrchestrator(store, outbox, lease_seconds=5)
    instance = owner.start(stored)
    owner.adopt(instance.id)
    return owner, outbox, instance.id


def test_claims_are_handed_over_without_an_owner_and_picked_up_once(store: SqlAlchemyStore) -> None:
    owner, outbox, iid = start(store, [step("a")])
    (message,) = outbox.sent
    running = store.running_steps([iid])
    assert [(r.row_id, r.attempt, r.owner_id) for r in running] == [(message.row_id, 1, None)]
    assert store.pickup(message.row_id, 0, "w:1:a") is None, "a stale attempt was picked up"
    assert store.pickup(message.row_id, 2, "w:1:a") is None, "an unknown attempt was picked up"
    picked = store.pickup(message.row_id, 1, "w:1:a")
    assert picked is not None and picked[1].step_key == "a" and picked[0] == iid
    assert store.pickup(message.row_id, 1, "w:2:b") is None, "a duplicate delivery was picked up"
    assert [r.owner_id for r in store.running_steps([iid])] == ["w:1:a"]
    owner.close()


def test_a_message_of_several_steps_picks_each_up_once_in_one_go(store: SqlAlchemyStore) -> None:
    keys = [f"r{i}" for i in range(5)]
    owner, outbox, iid = start(store, [*(step(k, ["join"]) for k in keys), step("join")])
    ids = [m.row_id for m in outbox.sent]
    assert len(ids) == 5 and {m.attempt for m in outbox.sent} == {1}
    assert store.pickup_many(ids, 2, "w:1:a") == [], "an attempt not yet made was picked up"
    first = store.pickup_many(ids[1:4], 1, "w:1:a")
    assert [(i, c.step_key, c.row_id) for i, c in first] == [
        (iid, k, r) for k, r in zip(keys[1:4], ids[1:4], strict=True)
    ]
    # A second delivery of the whole lot (a redelivery, a duplicate) gets only what is free.
    job = StepJob(store, "w:2:b")
    ran = list(job.run_many(list(reversed(ids)), 1, send=outbox.send))
    assert [f.outcome.step_key for f in ran] == ["r4", "r0"], "given order, taken ones left out"
    assert list(job.run_many(ids, 1, send=outbox.send)) == []
    assert len(outbox.sent) == 5, "nothing was handed back"
    owners = {r.step_key: r.owner_id for r in store.running_steps([iid])}
    assert owners == {"r0": "w:2:b", "r1": "w:1:a", "r2": "w:1:a", "r3": "w:1:a", "r4": "w:2:b"}
    assert job.record(ran[0].instance, ran[0].definition, *(f.outcome for f in ran)) == []
    other = StepJob(store, "w:1:a")
    rest = [other.execute(i, c) for i, c in first]
    (join,) = other.record(rest[0].instance, rest[0].definition, *(f.outcome for f in rest))
    assert other(iid, join.row_id, 1) == []
    assert store.instance(iid).status is InstanceStatus.SUCCEEDED
    assert [rr.calls(store.instance(iid).batch, k) for k in [*keys, "join"]] == [1] * 6
    owner.close()


def test_steps_of_a_message_not_started_in_time_are_handed_back_during_a_long_step(
    store: SqlAlchemyStore,
) -> None:
    keys = [f"r{i}" for i in range(4)]
    owner, outbox, iid = start(store, [step("r0", sleep=0.6), *(step(k) for k in keys[1:])])
    ids = [m.row_id for m in outbox.sent]
    outbox.sent.clear()
    sent_at: list[float] = []

    def send(messages: Any) -> None:
        sent_at.append(time.monotonic())
        outbox.send(messages)

    job = StepJob(store, "w:1:a")
    parcel = job.run_many(ids, 1, send=send, seconds=0.2)
    first = next(parcel)
    ended = time.monotonic()
    assert list(parcel) == [], "only the step that had started ran here"
    assert first.outcome.step_key == "r0"
    assert sent_at and sent_at[0] < ended - 0.2, "not handed back while r0 ran"
    assert [(m.row_id, m.attempt) for m in outbox.sent] == [(r, 1) for r in ids[1:]]
    owners = {r.step_key: r.owner_id for r in store.running_steps([iid])}
    assert owners == {"r0": "w:1:a", "r1": None, "r2": None, "r3": None}
    assert [c.step_key for _, c in store.pickup_many(ids[1:], 1, "w:2:b")] == keys[1:]
    assert rr.calls(store.instance(iid).batch, "r1") == 0
    owner.close()


def test_a_pickup_or_hand_back_made_again_after_an_unconfirmed_commit_gets_the_same_rows(
    store: SqlAlchemyStore,
) -> None:
    """The connection may fail after the database committed: the worker makes the same call
    again (same time), which must find what the first one did, not leave the rows to a
    process that thinks it does not hold them, or hand them out twice."""
    owner, outbox, _ = start(store, [step(f"r{i}") for i in range(4)])
    ids = [m.row_id for m in outbox.sent]
    at = datetime.now(UTC)
    first = store.pickup(ids[0], 1, "w:1:a", now=at)
    assert first is not None
    assert store.pickup(ids[0], 1, "w:1:a", now=at) == first, "its own pickup, made again"
    assert store.pickup(ids[0], 1, "w:1:a") is None, "a later delivery to the same process"
    assert store.pickup(ids[0], 1, "w:2:b", now=at) is None, "another process"
    many = store.pickup_many(ids[1:], 1, "w:1:a", now=at)
    assert store.pickup_many(ids[1:], 1, "w:1:a", now=at) == many
    assert store.pickup_many(ids[1:], 1, "w:1:a") == []
    assert store.hand_back(ids[1:], 1, "w:1:a", picked_at=at) == ids[1:]
    assert store.hand_back(ids[1:], 1, "w:1:a", picked_at=at) == ids[1:], "made again"
    later = datetime.now(UTC)
    assert [c.step_key for _, c in store.pickup_many(ids[1:], 1, "w:2:b", now=later)] == [
        "r1", "r2", "r3"
    ]  # fmt: skip
    assert store.hand_back(ids[1:], 1, "w:1:a", picked_at=at) == [], "taken since"
    assert store.hand_back(ids, 1, "w:2:b", picked_at=later) == ids[1:], "only its own pickup"
    owner.close()


def test_steps_of_a_message_cancelled_meanwhile_are_neither_run_nor_sent_again(
    store: SqlAlchemyStore,
) -> None:
    keys = [f"r{i}" for i in range(4)]
    owner, outbox, iid = start(store, [step(k) for k in keys])
    ids = [m.row_id for m in outbox.sent]
    outbox.sent.clear()
    at = datetime.now(UTC)
    assert len(store.pickup_many(ids[:2], 1, "w:1:a", now=at)) == 2  # a message half taken
    with store.instance_transaction(iid) as tx:
        tx.request_cancel()
        tx.cancel_unfinished()
    assert store.hand_back(ids[:2], 1, "w:1:a", picked_at=at) == [], "a cancelled step"
    job = StepJob(store, "w:2:b")
    assert list(job.run_many(ids, 1, send=outbox.send)) == [], "a message taken after it"
    assert outbox.sent == [] and rr.calls(store.instance(iid).batch, "r2") == 0
    owner.close()


def test_a_duplicate_delivery_runs_the_runner_once(store: SqlAlchemyStore) -> None:
    owner, outbox, iid = start(store, [step("a", ["b"]), step("b")])
    job = StepJob(store, "w:1:a")
    (first,) = outbox.sent
    successors = job(first.instance_id, first.row_id, first.attempt)
    assert job(first.instance_id, first.row_id, first.attempt) == []
    assert [m.attempt for m in successors] == [1]
    assert job(iid, successors[0].row_id, 1) == []
    assert job(iid, successors[0].row_id, 1) == []
    final = store.instance(iid)
    assert final.status is InstanceStatus.SUCCEEDED, "the last worker ends the instance"
    assert (rr.calls(final.batch, "a"), rr.calls(final.batch, "b")) == (1, 1)
    owner.close()


def test_the_worker_advances_the_dag_and_claims_successors_itself(store: SqlAlchemyStore) -> None:
    owner, outbox, iid = start(
        store, [step("a", ["b", "c"]), step("b", ["d"]), step("c", ["d"]), step("d")]
    )
    job = StepJob(store, "w:1:a")
    (a,) = outbox.sent
    b, c = job(iid, a.row_id, 1)
    assert job(iid, b.row_id, 1) == [], "the fan-in waits for both predecessors"
    (d,) = job(iid, c.row_id, 1)
    assert job(iid, d.row_id, 1) == []
    assert store.instance(iid).status is InstanceStatus.SUCCEEDED
    assert len(outbox.sent) == 1, "the owner sent only the root"
    owner.close()


def test_outcomes_recorded_together_claim_the_fan_in_once(store: SqlAlchemyStore) -> None:
    keys = [f"b{i}" for i in range(5)]
    owner, outbox, iid = start(store, [step("a", keys), *(step(k, ["c"]) for k in keys), step("c")])
    job = StepJob(store, "w:1:a")
    (a,) = outbox.sent
    siblings = job(iid, a.row_id, 1)
    finished = [job.run(iid, m.row_id, m.attempt) for m in siblings]
    assert job.run(iid, siblings[0].row_id, 1) is None, "a duplicate delivery ran"
    ran = [f for f in finished if f is not None]
    assert len(ran) == 5
    # Three outcomes in one transaction: the fan-in still waits for the other two.
    instance, definition = ran[0].instance, ran[0].definition
    assert job.record(instance, definition, *(f.outcome for f in ran[:3])) == []
    # The last two through a process's recorder thread, which sends what they claimed.
    sent: list[StepMessage] = []
    recorder = Recorder(job, sent.extend)
    for f in ran[3:]:
        recorder.put(f)
    recorder.flush()
    (c,) = sent
    assert job(iid, c.row_id, c.attempt) == []
    recorder.close()
    final = store.instance(iid)
    assert final.status is InstanceStatus.SUCCEEDED
    assert [rr.calls(final.batch, k) for k in ["a", *keys, "c"]] == [1] * 7
    owner.close()


def test_a_lost_attempt_is_retried_at_least_once_then_fails(store: SqlAlchemyStore) -> None:
    owner, outbox, iid = start(store, [step("a")])
    definition = store.definition_for(store.instance(iid))
    (message,) = outbox.sent
    for attempt, expected in ((1, StepStatus.QUEUED), (2, StepStatus.FAILED)):
        assert store.pickup(message.row_id, attempt, f"w:{attempt}:dead") is not None
        (r,) = store.running_steps([iid])
        lost = lost_outcome(definition.step("a"), r, datetime.now(UTC))
        with store.instance_transaction(iid) as tx:
            advance(
                tx, definition, [lost], owner="owner", now=datetime.now(UTC), slots=10,
                look_for_queued=True, results={}, idle=True, params={}, handoff=True,
            )  # fmt: skip
        row = store.step_results(iid)[0]
        assert row.status is expected, (attempt, row)
        with store.instance_transaction(iid) as tx:  # the owner, once the backoff is over
            later = datetime.now(UTC) + timedelta(hours=1)
            advance(
                tx, definition, [], owner="owner", now=later, slots=10,
                look_for_queued=True, results={}, idle=True, params={}, handoff=True,
            )  # fmt: skip
    assert row.error is not None and row.error.startswith("lost: its worker w:2:dead")
    assert [a.attempt for a in store.attempts(iid)] == [1, 2]
    assert store.instance(iid).status is InstanceStatus.FAILED
    owner.close()


def test_the_owner_records_dead_workers_attempts_as_lost(store: SqlAlchemyStore) -> None:
    owner, outbox, iid = start(store, [step("a")])
    (message,) = outbox.sent
    store.heartbeat("ghost:1:dead", 0.01)  # registered, lease already over
    assert store.pickup(message.row_id, 1, "ghost:1:dead") is not None
    owner.step_once()
    owner._next_sweep = 0  # sweep now
    owner.step_once()
    history = store.attempts(iid)
    assert [(a.attempt, (a.error or "")[:5]) for a in history] == [(1, "lost:")]
    assert store.step_results(iid)[0].status is StepStatus.QUEUED  # retried after a backoff
    owner.close()


def test_watch_reports_due_retries_and_the_cancel_flag(store: SqlAlchemyStore) -> None:
    owner, outbox, iid = start(store, [step("a", retry={"attempts": 3, "backoff": "1h"})])
    (message,) = outbox.sent
    assert store.watch([iid])[iid].next_available_at is None
    job = StepJob(store, "w:1:a")
    picked = store.pickup(message.row_id, 1, "w:1:a")
    assert picked is not None
    instance, claimed = store.instance(picked[0]), picked[1]
    now = datetime.now(UTC)
    failure = StepOutcome(claimed.row_id, "a", -1, 1, False, None, "boom", now, now)
    assert job.record(instance, store.definition_for(instance), failure) == []
    seen = store.watch([iid])[iid]
    assert seen.status is InstanceStatus.RUNNING and not seen.cancel_requested
    assert seen.next_available_at is not None
    assert seen.next_available_at > datetime.now(UTC) + timedelta(minutes=2)  # capped backoff
    with store.instance_transaction(iid) as tx:
        tx.request_cancel()
    assert store.watch([iid])[iid].cancel_requested
    owner.close()


def test_running_items_count_other_items_only(store: SqlAlchemyStore) -> None:
    owner, outbox, iid = start(
        store,
        [
            step("list", ["each"], value=[1, 2, 3, 4]),
            step("each", map={"over": "list", "concurrency": 2}),
        ],
    )
    job = StepJob(store, "w:1:a")
    (root,) = outbox.sent
    items = job(iid, root.row_id, 1)
    assert len(items) == 2, "concurrency 2"
    for m in items:
        assert store.pickup(m.row_id, 1, "w:1:a") is not None
    with store.instance_transaction(iid) as tx:
        assert tx.running_items() == {"each": 2}
        assert tx.running_items([items[0].row_id]) == {"each": 1}
    owner.close()


@pytest.fixture
def faulty_store(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SqlAlchemyStore, Faults]]:
    monkeypatch.setenv("STEPLINE_TEST_CALLS", str(tmp_path))
    faults = Faults()
    store = SqlAlchemyStore(db_url)
    install(store.engine, faults)
    with Stepline(store=store) as service:
        yield service.store, faults


def test_a_database_that_does_not_answer_costs_a_worker_s_outcome_nothing(
    faulty_store: tuple[SqlAlchemyStore, Faults],
) -> None:
    """Five failed tries in a row (a failover, a restart): the success is still recorded as
    one, not turned into a failure; the worker waits for the database as long as it takes."""
    store, faults = faulty_store
    owner, outbox, iid = start(store, [step("a", ["b"]), step("b")])
    job = StepJob(store, "w:1:a")
    (a,) = outbox.sent
    finished = job.run(iid, a.row_id, a.attempt)
    assert finished is not None and finished.outcome.succeeded
    faults.arm(dict.fromkeys(range(1, 6), "deadlock"))  # the first statement of five tries
    (b,) = job.record(*finished)
    assert len(faults.injected) == 5
    faults.disarm()
    (row,) = [r for r in store.step_results(iid) if r.step_key == "a"]
    assert row.status is StepStatus.SUCCEEDED, row.error
    assert job(iid, b.row_id, b.attempt) == []
    assert store.instance(iid).status is InstanceStatus.SUCCEEDED
    owner.close()


def test_a_pickup_waits_for_a_database_that_does_not_answer(
    faulty_store: tuple[SqlAlchemyStore, Faults],
) -> None:
    """A delivery whose pickup meets an unavailable database is held and picked up when it
    answers, not failed (a failed task is acknowledged, and its step would wait for the
    owner's resend)."""
    store, faults = faulty_store
    if store.dialect == "postgresql":
        pytest.skip("PostgreSQL pickups run on an engine of their own, which faults miss")
    owner, outbox, iid = start(store, [step("a")])
    job = StepJob(store, "w:1:a")
    (a,) = outbox.sent
    faults.arm(dict.fromkeys(range(1, 4), "deadlock"))
    finished = job.run(iid, a.row_id, a.attempt)
    assert len(faults.injected) == 3
    faults.disarm()
    assert finished is not None and finished.outcome.succeeded
    owner.close()


def test_a_database_that_stops_answering_right_after_the_pickup_is_waited_for(
    faulty_store: tuple[SqlAlchemyStore, Faults],
) -> None:
    """The first message of an instance in a worker process reads the instance and its
    definition after the pickup. Those reads failed the task when the database did not
    answer: the message was acknowledged and the attempt stayed `running` under the
    worker's live lease, never recovered. They wait for the database, like the pickup."""
    store, faults = faulty_store
    if store.dialect != "postgresql":
        pytest.skip("PostgreSQL only: its pickups run on an engine the faults miss")
    owner, outbox, iid = start(store, [step("a")])
    job = StepJob(store, "w:1:a")  # a new process: nothing of the instance in memory
    (a,) = outbox.sent
    faults.arm({2: "deadlock"})  # the read of the instance (1 is the pool's pre-ping)
    finished = job.run(iid, a.row_id, a.attempt)
    assert faults.injected == [(2, "deadlock", "execute")]
    faults.disarm()
    assert finished is not None and finished.outcome.succeeded
    assert job.record(*finished) == []
    assert store.instance(iid).status is InstanceStatus.SUCCEEDED
    owner.close()


def test_an_outcome_of_a_deleted_instance_is_dropped_not_retried_for_ever(
    store: SqlAlchemyStore,
) -> None:
    owner, outbox, iid = start(store, [step("a")])
    job = StepJob(store, "w:1:a")
    (a,) = outbox.sent
    finished = job.run(iid, a.row_id, a.attempt)
    assert finished is not None
    owner.close()
    with store.engine.begin() as conn:  # gone, as `stepline delete --purge` leaves it
        rows = "SELECT id FROM batch_step_result WHERE batch_instance_id = :i"
        for table in ("batch_step_log", "batch_step_attempt"):
            conn.execute(
                sa.text(f"DELETE FROM {table} WHERE step_result_id IN ({rows})"), {"i": iid}
            )
        conn.execute(
            sa.text("DELETE FROM batch_step_result WHERE batch_instance_id = :i"), {"i": iid}
        )
        conn.execute(sa.text("DELETE FROM batch_instance WHERE id = :i"), {"i": iid})
    sent: list[StepMessage] = []
    recorder = Recorder(job, sent.extend)
    recorder.put(finished)
    assert recorder.close(timeout=10), "the recorder is stuck on an outcome it cannot record"
    assert sent == []


def test_a_worker_whose_outcomes_cannot_be_recorded_ends_so_its_owner_recovers_them(
    tmp_path: Path,
) -> None:
    """Refused even without its result: left running under a live lease, the attempt would
    hang for ever, so the worker process ends (its owner then records the attempt lost)."""
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sqlalchemy as sa
            from stepline import batch
            from stepline.engine.remote import Recorder, RemoteOrchestrator, StepJob
            from stepline.service import Stepline
            from test_remote_store import Outbox

            with Stepline(db="sqlite:///{tmp_path / "w.db"}") as service:
                store = service.store
                a_step = {{"key": "a", "runner": "remote_runners:work"}}
                stored = store.apply(batch("poison", [a_step]))
                outbox = Outbox()
                owner = RemoteOrchestrator(store, outbox, lease_seconds=5)
                instance = owner.start(stored)
                owner.adopt(instance.id)
                (a,) = outbox.sent
                job = StepJob(store, "w:1:a")
                finished = job.run(instance.id, a.row_id, a.attempt)
                with store.engine.begin() as conn:  # the database refuses every record
                    conn.exec_driver_sql(
                        "CREATE TRIGGER refuse BEFORE UPDATE ON batch_step_result"
                        " BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
                    )
                recorder = Recorder(job, lambda messages: None)
                recorder.put(finished)
                recorder.flush()
            print("still alive")
            """
        )
    )
    here = Path(__file__).parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)]),
        "STEPLINE_TEST_CALLS": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 70, done.stdout + done.stderr
    assert "still alive" not in done.stdout
    assert "ending the worker process" in done.stdout + done.stderr


def test_a_pickup_survives_its_kept_connection_being_closed_by_the_server(
    store: SqlAlchemyStore,
) -> None:
    """PostgreSQL pickups keep one connection checked out; one the server closed meanwhile
    (a restart, an idle timeout) is replaced, not turned into a failed delivery."""
    if store.dialect != "postgresql":
        pytest.skip("only PostgreSQL keeps a connection for pickups")
    owner, outbox, _ = start(store, [step("a"), step("b")])
    first, second = outbox.sent
    assert store.pickup(first.row_id, 1, "w:1:a") is not None
    with store.engine.connect() as admin:
        killed = admin.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND query LIKE 'UPDATE batch_step_result%'"
            )
        ).all()
    assert killed, "the kept pickup connection was not found"
    picked = store.pickup(second.row_id, 1, "w:1:a")
    assert picked is not None and picked[1].step_key == "b"
    owner.close()
