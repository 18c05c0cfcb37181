"""The orchestration step: given what just happened to an instance, decide what is next.

Runs inside one :class:`~stepline.stores.base.InstanceTransaction`, so the decisions and
the facts they rest on are committed together, and a crash leaves either both or neither.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stepline.core.definition import BatchDefinition
from stepline.core.states import InstanceStatus, StepStatus, decide, instance_outcome
from stepline.stores.base import ClaimedStep, InstanceTransaction, StepOutcome


@dataclass
class Advance:
    """What one transaction did: steps newly final, steps claimed to run, the end state."""

    finished: dict[str, StepStatus] = field(default_factory=dict)
    claimed: list[ClaimedStep] = field(default_factory=list)
    queued_more: bool = False
    retry_at: datetime | None = None
    final: InstanceStatus | None = None


def advance(
    tx: InstanceTransaction,
    definition: BatchDefinition,
    outcomes: Sequence[StepOutcome],
    *,
    owner: str,
    now: datetime,
    slots: int,
    look_for_queued: bool,
    results: Mapping[str, Any],
    idle: bool,
    params: Mapping[str, Any],
) -> Advance:
    """Record ``outcomes``, settle every step they made ready, claim up to ``slots`` steps.

    ``idle`` says the caller runs nothing else of this instance, so an instance with no
    unfinished step can be finalised here.
    """
    graph = definition.graph
    done = Advance()
    for o in outcomes:
        policy = definition.step(o.step_key).retry
        retry_at = None
        if not o.succeeded and o.retryable and o.tries < policy.attempts:
            retry_at = now + timedelta(seconds=policy.delay_before(o.attempt + 1))
        if not tx.record(o, retry_at=retry_at, owner=owner):
            continue
        if retry_at is not None:
            done.queued_more = True
            done.retry_at = retry_at if done.retry_at is None else min(done.retry_at, retry_at)
        else:
            done.finished[o.step_key] = StepStatus.SUCCEEDED if o.succeeded else StepStatus.FAILED

    known: dict[str, StepStatus] = dict(done.finished)
    frontier = list(done.finished)
    to_run: list[str] = []
    while frontier:
        counts = Counter(s for k in frontier for s in graph.successors.get(k, ()))
        if not counts:
            break
        ready = tx.upstream_done(counts)
        unknown = {p for k in ready for p in graph.predecessors[k]} - known.keys()
        if unknown:
            known.update(tx.statuses(unknown))
        decisions: dict[StepStatus, list[str]] = {}
        errors: dict[str, str] = {}
        for key in ready:
            step = definition.step(key)
            verdict = decide(step.trigger_rule, (known[p] for p in graph.predecessors[key]))
            error = _why(verdict)
            if verdict is StepStatus.QUEUED and step.condition is not None:
                verdict, error = _check_condition(tx, definition, key, params, results)
            decisions.setdefault(verdict, []).append(key)
            if error:
                errors[key] = error
        frontier = []
        for verdict, keys in decisions.items():
            if verdict is StepStatus.QUEUED:
                to_run.extend(keys)
                continue
            if verdict is StepStatus.FAILED:
                for key in keys:
                    tx.mark([key], verdict, error=errors.get(key))
            else:
                tx.mark(keys, verdict, error=_why(verdict))
            known.update(dict.fromkeys(keys, verdict))
            done.finished.update(dict.fromkeys(keys, verdict))
            frontier.extend(keys)

    if to_run:
        done.claimed = tx.start(to_run, max(slots, 0), owner, now=now)
        slots -= len(done.claimed)
        look_for_queued = look_for_queued or len(done.claimed) < len(to_run)
    if slots > 0 and (look_for_queued or done.queued_more):
        done.claimed += tx.claim(slots, owner, now=now)
    if idle and not done.claimed:
        if tx.has_unfinished():
            if done.retry_at is None and not done.claimed:
                done.retry_at = tx.next_available_at()
        else:
            done.final = instance_outcome(tx.step_statuses().values())
            tx.set_instance(done.final, error=_instance_error(done.final))
    return done


def _check_condition(
    tx: InstanceTransaction,
    definition: BatchDefinition,
    key: str,
    params: Mapping[str, Any],
    results: Mapping[str, Any],
) -> tuple[StepStatus, str | None]:
    """QUEUED if the step's condition holds, SKIPPED if not, FAILED if it cannot be computed."""
    from stepline.core.expressions import ExpressionError, evaluate_condition

    condition = definition.step(key).condition
    assert condition is not None
    upstream = definition.graph.ancestors(key)
    visible = {k: results[k] for k in upstream if k in results}
    missing = upstream - visible.keys()
    if missing:
        visible.update(tx.results(missing))
    try:
        holds = evaluate_condition(condition, {"params": params, "results": visible})
    except ExpressionError as exc:
        return StepStatus.FAILED, f"condition {condition!r} could not be evaluated: {exc}"
    return (StepStatus.QUEUED, None) if holds else (StepStatus.SKIPPED, None)


def _why(status: StepStatus) -> str | None:
    if status is StepStatus.UPSTREAM_FAILED:
        return "an upstream step failed, so this step's trigger rule cannot hold"
    return None


def _instance_error(status: InstanceStatus) -> str | None:
    return "one or more steps failed" if status is InstanceStatus.FAILED else None
