"""Trigger rules on the real engine, on every store: each rule, and early firing.

Early firing is shown without timing luck: a branch waits on a gate that only the
early-firing step opens, and reports whether it opened (it gives up after 20 s). So the
early step provably ran while that branch was still running.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_engine import calls, run, s

from stepline import InstanceStatus, StepStatus
from stepline.service import Stepline

SU, F, K = StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED
U = StepStatus.UPSTREAM_FAILED


@pytest.fixture
def app(db_url: str) -> Iterator[Stepline]:
    with Stepline(db=db_url) as service:
        yield service


def gate() -> str:
    return uuid.uuid4().hex


def upstream(key: str, outcome: StepStatus, target: str) -> list[dict[str, Any]]:
    """Steps that make ``key`` end as ``outcome``, with ``target`` downstream of it."""
    if outcome is SU:
        return [s(key, [target])]
    if outcome is F:
        return [s(key, [target], fatal=True)]
    if outcome is K:
        return [s(key, [target], condition="1 == 2")]
    assert outcome is U
    return [s(f"{key}_parent", [key], fatal=True), s(key, [target])]


# (rule, how its two or three upstream steps end, what the step becomes)
CASES = [
    ("none_failed_min_one_success", [SU, K], SU),
    ("none_failed_min_one_success", [K, K], K),
    ("none_failed_min_one_success", [SU, F], U),
    ("none_failed_min_one_success", [K, U], U),
    ("none_skipped", [SU, F, U], SU),
    ("none_skipped", [SU, K], K),
    ("all_skipped", [K, K], SU),
    ("all_skipped", [K, SU], K),
    ("all_skipped", [K, F], K),
    ("one_done", [F, K], SU),
    ("one_done", [U, K], K),
    ("one_done", [U, U], K),
    ("always", [F, U, K], SU),
    ("one_success", [K, K], K),
    ("one_success", [F, K], U),
    ("one_failed", [SU, K], K),
    ("all_failed", [F, U], SU),
    ("all_success", [K, F], U),
    ("none_failed", [SU, K], SU),
    ("all_done", [F, K, U], SU),
]


@pytest.mark.parametrize(
    ("rule", "outcomes", "expected"),
    [pytest.param(*c, id=f"{c[0]}-" + "-".join(o.value for o in c[1])) for c in CASES],
)
def test_each_rule_decides_over_real_upstream_outcomes(
    app: Stepline, rule: str, outcomes: list[StepStatus], expected: StepStatus
) -> None:
    steps = [step for i, o in enumerate(outcomes) for step in upstream(f"u{i}", o, "t")]
    final, rows = run(app, [*steps, s("t", ["after"], trigger_rule=rule), s("after")])
    assert {f"u{i}": rows[f"u{i}"].status for i in range(len(outcomes))} == {
        f"u{i}": o for i, o in enumerate(outcomes)
    }
    assert rows["t"].status is expected
    assert calls(final, "t") == (1 if expected is SU else 0)
    # Skip and failure propagate as before: a skipped step skips its all_success successor.
    assert rows["after"].status is {SU: SU, K: K, U: U}[expected]
    assert final.status is (
        InstanceStatus.FAILED if {F, U} & {*outcomes, expected} else InstanceStatus.SUCCEEDED
    )


def test_one_failed_alerts_while_another_branch_still_runs(app: Stepline) -> None:
    g = gate()
    final, rows = run(
        app,
        [
            s("bad", ["alert"], fatal=True),
            s("slow", ["alert", "after"], runner="wait_gate", gate=g),
            s("after"),
            s("alert", runner="open_gate", gate=g, trigger_rule="one_failed"),
        ],
    )
    assert rows["slow"].result_payload == {"opened": True}, "alert waited for the other branch"
    assert rows["alert"].status is SU and calls(final, "alert") == 1
    assert rows["alert"].started_at <= rows["slow"].finished_at
    assert rows["after"].status is SU, "the other branch carried on"
    assert final.status is InstanceStatus.FAILED


def test_a_failure_handler_named_by_no_step_alerts_before_the_batch_ends(app: Stepline) -> None:
    """The SPEC's weekly_report: alert_admin watches the whole batch and alerts at once."""
    g = gate()
    final, rows = run(
        app,
        [
            s("collect_stats", ["check"], fatal=True),
            s("collect_weather", ["check"], runner="wait_gate", gate=g),
            s("check", ["run_report"]),
            s("run_report"),
            s("alert_admin", runner="open_gate", gate=g, trigger_rule="one_failed"),
        ],
    )
    assert rows["collect_weather"].result_payload == {"opened": True}
    assert rows["alert_admin"].status is SU
    assert calls(final, "alert_admin") == 1, "watched steps ending later do not fire it again"
    assert rows["check"].status is U and rows["run_report"].status is U
    assert final.status is InstanceStatus.FAILED


def test_one_success_runs_as_soon_as_one_upstream_succeeds(app: Stepline) -> None:
    g = gate()
    final, rows = run(
        app,
        [
            s("fast", ["join"]),
            s("slow", ["join"], runner="wait_gate", gate=g),
            s("join", ["report"], runner="open_gate", gate=g, trigger_rule="one_success"),
            s("report", runner="fan_in"),
        ],
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert rows["slow"].result_payload == {"opened": True}
    assert rows["join"].result_payload == {"step": "join", "upstream": ["fast"]}
    assert calls(final, "join") == 1 and calls(final, "report") == 1
    assert rows["report"].status is SU


def test_one_done_runs_as_soon_as_one_upstream_ends(app: Stepline) -> None:
    g = gate()
    final, rows = run(
        app,
        [
            s("bad", ["done"], fatal=True),
            s("slow", ["done"], runner="wait_gate", gate=g),
            s("done", runner="open_gate", gate=g, trigger_rule="one_done"),
        ],
    )
    assert rows["slow"].result_payload == {"opened": True}
    assert rows["done"].status is SU and calls(final, "done") == 1
    assert final.status is InstanceStatus.FAILED


def test_always_runs_at_once_without_waiting_for_its_upstream(app: Stepline) -> None:
    g = gate()
    final, rows = run(
        app,
        [
            s("slow", ["anyway", "after"], runner="wait_gate", gate=g),
            s("after"),
            s("anyway", ["tail"], runner="open_gate", gate=g, trigger_rule="always"),
            s("tail", runner="fan_in"),
        ],
    )
    assert final.status is InstanceStatus.SUCCEEDED
    assert rows["slow"].result_payload == {"opened": True}
    assert rows["anyway"].result_payload == {"step": "anyway", "upstream": []}
    assert calls(final, "anyway") == 1 and calls(final, "tail") == 1
    assert rows["tail"].started_at >= rows["anyway"].finished_at


def test_an_early_step_runs_once_however_its_other_upstream_steps_end(app: Stepline) -> None:
    """Fan-in once under early firing: the handler fires on ``first``; in the same
    transaction ``blocked`` becomes upstream_failed (another reason to fire) and its count
    reaches zero; the waiting steps fail later, one by one."""
    g = gate()
    waiting = [f"w{i}" for i in range(3)]
    final, rows = run(
        app,
        [
            s("first", ["blocked", "handler"], fatal=True),
            s("blocked", ["handler"]),
            *[s(k, ["handler"], runner="wait_gate", gate=g, fatal=True) for k in waiting],
            s("handler", ["next"], runner="open_gate", gate=g, trigger_rule="one_failed"),
            s("next"),
        ],
    )
    assert calls(final, "handler") == 1 and calls(final, "next") == 1
    assert rows["blocked"].status is U
    for k in waiting:
        assert rows[k].status is F and "after the gate opened" in (rows[k].error or "")
    assert final.status is InstanceStatus.FAILED


@pytest.mark.parametrize(("rule", "fatal"), [("one_failed", True), ("one_success", False)])
def test_a_wide_early_fan_in_runs_once(app: Stepline, rule: str, fatal: bool) -> None:
    """Many upstream steps end together: several reasons to fire in one transaction."""
    wide = [f"m{i}" for i in range(40)]
    final, rows = run(
        app, [*[s(k, ["join"], fatal=fatal) for k in wide], s("join", trigger_rule=rule)]
    )
    assert rows["join"].status is SU
    assert calls(final, "join") == 1


def test_a_retry_fires_an_early_rule_that_already_holds(app: Stepline) -> None:
    """After a retry, a one_success step whose other upstream step succeeded before runs
    at once, while the upstream step that failed runs again."""
    g = gate()
    final, rows = run(
        app,
        [
            s("ok", ["join"]),
            s("flaky", ["join"], runner="wait_gate", gate=g, fail_times=1),
            s("join", runner="open_gate", gate=g, fail_times=1, trigger_rule="one_success"),
        ],
    )
    assert final.status is InstanceStatus.FAILED
    assert rows["flaky"].status is F and rows["join"].status is F
    app.retry(final.id)
    again = app.run_instance(final.id)
    after = {r.step_key: r for r in app.store.step_results(final.id)}
    assert again.status is InstanceStatus.SUCCEEDED
    assert after["flaky"].result_payload == {"opened": True}
    assert (calls(final, "ok"), calls(final, "join")) == (1, 2)
