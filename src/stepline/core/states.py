"""Instance and step states, the one table of allowed moves, and trigger rules."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class InstanceStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_INSTANCE


class StepStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    UPSTREAM_FAILED = "upstream_failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STEP_STATES


_FINAL_INSTANCE = frozenset(
    {InstanceStatus.SUCCEEDED, InstanceStatus.FAILED, InstanceStatus.CANCELLED}
)
FINAL_STEP_STATES = frozenset(
    {
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
        StepStatus.UPSTREAM_FAILED,
        StepStatus.CANCELLED,
    }
)
_FAILED_LIKE = frozenset({StepStatus.FAILED, StepStatus.UPSTREAM_FAILED, StepStatus.CANCELLED})

S = StepStatus
STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    # pending -> failed: a condition that cannot be evaluated fails the step unrun.
    # pending -> running: a step that became ready and was claimed in the same transaction.
    S.PENDING: frozenset(
        {S.QUEUED, S.RUNNING, S.SKIPPED, S.UPSTREAM_FAILED, S.FAILED, S.CANCELLED}
    ),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED}),
    # running -> queued is a retry (next attempt) or a recovered attempt of a dead owner.
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.QUEUED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    # A retry of the instance sends unsuccessful steps back to pending.
    S.FAILED: frozenset({S.PENDING}),
    S.SKIPPED: frozenset({S.PENDING}),
    S.UPSTREAM_FAILED: frozenset({S.PENDING}),
    S.CANCELLED: frozenset({S.PENDING}),
}

IS = InstanceStatus
INSTANCE_TRANSITIONS: dict[InstanceStatus, frozenset[InstanceStatus]] = {
    IS.QUEUED: frozenset({IS.RUNNING, IS.CANCELLED}),
    IS.RUNNING: frozenset({IS.SUCCEEDED, IS.FAILED, IS.CANCELLED}),
    IS.SUCCEEDED: frozenset(),
    IS.FAILED: frozenset({IS.RUNNING}),
    IS.CANCELLED: frozenset({IS.RUNNING}),
}


def can_move(current: StepStatus, new: StepStatus) -> bool:
    return new in STEP_TRANSITIONS[current]


class TriggerRule(StrEnum):
    ALL_SUCCESS = "all_success"
    ALL_DONE = "all_done"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    ALL_FAILED = "all_failed"
    NONE_FAILED = "none_failed"


def decide(rule: TriggerRule, upstream: Iterable[StepStatus]) -> StepStatus:
    """What a step becomes once every upstream step is final.

    Returns QUEUED (run it), SKIPPED, or UPSTREAM_FAILED. A step with no upstream always runs.
    A cancelled upstream counts as failed: the work it stood for did not happen.
    """
    statuses = list(upstream)
    if not statuses:
        return S.QUEUED
    failed = sum(1 for s in statuses if s in _FAILED_LIKE)
    succeeded = sum(1 for s in statuses if s is S.SUCCEEDED)
    total = len(statuses)
    match rule:
        case TriggerRule.ALL_SUCCESS:
            if succeeded == total:
                return S.QUEUED
            return S.UPSTREAM_FAILED if failed else S.SKIPPED
        case TriggerRule.ALL_DONE:
            return S.QUEUED
        case TriggerRule.ONE_SUCCESS:
            if succeeded:
                return S.QUEUED
            # As Airflow: skipped only if every upstream step was skipped.
            return S.SKIPPED if failed == 0 else S.UPSTREAM_FAILED
        case TriggerRule.ONE_FAILED:
            return S.QUEUED if failed else S.SKIPPED
        case TriggerRule.ALL_FAILED:
            return S.QUEUED if failed == total else S.SKIPPED
        case TriggerRule.NONE_FAILED:
            return S.UPSTREAM_FAILED if failed else S.QUEUED


def instance_outcome(step_statuses: Iterable[StepStatus]) -> InstanceStatus:
    """The final status of an instance whose steps are all final.

    Any failure fails the instance, even one a downstream ``one_failed`` step handled:
    the alert ran, but the work did not get done.
    """
    seen = set(step_statuses)
    if seen & {S.FAILED, S.UPSTREAM_FAILED}:
        return IS.FAILED
    if S.CANCELLED in seen:
        return IS.CANCELLED
    return IS.SUCCEEDED
