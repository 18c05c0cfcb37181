"""Instance outcome and the table of allowed state moves (rules: test_trigger_rule_oracle.py)."""

from __future__ import annotations

import pytest

from stepline.core.states import (
    FINAL_STEP_STATES,
    INSTANCE_TRANSITIONS,
    STEP_TRANSITIONS,
    InstanceStatus,
    StepStatus,
    can_move,
    instance_outcome,
)

S, F, K = StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED
U, C = StepStatus.UPSTREAM_FAILED, StepStatus.CANCELLED


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
