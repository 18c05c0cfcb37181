"""The orchestrator: drives instances from the stored state to a final state.

One driver thread per process makes every decision; runners report outcomes to it through
a queue, and it records a whole burst of outcomes of an instance in one short transaction
(group commit). That keeps the per-step cost to roughly one transaction however many steps
run at once, and no transaction is ever open while a runner executes.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from stepline.core.definition import BatchDefinition, StepDefinition
from stepline.core.states import InstanceStatus, StepStatus
from stepline.dispatchers.base import Dispatcher, StepWork
from stepline.engine.advance import Advance, advance, map_items
from stepline.engine.alerts import send_alerts
from stepline.errors import Conflict
from stepline.stores.base import InstanceRecord, StepOutcome, Store, StoredDefinition

log = structlog.get_logger("stepline.orchestrator")


def process_owner_id() -> str:
    """Who owns instances and steps: host and pid (so recovery on this host can see the
    process is gone) plus a random suffix (so a reused pid is a different owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


_MIN_WAKE = 0.05


@dataclass(frozen=True)
class StepEvent:
    """A change the orchestrator made, for progress displays and metrics."""

    instance_id: int
    step_key: str
    map_index: int
    status: StepStatus
    attempt: int
    at: datetime


Listener = Callable[[StepEvent], None]


@dataclass
class _Inflight:
    step: StepDefinition
    attempt: int
    deadline: float | None
    map_index: int = -1


@dataclass
class _Active:
    instance: InstanceRecord
    definition: BatchDefinition
    results: dict[str, Any] = field(default_factory=dict)
    inflight: dict[int, _Inflight] = field(default_factory=dict)
    look_for_queued: bool = True
    settle_pending: bool = False
    map_items: dict[str, list[Any]] = field(default_factory=dict)
    wake_at: float | None = None
    final: InstanceRecord | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Orchestrator:
    """Runs instances with a dispatcher; owns them through a lease in the store."""

    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        *,
        owner: str | None = None,
        lease_seconds: float = 30.0,
        poll_seconds: float = 1.0,
        listener: Listener | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.owner = owner or process_owner_id()
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.listener = listener
        self._outcomes: queue.SimpleQueue[StepOutcome | None] = queue.SimpleQueue()
        self._active: dict[int, _Active] = {}
        self._next_heartbeat = 0.0
        self._next_poll = 0.0
        self.alert_threads: list[threading.Thread | None] = []
        self.draining = False
        self.woken = False
        # Registered before it owns anything, so no other process takes it for dead.
        self._heartbeat(force=True)
        dispatcher.start(self._outcomes.put)

    # -- public ---------------------------------------------------------------------------

    def start(
        self,
        stored: StoredDefinition,
        params: Mapping[str, Any] | None = None,
        trigger: str = "cli",
    ) -> InstanceRecord:
        """Create an instance owned by this orchestrator (run it with :meth:`run`)."""
        self._heartbeat(force=True)
        instance, _ = self.store.create_instance(stored, params or {}, trigger, owner=self.owner)
        return instance

    def run(self, instance_id: int, timeout: float | None = None) -> InstanceRecord:
        """Drive ``instance_id`` (and anything else active) in this thread until it is final."""
        self._heartbeat(force=True)
        self.adopt(instance_id)
        active = self._active.get(instance_id)
        end = None if timeout is None else time.monotonic() + timeout
        while active is not None and not active.done.is_set():
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"instance {instance_id} did not finish in {timeout} s")
            self.step_once()
        return self.store.instance(instance_id)

    def adopt(
        self, instance_id: int, *, takeover: bool = False, expected_owner: str | None = None
    ) -> bool:
        """Take ownership of an unfinished instance and resume it from the stored state.

        Steps a previous owner left ``running`` are run again as a new attempt; steps it
        left ``queued`` are claimed as usual. Returns False if the instance is final.
        Raises Conflict if another owner still holds a valid lease, unless ``takeover``
        (recovery, which has established that ``expected_owner`` is dead: if the instance
        has changed hands since, another process recovered it first and this is a no-op).
        """
        active = self._active.get(instance_id)
        if active is not None:
            self._advance(active, [])
            return True
        record = self.store.instance(instance_id)
        if record.status.is_final:
            return False
        definition = self._definition(record)
        with self.store.instance_transaction(instance_id) as tx:
            current = tx.instance
            if current.status.is_final:
                return False
            if takeover and current.owner_id != expected_owner:
                return False  # someone recovered it first
            if current.owner_id not in (None, self.owner) and not takeover and tx.owner_alive():
                raise Conflict(
                    f"instance {instance_id} is being run by {current.owner_id}; "
                    f"`stepline cancel {instance_id}` stops it"
                )
            tx.set_instance(InstanceStatus.RUNNING, owner=self.owner)
            requeued = tx.requeue_running(
                exclude_owner=self.owner,
                exclude_keys=[s.key for s in definition.steps if s.map is not None],
            )
        if requeued:
            log.info("resumed steps of a dead owner", instance_id=instance_id, steps=requeued)
        active = _Active(
            replace(current, status=InstanceStatus.RUNNING, owner_id=self.owner), definition
        )
        self._active[instance_id] = active
        active.settle_pending = True
        self._advance(active, [])
        return True

    def step_once(self) -> None:
        """Wait for outcomes (or the next deadline) and process them once."""
        timeout = self._wait_seconds()
        batch: list[StepOutcome] = []
        try:
            item = self._outcomes.get(timeout=timeout)
            if item is not None:
                batch.append(item)
            while True:
                item = self._outcomes.get_nowait()
                if item is not None:
                    batch.append(item)
        except queue.Empty:
            pass
        by_instance: dict[int, list[StepOutcome]] = {}
        for o in batch:
            for instance_id, active in self._active.items():
                inflight = active.inflight.get(o.row_id)
                if inflight is not None:
                    # A late report of an abandoned attempt must not end the newer one.
                    if inflight.attempt == o.attempt:
                        by_instance.setdefault(instance_id, []).append(o)
                    break
        now = time.monotonic()
        for instance_id, active in list(self._active.items()):
            outcomes = by_instance.get(instance_id, [])
            outcomes.extend(self._expired(instance_id, active, now))
            due = active.wake_at is not None and active.wake_at <= now
            if due:
                active.look_for_queued = True  # a retry delay ended: its step is claimable
            if outcomes or due:
                self._advance(active, outcomes)
        if now >= self._next_poll:
            self._next_poll = now + self.poll_seconds
            self._poll_cancellations()
        self._heartbeat()

    def wake(self) -> None:
        """Make a blocked :meth:`step_once` return now; safe to call from any thread."""
        self.woken = True
        self._outcomes.put(None)

    @property
    def busy(self) -> bool:
        """Whether any attempt of this process is still running."""
        return any(a.inflight for a in self._active.values())

    def active_ids(self) -> list[int]:
        return list(self._active)

    def close(self) -> None:
        self.dispatcher.shutdown(wait=False)
        self.store.release(self.owner)

    # -- internals ------------------------------------------------------------------------

    def _definition(self, instance: InstanceRecord) -> BatchDefinition:
        return self.store.definition_for(instance)  # cached: no read, no decoding

    def _advance(self, active: _Active, outcomes: list[StepOutcome]) -> None:
        instance_id = active.instance.id
        running = sum(len(a.inflight) for a in self._active.values()) - len(outcomes)
        slots = self.dispatcher.capacity - running
        if self.draining:
            slots = 0  # shutting down: record what ends, start nothing new
        now = datetime.now(UTC)
        reported = {o.row_id for o in outcomes}
        still_running = {k: v for k, v in active.inflight.items() if k not in reported}
        try:
            with self.store.instance_transaction(instance_id, active.instance) as tx:
                if tx.instance.owner_id != self.owner or tx.instance.status.is_final:
                    self._lose(active)
                    return
                if tx.instance.cancel_requested:
                    self._cancel(active, tx)
                    return
                done = advance(
                    tx,
                    active.definition,
                    outcomes,
                    owner=self.owner,
                    now=now,
                    slots=slots,
                    look_for_queued=active.look_for_queued,
                    settle_pending=active.settle_pending,
                    results=active.results,
                    idle=not still_running,
                    params=active.instance.params,
                    running_items=Counter(
                        i.step.key for i in still_running.values() if i.map_index >= 0
                    ),
                )
        except Exception:
            # Nothing was recorded: the outcomes go back to be recorded on the next turn.
            for o in outcomes:
                self._outcomes.put(o)
            raise
        for o in outcomes:
            active.inflight.pop(o.row_id, None)
        active.settle_pending = False
        for o in outcomes:
            if o.map_index < 0 and done.finished.get(o.step_key) is StepStatus.SUCCEEDED:
                active.results[o.step_key] = _decode(o.payload)
        active.results.update(done.mapped_results)
        active.map_items.update(done.expanded)
        for key in done.mapped_results:
            active.map_items.pop(key, None)
        # With no free slot, queued steps wait for one: look for them again next time.
        active.look_for_queued = slots <= 0 or len(done.claimed) >= slots
        clock = time.monotonic()
        wake = active.wake_at if active.wake_at is not None and active.wake_at > clock else None
        if done.retry_at is not None:
            # Never less than a short pause: with every slot taken by other instances, a step
            # that is already available is claimed by polling, not by spinning.
            delay = max(_MIN_WAKE, (done.retry_at - now).total_seconds())
            wake = clock + delay if wake is None else min(wake, clock + delay)
        elif slots <= 0 and done.final is None and not active.inflight and not done.claimed:
            wake = clock + self.poll_seconds if wake is None else wake
        active.wake_at = wake
        self._emit(active, done, outcomes, now)
        if done.final is not None:
            self._finish(active)
            return
        for claimed in done.claimed:
            step = active.definition.step(claimed.step_key)
            deadline = (
                time.monotonic() + step.timeout.total_seconds()
                if step.timeout is not None
                else None
            )
            active.inflight[claimed.row_id] = _Inflight(
                step, claimed.attempt, deadline, claimed.map_index
            )
            preds = active.definition.graph.predecessors.get(claimed.step_key, ())
            known = {k: active.results[k] for k in preds if k in active.results}
            item = None
            if claimed.map_index >= 0:
                item = self._items(active, step)[claimed.map_index]
            self.dispatcher.submit(
                StepWork(
                    instance_id=instance_id,
                    batch=active.instance.batch,
                    claimed=claimed,
                    step=step,
                    params=active.instance.params,
                    results=known,
                    missing_results=tuple(k for k in preds if k not in known),
                    item=item,
                )
            )

    def _items(self, active: _Active, step: StepDefinition) -> list[Any]:
        """A mapped step's list; read again from the store after a restart."""
        items = active.map_items.get(step.key)
        if items is None:
            assert step.map is not None
            results = active.results
            if step.map.over not in results and step.map.over not in active.instance.params:
                results = {**results, **self.store.results_for(active.instance.id, [step.map.over])}
            items = active.map_items[step.key] = map_items(step, active.instance.params, results)
        return items

    def _emit(
        self, active: _Active, done: Advance, outcomes: list[StepOutcome], now: datetime
    ) -> None:
        if self.listener is None:
            return
        attempts = {o.step_key: o.attempt for o in outcomes}
        for key, status in done.finished.items():
            self.listener(StepEvent(active.instance.id, key, -1, status, attempts.get(key, 0), now))
        for o in outcomes:
            if o.map_index >= 0:
                status = StepStatus.SUCCEEDED if o.succeeded else StepStatus.FAILED
                self.listener(
                    StepEvent(active.instance.id, o.step_key, o.map_index, status, o.attempt, now)
                )
            elif not o.succeeded and o.step_key not in done.finished:
                self.listener(
                    StepEvent(
                        active.instance.id,
                        o.step_key,
                        o.map_index,
                        StepStatus.QUEUED,
                        o.attempt,
                        now,
                    )
                )
        for c in done.claimed:
            self.listener(
                StepEvent(
                    active.instance.id, c.step_key, c.map_index, StepStatus.RUNNING, c.attempt, now
                )
            )

    def _expired(self, instance_id: int, active: _Active, now: float) -> list[StepOutcome]:
        expired: list[StepOutcome] = []
        for row_id, inflight in list(active.inflight.items()):
            if inflight.deadline is None or inflight.deadline > now:
                continue
            assert inflight.step.timeout is not None
            self.dispatcher.abandon(instance_id, row_id, inflight.attempt)
            finished = datetime.now(UTC)
            expired.append(
                StepOutcome(
                    row_id=row_id,
                    step_key=inflight.step.key,
                    map_index=inflight.map_index,
                    attempt=inflight.attempt,
                    succeeded=False,
                    payload=None,
                    error=f"TimeoutError: attempt {inflight.attempt} exceeded the step timeout "
                    f"of {inflight.step.timeout.total_seconds():g} s",
                    started_at=finished - inflight.step.timeout,
                    finished_at=finished,
                )
            )
        return expired

    def _cancel(self, active: _Active, tx: Any) -> None:
        for row_id, inflight in active.inflight.items():
            self.dispatcher.abandon(active.instance.id, row_id, inflight.attempt)
        active.inflight.clear()
        tx.cancel_unfinished()
        tx.set_instance(InstanceStatus.CANCELLED, error="cancelled on request")
        self._finish(active)

    def _lose(self, active: _Active) -> None:
        """The instance is no longer ours (recovered by another process, or final)."""
        log.warning("instance no longer owned here; dropping it", instance_id=active.instance.id)
        for row_id, inflight in active.inflight.items():
            self.dispatcher.abandon(active.instance.id, row_id, inflight.attempt)
        active.inflight.clear()
        self._active.pop(active.instance.id, None)
        active.done.set()

    def _finish(self, active: _Active) -> None:
        del self._active[active.instance.id]
        if active.definition.alerts:
            final = self.store.instance(active.instance.id)
            if final.status is InstanceStatus.FAILED:
                self.alert_threads.append(send_alerts(self.store, final, active.definition.alerts))
        active.done.set()

    def _poll_cancellations(self) -> None:
        for instance_id, active in list(self._active.items()):
            if self.store.instance(instance_id).cancel_requested:
                self._advance(active, [])

    def _wait_seconds(self) -> float:
        now = time.monotonic()
        wait = min(self.poll_seconds, max(0.0, self._next_heartbeat - now))
        for active in self._active.values():
            if active.wake_at is not None:
                wait = min(wait, active.wake_at - now)
            for inflight in active.inflight.values():
                if inflight.deadline is not None:
                    wait = min(wait, inflight.deadline - now)
        return max(wait, 0.0)

    def _heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self._next_heartbeat:
            self.store.heartbeat(self.owner, self.lease_seconds)
            self._next_heartbeat = now + self.lease_seconds / 3


def _decode(payload: str | None) -> Any:
    return None if payload is None else json.loads(payload)
