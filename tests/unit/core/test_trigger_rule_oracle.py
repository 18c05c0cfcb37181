"""Trigger rules against an oracle written from Apache Airflow's documented semantics.

The oracle (``airflow_verdict``) follows how Airflow's trigger-rule dependency reads the
finished upstream task instances of a task: it counts them by state, first decides whether
the task must be marked ``skipped`` or ``upstream_failed``, then whether it may run now, and
otherwise waits. Stepline states map to Airflow's as ``STATE_IN_AIRFLOW`` says; a
cancelled upstream step counts as failed, and pending/queued/running ones as not finished.

Every rule is compared with it over every multiset of 0 to 3 upstream statuses, finished
or not, in every order.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from math import comb

import pytest

from stepline.core.states import (
    EARLY_RULES,
    FINAL_STEP_STATES,
    StepStatus,
    TriggerRule,
    decide,
    fires_on,
)

S, F, K = StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED
U, C = StepStatus.UPSTREAM_FAILED, StepStatus.CANCELLED
P, Q, RN = StepStatus.PENDING, StepStatus.QUEUED, StepStatus.RUNNING
RUN, SKIP, UPF = StepStatus.QUEUED, StepStatus.SKIPPED, StepStatus.UPSTREAM_FAILED
R = TriggerRule

STATE_IN_AIRFLOW: dict[StepStatus, str | None] = {
    S: "success",
    F: "failed",
    C: "failed",
    U: "upstream_failed",
    K: "skipped",
    P: None,
    Q: None,
    RN: None,
}


def airflow_verdict(rule: str, upstream: Sequence[StepStatus]) -> str:
    """``run``, ``skipped``, ``upstream_failed`` or ``wait``, as Airflow decides it."""
    if not upstream or rule == "always":
        return "run"  # no upstream task; ``always`` runs as soon as the run starts
    n = Counter(STATE_IN_AIRFLOW[s] for s in upstream)
    success, skipped = n["success"], n["skipped"]
    failed, upstream_failed = n["failed"], n["upstream_failed"]
    total = len(upstream)
    done = total - n[None]
    all_done = done == total
    # 1. Mark the task skipped or upstream_failed (the scheduler's "flag upstream failed").
    mark: str | None = None
    if rule == "all_success":
        mark = "upstream_failed" if failed or upstream_failed else "skipped" if skipped else None
    elif rule == "all_failed":
        mark = "skipped" if success or skipped else None
    elif rule == "one_success":
        if all_done and done == skipped:
            mark = "skipped"
        elif all_done and success == 0:
            mark = "upstream_failed"
    elif rule == "one_failed":
        mark = "skipped" if all_done and not (failed or upstream_failed) else None
    elif rule == "one_done":
        mark = "skipped" if all_done and not (failed or success) else None
    elif rule == "none_failed":
        mark = "upstream_failed" if failed or upstream_failed else None
    elif rule == "none_failed_min_one_success":
        if failed or upstream_failed:
            mark = "upstream_failed"
        elif skipped == total:
            mark = "skipped"
    elif rule == "none_skipped":
        mark = "skipped" if skipped else None
    elif rule == "all_skipped":
        mark = "skipped" if success or failed or upstream_failed else None
    if mark is not None:
        return mark
    # 2. May it run now?
    runs = {
        "all_success": success == total,
        "all_failed": failed + upstream_failed == total,
        "all_done": all_done,
        "all_skipped": skipped == total,
        "one_success": success > 0,
        "one_failed": failed + upstream_failed > 0,
        "one_done": success + failed > 0,
        "none_failed": success + skipped == total,
        "none_failed_min_one_success": success + skipped == total,
        "none_skipped": all_done and skipped == 0,
    }[rule]
    return "run" if runs else "wait"


AS_STATUS = {"run": RUN, "skipped": SKIP, "upstream_failed": UPF}
FINAL = sorted(FINAL_STEP_STATES)
EVERY_STATUS = sorted(StepStatus)
# Every multiset of 0..3 upstream statuses; a step's rule sees no order.
MULTISETS = [
    m for size in range(4) for m in itertools.combinations_with_replacement(EVERY_STATUS, size)
]
FINISHED = [m for m in MULTISETS if m and all(s.is_final for s in m)]


def test_the_combinations_are_counted() -> None:
    """5 final statuses: 5 + 15 + 35 multisets of 1-3 upstream steps, × 11 rules = 605.
    With the 3 unfinished statuses and no upstream at all: 1 + 8 + 36 + 120 = 165 × 11."""
    assert len(TriggerRule) == 11
    assert len(FINAL) == 5 and len(EVERY_STATUS) == 8
    assert len(FINISHED) == sum(comb(5 + k - 1, k) for k in (1, 2, 3)) == 55
    assert len(FINISHED) * len(TriggerRule) == 605
    assert len(MULTISETS) * len(TriggerRule) == 165 * 11 == 1815


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_every_finished_combination_agrees_with_airflow(rule: TriggerRule) -> None:
    wrong = {}
    for upstream in FINISHED:
        expected = AS_STATUS[airflow_verdict(rule.value, upstream)]
        for order in set(itertools.permutations(upstream)):
            got = decide(rule, iter(order))
            if got is not expected:
                wrong[order] = (got, expected)
    assert not wrong


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_with_unfinished_upstream_only_the_early_rules_decide_and_only_to_run(
    rule: TriggerRule,
) -> None:
    """Airflow runs a one_* step as soon as it is decided; Stepline too. Airflow may also
    mark a step skipped or upstream_failed before its upstream ends; Stepline decides
    those once every upstream step is final (see the next test for why that agrees)."""
    wrong = {}
    for upstream in MULTISETS:
        if all(s.is_final for s in upstream) and upstream:
            continue
        airflow = airflow_verdict(rule.value, upstream)
        expected = RUN if airflow == "run" else None
        got = decide(rule, upstream)
        if got is not expected:
            wrong[upstream] = (got, airflow)
    assert not wrong
    if rule not in EARLY_RULES:
        assert all(
            decide(rule, m) is None for m in MULTISETS if m and not all(s.is_final for s in m)
        )


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_an_early_mark_in_airflow_is_what_stepline_reaches_at_the_end(rule: TriggerRule) -> None:
    """Where Airflow marks a step skipped/upstream_failed before its upstream ends, every
    way the unfinished upstream steps can end gives Stepline the same verdict, except one
    case where Airflow's own answer depends on timing: all_success with a skipped upstream
    step and another that later fails (Airflow: skipped if it looked in between, else
    upstream_failed; Stepline: upstream_failed, a failure wins)."""
    exceptions = set()
    for upstream in MULTISETS:
        waiting = [s for s in upstream if not s.is_final]
        airflow = airflow_verdict(rule.value, upstream)
        if not waiting or airflow not in ("skipped", "upstream_failed"):
            continue
        ended = [s for s in upstream if s.is_final]
        for outcome in itertools.product(FINAL, repeat=len(waiting)):
            got = decide(rule, [*ended, *outcome])
            if got is not AS_STATUS[airflow]:
                exceptions.add((rule, airflow, got))
    if rule is R.ALL_SUCCESS:
        assert exceptions == {(R.ALL_SUCCESS, "skipped", UPF)}
    else:
        assert not exceptions


@pytest.mark.parametrize("rule", list(TriggerRule))
@pytest.mark.parametrize("status", FINAL)
def test_fires_on_is_the_early_half_of_decide(rule: TriggerRule, status: StepStatus) -> None:
    fires = decide(rule, [status, RN, P]) is RUN and rule is not R.ALWAYS
    assert fires_on(rule, status) is fires


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_step_without_upstream_always_runs(rule: TriggerRule) -> None:
    assert decide(rule, []) is RUN


def test_always_runs_whatever_its_upstream_is_doing() -> None:
    assert {decide(R.ALWAYS, m) for m in MULTISETS} == {RUN}


# Hand-picked cases, read off Airflow's documentation one sentence at a time.
# fmt: off
EXAMPLES: list[tuple[TriggerRule, tuple[StepStatus, ...], StepStatus | None]] = [
    (R.ALL_SUCCESS, (S, S, S), RUN), (R.ALL_SUCCESS, (S, K), SKIP),
    (R.ALL_SUCCESS, (K, F), UPF), (R.ALL_SUCCESS, (S, C), UPF), (R.ALL_SUCCESS, (S, RN), None),
    (R.ALL_FAILED, (F, U), RUN), (R.ALL_FAILED, (F, K), SKIP), (R.ALL_FAILED, (C,), RUN),
    (R.ALL_DONE, (S, F, K), RUN), (R.ALL_DONE, (U,), RUN), (R.ALL_DONE, (F, RN), None),
    (R.ALL_SKIPPED, (K, K), RUN), (R.ALL_SKIPPED, (K, S), SKIP), (R.ALL_SKIPPED, (K, U), SKIP),
    (R.ONE_SUCCESS, (S, RN), RUN), (R.ONE_SUCCESS, (K, K), SKIP), (R.ONE_SUCCESS, (F, K), UPF),
    (R.ONE_SUCCESS, (F, P), None),
    (R.ONE_FAILED, (F, RN, P), RUN), (R.ONE_FAILED, (U, Q), RUN), (R.ONE_FAILED, (S, K), SKIP),
    (R.ONE_FAILED, (S, RN), None),
    (R.ONE_DONE, (S, RN), RUN), (R.ONE_DONE, (F, P), RUN), (R.ONE_DONE, (U, K), SKIP),
    (R.ONE_DONE, (U, RN), None),
    (R.NONE_FAILED, (S, K), RUN), (R.NONE_FAILED, (K, K), RUN), (R.NONE_FAILED, (S, U), UPF),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, (S, K), RUN), (R.NONE_FAILED_MIN_ONE_SUCCESS, (K, K), SKIP),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, (S, F), UPF),
    (R.NONE_SKIPPED, (S, F, U), RUN), (R.NONE_SKIPPED, (S, K), SKIP),
    (R.NONE_SKIPPED, (S, RN), None),
    (R.ALWAYS, (P, RN), RUN), (R.ALWAYS, (F, U), RUN),
]
# fmt: on


@pytest.mark.parametrize(("rule", "upstream", "expected"), EXAMPLES)
def test_examples(
    rule: TriggerRule, upstream: tuple[StepStatus, ...], expected: StepStatus | None
) -> None:
    assert decide(rule, upstream) is expected
    assert airflow_verdict(rule.value, upstream) == (
        "wait"
        if expected is None
        else {RUN: "run", SKIP: "skipped", UPF: "upstream_failed"}[expected]
    )


def test_every_rule_has_an_example() -> None:
    assert {rule for rule, _, _ in EXAMPLES} == set(TriggerRule)
