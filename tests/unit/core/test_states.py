"""Trigger rules, instance outcome and the table of allowed state moves."""

from __future__ import annotations

from typing import Any

import pytest

from stepline.core.states import (
    FINAL_STEP_STATES,
    INSTANCE_TRANSITIONS,
    STEP_TRANSITIONS,
    InstanceStatus,
    StepStatus,
    TriggerRule,
    can_move,
    decide,
    instance_outcome,
)

S, F, K = StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED
U, C = StepStatus.UPSTREAM_FAILED, StepStatus.CANCELLED
RUN, SKIP, UPF = StepStatus.QUEUED, StepStatus.SKIPPED, StepStatus.UPSTREAM_FAILED
R = TriggerRule

# Upstream combinations (columns of the table below).
UPSTREAMS: dict[str, tuple[StepStatus, ...]] = {
    "all_succeeded": (S, S, S),
    "one_failed": (S, F, S),
    "all_failed": (F, F),
    "one_skipped": (S, K),
    "all_skipped": (K, K),
    "with_upstream_failed": (S, U),
    "all_upstream_failed": (U, U),
    "failed_and_upstream_failed": (F, U),
    "one_cancelled": (S, C),
    "all_cancelled": (C,),
    "failed_and_skipped": (F, K),
    "single_success": (S,),
    "single_failure": (F,),
}

# What each rule decides for each combination, as Airflow's trigger_rule_dep does; a
# cancelled upstream counts as failed (states.decide docstring).
# fmt: off
EXPECTED: dict[TriggerRule, dict[str, StepStatus]] = {
    R.ALL_SUCCESS: {
        "all_succeeded": RUN, "one_failed": UPF, "all_failed": UPF, "one_skipped": SKIP,
        "all_skipped": SKIP, "with_upstream_failed": UPF, "all_upstream_failed": UPF,
        "failed_and_upstream_failed": UPF, "one_cancelled": UPF, "all_cancelled": UPF,
        "failed_and_skipped": UPF, "single_success": RUN, "single_failure": UPF,
    },
    R.ALL_DONE: dict.fromkeys(UPSTREAMS, RUN),
    R.ONE_SUCCESS: {
        "all_succeeded": RUN, "one_failed": RUN, "all_failed": UPF, "one_skipped": RUN,
        "all_skipped": SKIP, "with_upstream_failed": RUN, "all_upstream_failed": UPF,
        "failed_and_upstream_failed": UPF, "one_cancelled": RUN, "all_cancelled": UPF,
        "failed_and_skipped": UPF, "single_success": RUN, "single_failure": UPF,
    },
    R.ONE_FAILED: {
        "all_succeeded": SKIP, "one_failed": RUN, "all_failed": RUN, "one_skipped": SKIP,
        "all_skipped": SKIP, "with_upstream_failed": RUN, "all_upstream_failed": RUN,
        "failed_and_upstream_failed": RUN, "one_cancelled": RUN, "all_cancelled": RUN,
        "failed_and_skipped": RUN, "single_success": SKIP, "single_failure": RUN,
    },
    R.ALL_FAILED: {
        "all_succeeded": SKIP, "one_failed": SKIP, "all_failed": RUN, "one_skipped": SKIP,
        "all_skipped": SKIP, "with_upstream_failed": SKIP, "all_upstream_failed": RUN,
        "failed_and_upstream_failed": RUN, "one_cancelled": SKIP, "all_cancelled": RUN,
        "failed_and_skipped": SKIP, "single_success": SKIP, "single_failure": RUN,
    },
    R.NONE_FAILED: {
        "all_succeeded": RUN, "one_failed": UPF, "all_failed": UPF, "one_skipped": RUN,
        "all_skipped": RUN, "with_upstream_failed": UPF, "all_upstream_failed": UPF,
        "failed_and_upstream_failed": UPF, "one_cancelled": UPF, "all_cancelled": UPF,
        "failed_and_skipped": UPF, "single_success": RUN, "single_failure": UPF,
    },
}
# fmt: on

KNOWN_BUGS: dict[tuple[R, str], str] = {}


def _decide_cases() -> list[Any]:
    cases: list[Any] = []
    for rule, row in EXPECTED.items():
        for name, expected in row.items():
            bug = KNOWN_BUGS.get((rule, name))
            marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
            cases.append(
                pytest.param(rule, UPSTREAMS[name], expected, id=f"{rule}-{name}", marks=marks)
            )
    return cases


def test_table_covers_every_rule_and_combination() -> None:
    assert set(EXPECTED) == set(TriggerRule)
    assert all(set(row) == set(UPSTREAMS) for row in EXPECTED.values())


@pytest.mark.parametrize(("rule", "upstream", "expected"), _decide_cases())
def test_decide(rule: TriggerRule, upstream: tuple[StepStatus, ...], expected: StepStatus) -> None:
    assert decide(rule, iter(upstream)) is expected
    assert decide(rule, list(reversed(upstream))) is expected


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_step_without_upstream_always_runs(rule: TriggerRule) -> None:
    assert decide(rule, []) is StepStatus.QUEUED


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_decide_only_returns_queued_skipped_or_upstream_failed(rule: TriggerRule) -> None:
    verdicts = {decide(rule, upstream) for upstream in UPSTREAMS.values()}
    assert verdicts <= {RUN, SKIP, UPF}


@pytest.mark.parametrize(
    ("steps", "outcome"),
    [
        pytest.param([], InstanceStatus.SUCCEEDED, id="no-steps"),
        pytest.param([S, S], InstanceStatus.SUCCEEDED, id="all-succeeded"),
        pytest.param([S, K], InstanceStatus.SUCCEEDED, id="skipped-is-not-failure"),
        pytest.param([K, K], InstanceStatus.SUCCEEDED, id="all-skipped"),
        pytest.param([S, F], InstanceStatus.FAILED, id="one-failed"),
        pytest.param([F, S, S], InstanceStatus.FAILED, id="failure-handled-by-alert-still-fails"),
        pytest.param([S, U], InstanceStatus.FAILED, id="upstream-failed"),
        pytest.param([S, C], InstanceStatus.CANCELLED, id="cancelled"),
        pytest.param([C, K], InstanceStatus.CANCELLED, id="cancelled-and-skipped"),
        pytest.param([C, F], InstanceStatus.FAILED, id="failure-wins-over-cancel"),
        pytest.param([C, U], InstanceStatus.FAILED, id="upstream-failed-wins-over-cancel"),
    ],
)
def test_instance_outcome(steps: list[StepStatus], outcome: InstanceStatus) -> None:
    assert instance_outcome(iter(steps)) is outcome


def test_transition_table_is_complete() -> None:
    assert set(STEP_TRANSITIONS) == set(StepStatus)
    assert set(INSTANCE_TRANSITIONS) == set(InstanceStatus)


@pytest.mark.parametrize("status", sorted(FINAL_STEP_STATES - {S}))
def test_unsuccessful_final_step_goes_only_back_to_pending(status: StepStatus) -> None:
    assert STEP_TRANSITIONS[status] == {StepStatus.PENDING}
    assert can_move(status, StepStatus.PENDING)


@pytest.mark.parametrize("new", list(StepStatus))
def test_succeeded_step_goes_nowhere(new: StepStatus) -> None:
    assert not can_move(StepStatus.SUCCEEDED, new)


@pytest.mark.parametrize("status", list(StepStatus))
def test_no_step_status_moves_to_itself(status: StepStatus) -> None:
    assert not can_move(status, status)


P, Q, RN = StepStatus.PENDING, StepStatus.QUEUED, StepStatus.RUNNING


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        (P, Q, True), (P, RN, True), (P, K, True), (P, U, True), (P, F, True), (P, C, True),
        (P, S, False),
        (Q, RN, True), (Q, C, True), (Q, S, False), (Q, F, False), (Q, P, False),
        (RN, S, True), (RN, F, True), (RN, Q, True), (RN, C, True), (RN, P, False),
        (RN, K, False), (RN, U, False),
        (F, RN, False), (F, Q, False), (K, S, False), (C, RN, False),
    ],
)  # fmt: skip
def test_can_move(current: StepStatus, new: StepStatus, allowed: bool) -> None:
    assert can_move(current, new) is allowed


@pytest.mark.parametrize("status", list(StepStatus))
def test_step_is_final_matches_table(status: StepStatus) -> None:
    assert status.is_final is (status in FINAL_STEP_STATES)
    assert status.is_final is (status not in {P, Q, RN})


@pytest.mark.parametrize("status", [P, Q, RN])
def test_every_unfinished_step_can_be_cancelled(status: StepStatus) -> None:
    assert can_move(status, C)


IQ, IR, ISU = InstanceStatus.QUEUED, InstanceStatus.RUNNING, InstanceStatus.SUCCEEDED
IF, IC = InstanceStatus.FAILED, InstanceStatus.CANCELLED


@pytest.mark.parametrize(
    ("status", "moves", "final"),
    [
        pytest.param(IQ, {IR, IC}, False, id="queued"),
        pytest.param(IR, {ISU, IF, IC}, False, id="running"),
        pytest.param(ISU, set(), True, id="succeeded-is-final-forever"),
        pytest.param(IF, {IR}, True, id="failed-can-be-retried"),
        pytest.param(IC, {IR}, True, id="cancelled-can-be-retried"),
    ],
)
def test_instance_transitions(
    status: InstanceStatus, moves: set[InstanceStatus], final: bool
) -> None:
    assert INSTANCE_TRANSITIONS[status] == moves
    assert status.is_final is final
