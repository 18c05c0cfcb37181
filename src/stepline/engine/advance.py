"""The orchestration step: given what just happened to an instance, decide what is next.

Runs inside one :class:`~stepline.stores.base.InstanceTransaction`, so the decisions and
the facts they rest on are committed together, and a crash leaves either both or neither.

A mapped step (``map: {over, concurrency}``) is claimed like any step, but instead of
running it expands into one item row per element of its list; its own row then counts
the unfinished items, and when the last one ends it becomes final with the ordered list
of item results as its payload, so the rest of the DAG sees an ordinary step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stepline.core.definition import BatchDefinition, StepDefinition
from stepline.core.states import (
    EARLY_RULES,
    InstanceStatus,
    StepStatus,
    decide,
    fires_on,
    instance_outcome,
)
from stepline.stores.base import ClaimedStep, InstanceTransaction, StepOutcome


@dataclass
class Advance:
    """What one transaction did: steps newly final, steps claimed to run, the end state."""

    finished: dict[str, StepStatus] = field(default_factory=dict)
    claimed: list[ClaimedStep] = field(default_factory=list)
    expanded: dict[str, list[Any]] = field(default_factory=dict)
    """Mapped steps expanded here, with their items (map_index order)."""
    mapped_results: dict[str, list[Any]] = field(default_factory=dict)
    """Mapped steps that succeeded here, with their item results."""
    recorded: list[tuple[StepOutcome, bool]] = field(default_factory=list)
    """Outcomes that passed the attempt fence, each with whether its step will retry."""
    queued_more: bool = False
    retry_at: datetime | None = None
    final: InstanceStatus | None = None
    retrying: set[tuple[str, int]] = field(default_factory=set)
    """(step key, map_index) of failed attempts that go back to the queue for a retry."""


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
    running_items: Mapping[str, int] | None = None,
    settle_pending: bool = False,
    handoff: bool = False,
    item_labels: Callable[[str], Sequence[str]] | None = None,
) -> Advance:
    """Record ``outcomes``, settle every step they made ready, claim up to ``slots`` steps.

    ``idle`` says the caller runs nothing else of this instance, so an instance with no
    unfinished step can be finalised here. ``running_items`` counts the items of each
    mapped step the caller is running, for the step's ``concurrency``. With
    ``settle_pending`` (a new owner taking the instance) pending steps with nothing left
    upstream, roots and steps reset by a retry, are decided first, and so are pending
    steps whose rule may fire early (``always``, or a ``one_*`` rule whose upstream step
    already ended). With ``handoff`` the claimed steps are left without an owner, for a
    broker to deliver to whichever worker picks them up first. ``item_labels`` names the
    items of a mapped step (see MapSpec.item_label) for the error of a failed one.
    """
    done = Advance()
    claimer = None if handoff else owner
    items_done: dict[str, int] = {}
    item_keys: set[str] = set()
    decided: list[tuple[StepOutcome, datetime | None]] = []
    for o in outcomes:
        retry_at = None
        if not o.succeeded and o.retryable:
            policy = definition.step(o.step_key).retry
            allowed = max(policy.attempts, 2) if o.lost else policy.attempts
            # retry.on names the transient errors; a lost attempt (a dead worker) has none.
            if o.tries < allowed and (o.lost or policy.retries(o.error_codes)):
                retry_at = now + timedelta(seconds=policy.delay_before(o.attempt + 1))
        decided.append((o, retry_at))
    recorded = tx.record_many(decided, owner=owner) if decided else []
    for (o, retry_at), stored in zip(decided, recorded, strict=True):
        if not stored:
            continue
        done.recorded.append((o, retry_at is not None))
        if o.map_index >= 0:
            item_keys.add(o.step_key)
        if retry_at is not None:
            done.retrying.add((o.step_key, o.map_index))
            done.queued_more = True
            done.retry_at = retry_at if done.retry_at is None else min(done.retry_at, retry_at)
        elif o.map_index >= 0:
            items_done[o.step_key] = items_done.get(o.step_key, 0) + 1
        else:
            done.finished[o.step_key] = StepStatus.SUCCEEDED if o.succeeded else StepStatus.FAILED
    for key, count in items_done.items():
        if tx.items_done(key, count):
            _finish_mapped(tx, key, done, item_labels)

    known: dict[str, StepStatus] = dict(done.finished)
    frontier = list(done.finished)
    look_for_items = look_for_queued
    initial: list[str] = []
    if settle_pending:
        initial = tx.pending_ready()
        early = [s.key for s in definition.steps if s.trigger_rule in EARLY_RULES]
        if early:
            initial += tx.pending_among([k for k in early if k not in initial])
    while True:
        to_run = _settle(
            tx,
            definition,
            frontier,
            known,
            done,
            params,
            results,
            initial,
            max(slots, 0),
            claimer,
            now,
        )
        initial = []
        claimed: list[ClaimedStep] = []
        if to_run:
            claimed = tx.start(to_run, max(slots, 0), claimer, now=now)
            look_for_queued = look_for_queued or len(claimed) < len(to_run)
        if slots - len(claimed) > 0 and (look_for_queued or done.queued_more):
            claimed += tx.claim(slots - len(claimed), claimer, now=now)
            look_for_queued = False
        frontier = []
        for c in claimed:
            step = definition.step(c.step_key)
            if step.map is None:
                done.claimed.append(c)
                slots -= 1
            elif _expand(tx, step, params, results, done):
                item_keys.add(step.key)
            else:
                frontier.append(step.key)
        if not frontier:
            break
        known.update({k: done.finished[k] for k in frontier})

    running = running_items or {}
    mapped = item_keys | _mapped(definition) if look_for_items else item_keys
    for key in sorted(mapped) if mapped else ():
        spec = definition.step(key).map
        assert spec is not None
        limit = min(slots, spec.concurrency - running.get(key, 0))
        if limit > 0:
            items = tx.claim_items(key, limit, claimer, now=now)
            done.claimed.extend(items)
            slots -= len(items)

    if idle and not done.claimed:
        if tx.has_unfinished():
            if done.retry_at is None and not handoff:  # with handoff the owner polls for it
                done.retry_at = tx.next_available_at()
        else:
            done.final = instance_outcome(tx.step_statuses().values())
            tx.set_instance(done.final, error=_instance_error(done.final))
            if done.final is InstanceStatus.FAILED and definition.alerts:
                tx.enqueue_alerts(len(definition.alerts))
    return done


def _settle(
    tx: InstanceTransaction,
    definition: BatchDefinition,
    frontier: list[str],
    known: dict[str, StepStatus],
    done: Advance,
    params: Mapping[str, Any],
    results: Mapping[str, Any],
    ready_now: list[str],
    budget: int = 0,
    claimer: str | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Decide ``ready_now`` and propagate newly final steps through the DAG; return the
    steps that may now run.

    Up to ``budget`` steps whose one upstream step just ended and whose rule then runs
    them (no condition, not mapped) are started by the countdown itself (see
    ``InstanceTransaction.upstream_done``); they are in the list returned as well.

    A step is looked at when its count of unfinished upstream steps reaches zero, or
    earlier when its rule fires on an upstream step that just ended (``one_success``,
    ``one_failed``, ``one_done``). Either way it is decided once: once it leaves
    ``pending`` the counts and the readiness reads pass it by, so later upstream steps
    never start it again.
    """
    graph = definition.graph
    successors, predecessors, step = graph.successors, graph.predecessors, definition.step
    to_run: list[str] = []
    decided: set[str] = set()
    while frontier or ready_now:
        ready = ready_now
        ready_now = []
        counts: dict[str, int] = {}
        early: set[str] = set()
        start: list[str] = []  # decided to run as soon as counted down (see below)
        chosen: set[str] = set()
        for k in frontier:
            for s in successors.get(k, ()):
                counts[s] = counts.get(s, 0) + 1
                rule = step(s).trigger_rule
                if rule in EARLY_RULES and fires_on(rule, known[k]):
                    early.add(s)
        if counts:
            for s in counts if budget > 0 else ():
                before = predecessors[s]
                if len(before) != 1 or s in decided:
                    continue
                spec = step(s)
                if spec.condition is not None or spec.map is not None:
                    continue
                if decide(spec.trigger_rule, (known[before[0]],)) is StepStatus.QUEUED:
                    start.append(s)
                    if len(start) >= budget:
                        break
            budget -= len(start)
            chosen = set(start)
            ready = ready + tx.upstream_done(counts, start=start, owner=claimer, now=now)
        if early:
            early -= decided.union(ready)
        if early:
            ready = ready + tx.pending_among(sorted(early))
        # A step decided earlier in this transaction is still pending until start().
        ready = [k for k in dict.fromkeys(ready) if k not in decided]
        if not ready:
            break
        unknown = {p for k in ready for p in predecessors[k] if p not in known}
        if unknown:
            known.update(tx.statuses(unknown))
        decisions: dict[StepStatus, list[str]] = {}
        errors: dict[str, str] = {}
        upstream_status = known.__getitem__
        for key in ready:
            definition_of = step(key)
            if key in chosen:  # decided above, on the same upstream statuses
                verdict: StepStatus | None = StepStatus.QUEUED
            else:
                rule = definition_of.trigger_rule
                verdict = decide(rule, map(upstream_status, predecessors[key]))
            if verdict is None:
                continue  # an early rule that has not fired yet: it waits for its upstream
            decided.add(key)
            error = None if verdict is StepStatus.QUEUED else _why(verdict)
            if verdict is StepStatus.QUEUED and definition_of.condition is not None:
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
    return to_run


def _expand(
    tx: InstanceTransaction,
    step: StepDefinition,
    params: Mapping[str, Any],
    results: Mapping[str, Any],
    done: Advance,
) -> bool:
    """Expand a claimed mapped step into its items; False if it ended at once instead."""
    try:
        items = map_items(step, params, results, tx)
    except ValueError as exc:
        tx.finish_mapped(step.key, error=str(exc))
        done.finished[step.key] = StepStatus.FAILED
        return False
    if not items:
        tx.finish_mapped(step.key)
        done.finished[step.key] = StepStatus.SUCCEEDED
        done.mapped_results[step.key] = []
        return False
    tx.expand(step.key, len(items))
    done.expanded[step.key] = items
    return True


def map_items(
    step: StepDefinition,
    params: Mapping[str, Any],
    results: Mapping[str, Any],
    tx: InstanceTransaction | None = None,
) -> list[Any]:
    """The list a mapped step fans out over: an upstream step's result or a params key."""
    assert step.map is not None
    over = step.map.over
    upstream = step_upstream(step, results, tx)
    if over in upstream:
        value = upstream[over]
        where = f"the result of step {over!r}"
    elif over in params:
        value, where = params[over], f"params[{over!r}]"
    else:
        raise ValueError(f"map.over {over!r}: no stored result or param of that name")
    if not isinstance(value, list):
        raise ValueError(f"map.over {over!r}: {where} is a {type(value).__name__}, not a list")
    return value


def step_upstream(
    step: StepDefinition, results: Mapping[str, Any], tx: InstanceTransaction | None
) -> Mapping[str, Any]:
    assert step.map is not None
    over = step.map.over
    if over in results or tx is None:
        return results
    return {**results, **tx.results([over])}


def _finish_mapped(
    tx: InstanceTransaction,
    key: str,
    done: Advance,
    item_labels: Callable[[str], Sequence[str]] | None,
) -> None:
    labels = None
    if item_labels is not None:
        try:
            labels = item_labels(key)
        except Exception:  # naming is a courtesy: positions are shown instead
            labels = None
    status, payload = tx.finish_mapped(key, labels=labels)
    done.finished[key] = status
    if status is StepStatus.SUCCEEDED:
        done.mapped_results[key] = payload


def _mapped(definition: BatchDefinition) -> set[str]:
    return {s.key for s in definition.steps if s.map is not None}


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
