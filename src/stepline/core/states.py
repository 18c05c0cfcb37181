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
    """Apache Airflow's trigger rules, with the same names and semantics (docs/trigger-rules.md)."""

    ALL_SUCCESS = "all_success"
    ALL_FAILED = "all_failed"
    ALL_DONE = "all_done"
    ALL_SKIPPED = "all_skipped"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    ONE_DONE = "one_done"
    NONE_FAILED = "none_failed"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"
    NONE_SKIPPED = "none_skipped"
    ALWAYS = "always"


TR = TriggerRule

# The rules that fire before every upstream step is final: the one_* rules as soon as one
# upstream step ends in a status below, ``always`` as soon as the instance starts.
_FIRES_ON: dict[TriggerRule, frozenset[StepStatus]] = {
    TR.ONE_SUCCESS: frozenset({S.SUCCEEDED}),
    TR.ONE_FAILED: frozenset({S.FAILED, S.UPSTREAM_FAILED, S.CANCELLED}),
    # As Airflow: "succeeded or failed"; a step that never ran (upstream_failed) is not done.
    TR.ONE_DONE: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED}),
}
EARLY_RULES = frozenset({*_FIRES_ON, TR.ALWAYS})


def fires_on(rule: TriggerRule, upstream: StepStatus) -> bool:
    """Whether one upstream step ending in ``upstream`` makes a ``rule`` step run at once,
    whatever its other upstream steps do."""
    fires = _FIRES_ON.get(rule)
    return fires is not None and upstream in fires


def decide(rule: TriggerRule, upstream: Iterable[StepStatus]) -> StepStatus | None:
    """What a step becomes, given the statuses of its upstream steps so far.

    Returns QUEUED (run it), SKIPPED, UPSTREAM_FAILED, or None while it cannot be decided
    yet. Only the early rules (:data:`EARLY_RULES`) decide before every upstream step is
    final, and only to run. A step with no upstream always runs. A cancelled upstream
    counts as failed: the work it stood for did not happen.
    """
    statuses = list(upstream)
    if not statuses or rule is TR.ALWAYS:
        return S.QUEUED
    if rule is TR.ALL_SUCCESS and statuses.count(S.SUCCEEDED) == len(statuses):
        return S.QUEUED  # the default rule's usual case (once per step on the hot path)
    fires = _FIRES_ON.get(rule)
    if fires is not None and any(s in fires for s in statuses):
        return S.QUEUED
    if any(not s.is_final for s in statuses):
        return None
    total = len(statuses)
    succeeded = statuses.count(S.SUCCEEDED)
    skipped = statuses.count(S.SKIPPED)
    failed = total - succeeded - skipped  # failed, upstream_failed or cancelled
    match rule:
        # A failure wins over a skip: the step cannot hold, and says why.
        case TR.ALL_SUCCESS:
            if failed:
                return S.UPSTREAM_FAILED
            return S.QUEUED if succeeded == total else S.SKIPPED
        case TR.NONE_FAILED:
            return S.UPSTREAM_FAILED if failed else S.QUEUED
        case TR.NONE_FAILED_MIN_ONE_SUCCESS:
            if failed:
                return S.UPSTREAM_FAILED
            return S.QUEUED if succeeded else S.SKIPPED
        case TR.ALL_FAILED:
            return S.QUEUED if failed == total else S.SKIPPED
        case TR.ALL_SKIPPED:
            return S.QUEUED if skipped == total else S.SKIPPED
        case TR.ALL_DONE:
            return S.QUEUED
        case TR.NONE_SKIPPED:
            return S.SKIPPED if skipped else S.QUEUED
        case TR.ONE_SUCCESS:
            # Nothing succeeded. As Airflow: skipped only if every upstream step was skipped.
            return S.SKIPPED if skipped == total else S.UPSTREAM_FAILED
        case _:
            # one_failed / one_done with nothing that fires them: there is nothing to handle.
            return S.SKIPPED


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
