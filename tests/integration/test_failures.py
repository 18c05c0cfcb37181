"""Failure semantics on SQLite and PostgreSQL: retries, timeouts, resume, cancel, alerts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from test_engine import calls, name, run, s
from werkzeug import Request, Response

import fixture_runners as fr
from stepline import Conflict, InstanceStatus, StepStatus, batch
from stepline.service import Stepline


@pytest.fixture
def app(db_url_sqlite_pg: str) -> Iterator[Stepline]:
    with Stepline(db=db_url_sqlite_pg) as service:
        yield service


def test_a_step_is_retried_with_exponential_backoff_until_it_succeeds(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("flaky", fail_times=2, retry={"attempts": 3, "backoff": "0.2s", "jitter": False}),
        ],
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert calls(final, "flaky") == 3
    assert rows["flaky"].attempt == 3
    history = app.store.attempts(final.id)
    assert [(a.attempt, a.status) for a in history] == [
        (1, StepStatus.FAILED),
        (2, StepStatus.FAILED),
    ]
    assert all("planned failure" in (a.error or "") for a in history)
    assert history[0].finished_at is not None and history[1].started_at is not None
    first_gap = (history[1].started_at - history[0].finished_at).total_seconds()
    second_gap = (rows["flaky"].started_at - history[1].finished_at).total_seconds()
    assert first_gap >= 0.19 and second_gap >= 0.39, (first_gap, second_gap)


def test_only_the_final_failure_fails_the_step(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("always", ["after"], fail_times=99, retry={"attempts": 3, "backoff": "10ms"}),
            s("after"),
        ],
    )
    assert final.status is InstanceStatus.FAILED
    assert calls(final, "always") == 3
    assert rows["always"].status is StepStatus.FAILED and rows["always"].attempt == 3
    assert rows["after"].status is StepStatus.UPSTREAM_FAILED


def test_do_not_retry_stops_at_once(app: Stepline) -> None:
    final, rows = run(app, [s("fatal", fatal=True, retry={"attempts": 5, "backoff": "10ms"})])
    assert final.status is InstanceStatus.FAILED
    assert calls(final, "fatal") == 1
    assert "DoNotRetry" in (rows["fatal"].error or "")


@pytest.mark.parametrize("runner", ["hang", "ahang"])
def test_a_runner_past_its_timeout_fails_the_attempt_and_the_instance_moves_on(
    app: Stepline, runner: str
) -> None:
    start = time.monotonic()
    final, rows = run(
        app,
        [
            s(
                "slow",
                ["after"],
                runner=runner,
                seconds=30,
                timeout="0.3s",
                retry={"attempts": 2, "backoff": "10ms"},
            ),
            s("after"),
            s("other"),
        ],
    )
    assert time.monotonic() - start < 5
    assert final.status is InstanceStatus.FAILED
    assert calls(final, "slow") == 2
    assert "exceeded the step timeout of 0.3 s" in (rows["slow"].error or "")
    assert rows["other"].status is StepStatus.SUCCEEDED
    assert rows["after"].status is StepStatus.UPSTREAM_FAILED


def test_a_late_result_of_an_abandoned_attempt_is_never_stored(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s(
                "step",
                slow_first=1.0,
                value="fresh",
                timeout="0.3s",
                retry={"attempts": 2, "backoff": "10ms"},
            ),
        ],
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert rows["step"].result_payload == "fresh"
    time.sleep(1.0)  # the first attempt's thread finishes now, and reports "late"
    assert app.store.step_results(final.id)[0].result_payload == "fresh"
    assert app.store.step_results(final.id)[0].attempt == 2


def test_retry_reruns_only_what_did_not_succeed(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("a", ["b", "c"]),
            s("b", ["d"], fail_times=1),
            s("c", ["d"]),
            s("d"),
        ],
    )
    assert final.status is InstanceStatus.FAILED
    assert rows["d"].status is StepStatus.UPSTREAM_FAILED
    app.retry(final.id)
    again = app.run_instance(final.id)
    assert again.status is InstanceStatus.SUCCEEDED
    assert again.id == final.id
    assert (calls(final, "a"), calls(final, "b"), calls(final, "c"), calls(final, "d")) == (
        1,
        2,
        1,
        1,
    )
    after = {r.step_key: r for r in app.store.step_results(final.id)}
    assert after["a"].result_payload == rows["a"].result_payload
    assert after["b"].attempt == 2 and after["b"].status is StepStatus.SUCCEEDED


def test_a_retried_step_gets_its_full_retry_budget_again(app: Stepline) -> None:
    final, _ = run(app, [s("flaky", fail_times=2, retry={"attempts": 2, "backoff": "10ms"})])
    assert final.status is InstanceStatus.FAILED and calls(final, "flaky") == 2
    app.retry(final.id)
    assert app.run_instance(final.id).status is InstanceStatus.SUCCEEDED
    assert calls(final, "flaky") == 3


def test_retry_of_a_succeeded_instance_is_refused(app: Stepline) -> None:
    final, _ = run(app, [s("a")])
    with pytest.raises(Conflict, match="succeeded and is final; run the batch anew"):
        app.retry(final.id)
    assert calls(final, "a") == 1


def test_cancel_stops_running_async_steps_and_pending_ones(
    app: Stepline, db_url_sqlite_pg: str
) -> None:
    stored = app.apply(
        batch(
            name(),
            [
                s("slow", ["next"], runner="ahang", seconds=30),
                s("next"),
                s("quick"),
            ],
        )
    )
    instance, _ = app.trigger(stored.name, owned=True)
    finished: list[Any] = []
    driver = threading.Thread(target=lambda: finished.append(app.run_instance(instance.id)))
    driver.start()
    deadline = time.monotonic() + 10
    while fr.calls[(stored.name, "slow")] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with Stepline(db=db_url_sqlite_pg) as other:  # another process's view
        requested = other.cancel(instance.id)
        assert requested.cancel_requested
    driver.join(timeout=5)
    assert not driver.is_alive(), "cancel did not stop the instance"
    assert finished[0].status is InstanceStatus.CANCELLED
    rows = {r.step_key: r.status for r in app.store.step_results(instance.id)}
    assert rows == {
        "slow": StepStatus.CANCELLED,
        "next": StepStatus.CANCELLED,
        "quick": StepStatus.SUCCEEDED,
    }
    assert fr.calls[(stored.name, "next")] == 0
    with pytest.raises(Conflict, match="already cancelled"):
        app.cancel(instance.id)


def test_a_cancelled_instance_can_be_retried(app: Stepline) -> None:
    stored = app.apply(batch(name(), [s("a", ["b"]), s("b")]))
    instance, _ = app.trigger(stored.name)
    assert app.cancel(instance.id).status is InstanceStatus.CANCELLED
    app.retry(instance.id)
    assert app.run_instance(instance.id).status is InstanceStatus.SUCCEEDED


def _failing_batch_with(url: str) -> list[dict[str, Any]]:
    return [s("collect", ["report"], fatal=True), s("report")]


def test_a_failed_instance_alerts_the_webhook(app: Stepline, httpserver: HTTPServer) -> None:
    received: list[dict[str, Any]] = []

    def hook(request: Request) -> Response:
        received.append(json.loads(request.data))
        return Response("ok")

    httpserver.expect_request("/hooks/T1/B2/secret-part", method="POST").respond_with_handler(hook)
    url = httpserver.url_for("/hooks/T1/B2/secret-part") + "?token=s3cr3t-token"
    final, _ = run(app, _failing_batch_with(url), alerts=[{"type": "webhook", "url": url}])
    assert final.status is InstanceStatus.FAILED
    for thread in app.orchestrator.alert_threads:
        if thread is not None:
            thread.join(10)
    assert len(received) == 1
    body = received[0]
    assert body["batch"] == final.batch and body["instance_id"] == final.id
    assert body["failed_steps"] == ["collect"]
    assert "collect cannot succeed" in body["text"] and f"stepline show {final.id}" in body["text"]


@pytest.mark.parametrize("answer", ["500", "down"])
def test_an_alert_that_fails_never_fails_or_hangs_the_instance(
    app: Stepline, httpserver: HTTPServer, answer: str
) -> None:
    if answer == "500":
        httpserver.expect_request("/hook").respond_with_data("boom", status=500)
        url = httpserver.url_for("/hook")
    else:
        url = "http://127.0.0.1:9/hook"  # discard port: nothing listens
    start = time.monotonic()
    final, rows = run(app, _failing_batch_with(url), alerts=[{"type": "webhook", "url": url}])
    assert time.monotonic() - start < 3
    assert final.status is InstanceStatus.FAILED
    assert rows["collect"].status is StepStatus.FAILED
    for thread in app.orchestrator.alert_threads:
        if thread is not None:
            thread.join(10)
            assert not thread.is_alive()


def test_a_late_report_during_the_retry_does_not_strand_the_retry(app: Stepline) -> None:
    """Attempt 1 times out at 0.8 s and reports at 1.1 s, while attempt 2 still runs."""
    final, rows = run(
        app,
        [
            s(
                "step",
                sleep=0.5,
                slow_first=0.6,
                value="fresh",
                timeout="0.8s",
                retry={"attempts": 2, "backoff": "10ms"},
            ),
        ],
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert rows["step"].attempt == 2 and rows["step"].result_payload == "fresh"


def test_an_instance_waiting_for_a_free_slot_is_not_forgotten(db_url_sqlite_pg: str) -> None:
    from stepline.settings import Settings

    with Stepline(Settings(capacity=1), db=db_url_sqlite_pg) as app:
        stored = app.apply(batch(name(), [s("a", ["b"], sleep=0.2), s("b")]))
        first, _ = app.trigger(stored.name, owned=True)
        second, _ = app.trigger(stored.name, owned=True)
        app.orchestrator.adopt(first.id)
        app.orchestrator.adopt(second.id)  # no slot left for it now
        assert app.orchestrator.run(first.id, timeout=10).status is InstanceStatus.SUCCEEDED
        assert app.orchestrator.run(second.id, timeout=10).status is InstanceStatus.SUCCEEDED


def test_retry_keeps_steps_that_were_skipped_on_purpose_skipped(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("a", ["maybe", "handler", "b"]),
            s("maybe", condition="params.go == 1"),
            s("handler", trigger_rule="one_failed"),
            s("b", fail_times=1),
        ],
        params={"go": 0},
    )
    assert final.status is InstanceStatus.FAILED
    assert rows["maybe"].status is StepStatus.SKIPPED
    app.retry(final.id)
    again = app.run_instance(final.id)
    assert again.status is InstanceStatus.SUCCEEDED
    statuses = {r.step_key: r.status for r in app.store.step_results(final.id)}
    assert statuses["maybe"] is StepStatus.SKIPPED
    assert statuses["handler"] is StepStatus.SKIPPED
    assert calls(final, "maybe") == calls(final, "handler") == 0


def test_a_root_step_condition_is_applied(app: Stepline) -> None:
    final, rows = run(
        app, [s("root", ["after"], condition="params.go == 1"), s("after")], params={"go": 0}
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert rows["root"].status is StepStatus.SKIPPED and calls(final, "root") == 0
    assert rows["after"].status is StepStatus.SKIPPED


def test_only_one_recoverer_takes_an_orphan(app: Stepline, db_url_sqlite_pg: str) -> None:
    stored = app.apply(batch(name(), [s("a")]))
    instance, _ = app.store.create_instance(stored, {}, "cli", owner="ghost:1:dead")
    with Stepline(db=db_url_sqlite_pg) as other:
        assert other.orchestrator.adopt(instance.id, takeover=True, expected_owner="ghost:1:dead")
        assert not app.orchestrator.adopt(instance.id, takeover=True, expected_owner="ghost:1:dead")
        assert other.orchestrator.run(instance.id, timeout=10).status is InstanceStatus.SUCCEEDED
    assert calls(instance, "a") == 1
