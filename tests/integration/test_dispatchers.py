"""The engine's semantics over every dispatcher, on PostgreSQL: direct (in process),
Celery on Redis and Celery on RabbitMQ with real ``stepline worker`` processes.

Same batches, same expected results. Runners count their calls in files
(``remote_runners``), so a call made in a worker process is seen here.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

import remote_runners as rr
from clusters import BROKERS, Cluster, require_broker
from databases import create_database, drop_database
from stepline import InstanceStatus, StepStatus, batch
from stepline.api.metrics import Metrics, StepMetrics
from stepline.service import Stepline
from stepline.settings import Settings
from stepline.stores.base import InstanceRecord, StepResultRecord

W = "remote_runners:"
STEP_FIELDS = {"retry", "timeout", "trigger_rule", "condition", "map", "queue"}


@pytest.fixture(scope="module", params=["direct", "celery-redis", "celery-rabbitmq"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    kind = str(request.param)
    root = tmp_path_factory.mktemp(kind)
    calls_dir = root / "calls"
    calls_dir.mkdir()
    previous = os.environ.get("STEPLINE_TEST_CALLS")
    os.environ["STEPLINE_TEST_CALLS"] = str(calls_dir)
    broker = BROKERS[kind.split("-")[1]] if kind != "direct" else ""
    if broker:
        require_broker(broker)
    url, handle = create_database("postgresql", root)
    found = Cluster(url, broker, calls_dir)
    try:
        if broker:
            with Stepline(found.settings(), db=url):
                pass  # the schema, before the workers start
            found.start_worker(concurrency=4)
        yield found
    finally:
        found.stop()
        drop_database("postgresql", handle)
        if previous is None:
            os.environ.pop("STEPLINE_TEST_CALLS", None)
        else:
            os.environ["STEPLINE_TEST_CALLS"] = previous


def settings_for(cluster: Cluster, **overrides: Any) -> Settings:
    if not cluster.broker_url:
        return Settings(**overrides)
    return cluster.settings(**overrides)


@pytest.fixture
def app(cluster: Cluster) -> Iterator[Stepline]:
    with Stepline(settings_for(cluster), db=cluster.db_url) as service:
        yield service


def name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def s(
    key: str, nexts: list[str] | None = None, runner: str = "work", **options: Any
) -> dict[str, Any]:
    fields = {k: v for k, v in options.items() if k in STEP_FIELDS}
    args = {k: v for k, v in options.items() if k not in STEP_FIELDS}
    return {"key": key, "runner": W + runner, "next_steps": nexts or [], "with": args, **fields}


def run(
    app: Stepline, steps: list[dict[str, Any]], **options: Any
) -> tuple[InstanceRecord, dict[str, StepResultRecord]]:
    stored = app.apply(batch(name(), steps, **options))
    instance, _ = app.trigger(stored.name, owned=True)
    final = app.orchestrator.run(instance.id, timeout=60)
    return final, rows_of(app, final.id)


def rows_of(app: Stepline, instance_id: int) -> dict[str, StepResultRecord]:
    return {r.step_key: r for r in app.store.step_results(instance_id) if r.map_index < 0}


def calls(final: InstanceRecord, step: str) -> int:
    return rr.calls(final.batch, step)


def in_background(app: Stepline, instance_id: int) -> tuple[threading.Thread, list[InstanceRecord]]:
    """The instance run to the end by a thread; the list gets its final record."""
    finished: list[InstanceRecord] = []
    driver = threading.Thread(
        target=lambda: finished.append(app.orchestrator.run(instance_id, timeout=30))
    )
    driver.start()
    return driver, finished


def counted(metrics: Metrics, batch_name: str, step: str) -> tuple[float, float]:
    """stepline_step_attempts_total of one step: (succeeded, failed)."""

    def value(status: str) -> float:
        labels = {"batch": batch_name, "step": step, "status": status}
        return metrics.registry.get_sample_value("stepline_step_attempts_total", labels) or 0

    return value("succeeded"), value("failed")


def test_fan_in_runs_once_after_all_predecessors(app: Stepline) -> None:
    middle = [f"m{i}" for i in range(30)]
    steps = [s("root", middle)] + [s(k, ["join"], value=i) for i, k in enumerate(middle)]
    final, rows = run(app, [*steps, s("join", runner="fan_in")])
    assert final.status is InstanceStatus.SUCCEEDED
    assert calls(final, "join") == 1
    assert all(calls(final, k) == 1 for k in middle)
    assert rows["join"].result_payload["values"] == {k: i for i, k in enumerate(middle)}
    assert rows["join"].started_at >= max(rows[k].finished_at for k in middle)


def test_independent_branches_run_concurrently(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("left", ["join"], sleep=1),
            s("right", ["join"], sleep=1),
            s("join", runner="fan_in"),
        ],
    )
    assert final.status is InstanceStatus.SUCCEEDED
    # The stored running intervals overlap: each branch started before the other ended.
    # (No wall-clock bound: on a loaded machine a worker may start late, not serially.)
    left, right = rows["left"], rows["right"]
    assert left.started_at < right.finished_at and right.started_at < left.finished_at


def test_trigger_rules_after_a_failure(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("collect", ["report", "alert", "cleanup"], fatal=True),
            s("report", ["publish"]),
            s("publish"),
            s("alert", trigger_rule="one_failed"),
            s("cleanup", trigger_rule="all_done"),
            s("watcher", trigger_rule="one_failed"),  # named by no step: watches the batch
        ],
    )
    assert final.status is InstanceStatus.FAILED
    assert {k: r.status for k, r in rows.items()} == {
        "collect": StepStatus.FAILED,
        "report": StepStatus.UPSTREAM_FAILED,
        "publish": StepStatus.UPSTREAM_FAILED,
        "alert": StepStatus.SUCCEEDED,
        "cleanup": StepStatus.SUCCEEDED,
        "watcher": StepStatus.SUCCEEDED,
    }
    assert calls(final, "report") == calls(final, "publish") == 0
    assert calls(final, "collect") == calls(final, "alert") == calls(final, "cleanup") == 1
    assert "collect cannot succeed" in (rows["collect"].error or "")


def test_conditions_skip_steps(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("count", ["big", "small"], value={"n": 3}),
            s("big", ["after_big"], condition="results.count.n > 10"),
            s("after_big"),
            s("small", condition="results.count.n <= 10 and params.mode == 'x'"),
        ],
        params={"mode": "x"},
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert rows["big"].status is StepStatus.SKIPPED
    assert rows["after_big"].status is StepStatus.SKIPPED
    assert rows["small"].status is StepStatus.SUCCEEDED
    assert calls(final, "big") == calls(final, "after_big") == 0


def test_retries_wait_for_their_backoff(app: Stepline) -> None:
    final, rows = run(
        app, [s("flaky", fail_times=2, retry={"attempts": 3, "backoff": "0.3s", "jitter": False})]
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert calls(final, "flaky") == 3 and rows["flaky"].attempt == 3
    history = app.store.attempts(final.id)
    assert [(a.attempt, a.status) for a in history] == [
        (1, StepStatus.FAILED),
        (2, StepStatus.FAILED),
    ]
    assert all("planned failure" in (a.error or "") for a in history)
    first_gap = _gap(history[0].finished_at, history[1].started_at)
    second_gap = _gap(history[1].finished_at, rows["flaky"].started_at)
    assert first_gap >= 0.29 and second_gap >= 0.59, (first_gap, second_gap)
    assert second_gap < 3, "a due retry waited too long to be sent"


def _gap(end: datetime | None, start: datetime | None) -> float:
    assert end is not None and start is not None
    return (start - end).total_seconds()


@pytest.mark.parametrize("runner", ["hang", "ahang"])
def test_a_step_past_its_timeout_fails_and_is_retried(app: Stepline, runner: str) -> None:
    start = time.monotonic()
    final, rows = run(
        app,
        [
            s(
                "slow",
                ["after"],
                runner=runner,
                seconds=20,
                timeout="0.5s",
                retry={"attempts": 2, "backoff": "10ms"},
            ),
            s("after"),
            s("other"),
        ],
    )
    assert time.monotonic() - start < 8
    assert final.status is InstanceStatus.FAILED
    assert calls(final, "slow") == 2
    assert "exceeded the step timeout of 0.5 s" in (rows["slow"].error or "")
    assert rows["other"].status is StepStatus.SUCCEEDED
    assert rows["after"].status is StepStatus.UPSTREAM_FAILED


def test_a_mapped_step_runs_once_per_item_with_bounded_concurrency(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("list", ["each"], value=list(range(12))),
            s(
                "each",
                ["total"],
                runner="item_work",
                sleep=0.1,
                map={"over": "list", "concurrency": 3},
            ),
            s("total", runner="fan_in"),
        ],
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert calls(final, "each") == 12
    items = [r for r in app.store.step_results(final.id) if r.step_key == "each"]
    assert [r.map_index for r in items] == [-1, *range(12)]
    assert _peak([(r.started_at, r.finished_at) for r in items[1:]]) <= 3
    expected = [{"item": i, "double": 2 * i} for i in range(12)]
    assert rows["each"].result_payload == expected
    assert rows["total"].result_payload["values"]["each"] == expected


def test_a_failed_map_item_is_named_by_its_label(app: Stepline) -> None:
    farms = [{"farm_id": f"F00{n}"} for n in range(1, 5)]
    final, rows = run(
        app,
        [
            s("list", ["each"], value=farms),
            s(
                "each",
                runner="item_work",
                fail_items=[farms[1], farms[3]],
                map={"over": "list", "label": "{{ item.farm_id }}"},
            ),
        ],
    )
    assert final.status is InstanceStatus.FAILED
    assert rows["each"].error == "2 of 4 items failed: each[F002], each[F004]"


def test_a_runner_s_log_and_its_upstream_outcomes_are_kept_on_every_dispatcher(
    app: Stepline,
) -> None:
    """What a runner logs (ctx.log and Python logging) is stored with its attempt, redacted,
    and ctx.upstream names upstream steps that did not succeed, wherever the runner runs."""
    final, rows = run(
        app,
        [
            s("ok", ["last"]),
            s("broken", ["last"], fatal=True),
            s("last", runner="talk", trigger_rule="all_done"),
        ],
    )
    assert final.status is InstanceStatus.FAILED
    assert rows["last"].result_payload == {"ok": "succeeded", "broken": "failed"}
    (stored,) = app.store.step_logs(final.id, "last")
    assert "fetching https://api.example/stats?token=" in stored.text
    assert "hunter2-secret" not in stored.text
    assert "slow answer from weather" in stored.text
    assert stored.attempt == 1


def _peak(spans: list[tuple[datetime | None, datetime | None]]) -> int:
    edges: list[tuple[datetime, int]] = []
    for start, end in spans:
        assert start is not None and end is not None
        edges += [(start, 1), (end, -1)]
    peak = level = 0
    for _, change in sorted(edges, key=lambda e: (e[0], e[1])):
        level += change
        peak = max(peak, level)
    return peak


def test_retry_in_place_reruns_only_what_did_not_succeed(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("a", ["b", "c", "list"]),
            s("b", ["d"], fail_times=1),
            s("c", ["d"]),
            s("d"),
            s("list", ["each"], value=list(range(6))),
            s("each", runner="item_work", fail_items=[1, 4], map={"over": "list"}),
        ],
    )
    assert final.status is InstanceStatus.FAILED
    assert rows["d"].status is StepStatus.UPSTREAM_FAILED
    assert "2 of 6 items failed: each[1], each[4]" in (rows["each"].error or "")
    app.retry(final.id)
    again = app.orchestrator.run(final.id, timeout=60)
    assert again.status is InstanceStatus.SUCCEEDED
    counts = [calls(final, k) for k in ("a", "b", "c", "d", "list", "each")]
    assert counts == [1, 2, 1, 1, 1, 6 + 2]
    after = rows_of(app, final.id)
    assert after["a"].result_payload == rows["a"].result_payload
    assert after["b"].attempt == 2 and after["b"].status is StepStatus.SUCCEEDED


def test_cancel_stops_the_instance(app: Stepline, cluster: Cluster) -> None:
    stored = app.apply(
        batch(name(), [s("slow", ["next"], runner="hang", seconds=2), s("next"), s("quick")])
    )
    instance, _ = app.trigger(stored.name, owned=True)
    driver, finished = in_background(app, instance.id)
    deadline = time.monotonic() + 10
    while rr.calls(stored.name, "slow") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    with Stepline(settings_for(cluster), db=cluster.db_url) as other:
        assert other.cancel(instance.id).cancel_requested
    driver.join(timeout=10)
    assert not driver.is_alive(), "cancel did not stop the instance"
    assert finished[0].status is InstanceStatus.CANCELLED
    time.sleep(2.2)  # the running attempt ends now; its late report must change nothing
    statuses = {r.step_key: r.status for r in app.store.step_results(instance.id)}
    assert statuses == {
        "slow": StepStatus.CANCELLED,
        "next": StepStatus.CANCELLED,
        "quick": StepStatus.SUCCEEDED,
    }
    assert rr.calls(stored.name, "next") == 0


def test_max_active_instances_holds_across_triggers(app: Stepline) -> None:
    stored = app.apply(batch(name(), [s("a", ["b"], sleep=0.3), s("b")], max_active_instances=1))
    created = [app.trigger(stored.name, limited=True)[0] for _ in range(3)]
    stop = threading.Event()
    driver = threading.Thread(target=app.serve_forever, args=(stop,))
    driver.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(app.store.instance(i.id).status.is_final for i in created):
                break
            time.sleep(0.1)
    finally:
        stop.set()
        driver.join(10)
    finals = [app.store.instance(i.id) for i in created]
    assert all(f.status is InstanceStatus.SUCCEEDED for f in finals), finals
    spans = sorted((f.started_at, f.finished_at) for f in finals)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end is not None and start is not None and end <= start, "instances overlapped"
    assert rr.calls(stored.name, "a") == 3


def test_async_runners(app: Stepline) -> None:
    final, rows = run(app, [s("a", ["b"], runner="awork", sleep=0.1), s("b", runner="awork")])
    assert final.status is InstanceStatus.SUCCEEDED
    assert rows["b"].result_payload == {"step": "b", "async": True}


def test_progress_events_reach_the_listener(cluster: Cluster) -> None:
    events: list[tuple[str, StepStatus]] = []
    with Stepline(
        settings_for(cluster),
        db=cluster.db_url,
        listener=lambda e: events.append((e.step_key, e.status)),
    ) as app:
        final, _ = run(app, [s("a", ["b"], sleep=0.3), s("b", sleep=0.3)])
    assert final.status is InstanceStatus.SUCCEEDED
    assert ("a", StepStatus.SUCCEEDED) in events and ("b", StepStatus.SUCCEEDED) in events
    assert ("b", StepStatus.RUNNING) in events


def test_a_listener_that_raises_loses_its_events_not_the_run(cluster: Cluster) -> None:
    """The listener is called after the decisions are committed and before the claimed
    steps are handed over: one that raised used to leave them claimed and never run."""
    heard: list[str] = []

    def broken(event: Any) -> None:  # e.g. a progress display writing to a closed pipe
        heard.append(event.step_key)
        raise BrokenPipeError(32, "Broken pipe")

    with Stepline(settings_for(cluster), db=cluster.db_url, listener=broken) as app:
        final, rows = run(
            app,
            [
                s("root", ["b", "c", "list"]),
                s("b", ["join"]),
                s("c", ["join"]),
                s("join", runner="fan_in"),
                s("list", value=[1, 2, 3], nexts=["each"]),
                s("each", runner="item_work", map={"over": "list"}),
            ],
        )
    assert final.status is InstanceStatus.SUCCEEDED, final
    assert all(r.status is StepStatus.SUCCEEDED for r in rows.values())
    assert [calls(final, k) for k in ("root", "b", "c", "join", "list", "each")] == [1] * 5 + [3]
    assert heard  # it was called, and raised


def test_metrics_count_every_attempt_once_on_every_dispatcher(cluster: Cluster) -> None:
    """Each attempt that ends is counted once, with its duration, whichever process ran it:
    on the celery dispatcher the owner learns of them from the stored rows (a failed
    attempt retried between two looks from the attempts kept for its row)."""
    metrics = Metrics()
    retry = {"attempts": 2, "backoff": "10ms", "jitter": False}
    with Stepline(settings_for(cluster), db=cluster.db_url, listener=StepMetrics(metrics)) as app:
        final, rows = run(
            app,
            [
                s("root", ["flaky", "list"]),
                s("flaky", fail_times=1, retry=retry),
                s("list", ["each"], value=[1, 2, 3]),
                s("each", runner="item_work", fail_items=[2], retry=retry, map={"over": "list"}),
                s("bad", fatal=True),
            ],
        )
    assert final.status is InstanceStatus.FAILED
    assert rows["each"].status is StepStatus.SUCCEEDED

    counts = {
        step: counted(metrics, final.batch, step)
        for step in ("root", "flaky", "list", "each", "bad")
    }
    assert counts == {
        "root": (1, 0),
        "flaky": (1, 1),
        "list": (1, 0),
        "each": (3, 1),  # three items, the second one twice
        "bad": (0, 1),
    }
    timed = metrics.registry.get_sample_value(
        "stepline_step_duration_seconds_count", {"batch": final.batch, "step": "each"}
    )
    assert timed == 4


def test_a_retry_in_place_counts_only_the_attempts_it_runs(cluster: Cluster) -> None:
    metrics = Metrics()
    with Stepline(settings_for(cluster), db=cluster.db_url, listener=StepMetrics(metrics)) as app:
        final, _ = run(app, [s("a", ["b"]), s("b", fail_times=1)])
        assert final.status is InstanceStatus.FAILED
        app.retry(final.id)
        again = app.orchestrator.run(final.id, timeout=60)
    assert again.status is InstanceStatus.SUCCEEDED

    # a ran once, before the retry; b failed, then ran again and succeeded.
    assert counted(metrics, final.batch, "a") == (1, 0)
    assert counted(metrics, final.batch, "b") == (1, 1)


def test_a_cancelled_instance_s_last_attempts_are_counted_under_its_batch(
    cluster: Cluster,
) -> None:
    """The step that succeeded just before the cancel is counted once, under its batch,
    whether the owner saw it before the cancel or in the look that ends the instance."""
    metrics = Metrics()
    with Stepline(settings_for(cluster), db=cluster.db_url, listener=StepMetrics(metrics)) as app:
        stored = app.apply(batch(name(), [s("slow", runner="hang", seconds=2), s("quick")]))
        instance, _ = app.trigger(stored.name, owned=True)
        driver, finished = in_background(app, instance.id)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            rr.calls(stored.name, "slow") == 0
            or rows_of(app, instance.id)["quick"].status is not StepStatus.SUCCEEDED
        ):
            time.sleep(0.005)
        app.cancel(instance.id)  # at once: the owner has most likely not looked yet
        driver.join(timeout=10)
    assert finished and finished[0].status is InstanceStatus.CANCELLED
    samples = [
        (sample.labels, sample.value)
        for family in metrics.registry.collect()
        if family.name == "stepline_step_attempts"
        for sample in family.samples
        if sample.name == "stepline_step_attempts_total"
    ]
    assert samples == [({"batch": stored.name, "step": "quick", "status": "succeeded"}, 1.0)]
