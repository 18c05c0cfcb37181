"""The orchestrator: drives instances from the stored state to a final state.

One driver thread per process makes every decision; runners report outcomes to it through
a queue, and it records a whole burst of outcomes of an instance in one short transaction
(group commit). That keeps the per-step cost to roughly one transaction however many steps
run at once, and no transaction is ever open while a runner executes.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

import structlog

from stepline.core.definition import BatchDefinition, StepDefinition
from stepline.core.states import InstanceStatus, StepStatus
from stepline.dispatchers.base import Dispatcher, StepWork
from stepline.engine import outcome_log
from stepline.engine.advance import Advance, advance, map_items
from stepline.engine.alerts import deliver_in_background
from stepline.engine.backoff import Backoff, short_error
from stepline.engine.execution import timeout_error
from stepline.errors import Conflict, StoreUnavailable
from stepline.stores.base import (
    InstanceRecord,
    InstanceTransaction,
    StepOutcome,
    Store,
    StoredDefinition,
)

log = structlog.get_logger("stepline.orchestrator")

RELEASE_SECONDS = 5.0
"""How long closing an orchestrator waits for the database to take the release of its lease."""


def process_owner_id() -> str:
    """Who owns instances and steps: host and pid (so recovery on this host can see the
    process is gone) plus a random suffix (so a reused pid is a different owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


_MIN_WAKE = 0.05
_RESYNC_DELAY = 0.05


class StepEvent(NamedTuple):
    """A change the orchestrator made, for progress displays and metrics.

    A named tuple, not a frozen dataclass: a map of 10,000 items makes 20,000 of them on
    the driver thread, and a tuple is built four times faster."""

    instance_id: int
    step_key: str
    map_index: int
    status: StepStatus
    attempt: int
    at: datetime
    batch: str = ""
    duration: float | None = None
    """Set on the one event that ends an attempt (final, an item's end, or queued again
    for a retry): how long the attempt ran, in seconds."""
    label: str | None = None
    """How users name a map item (``F002``; see MapSpec.item_label); None for a step."""
    items: int | None = None
    """For a mapped step that was just expanded: how many items it has."""


@dataclass(frozen=True)
class InstanceEvent:
    """An instance this process drove reached a final status."""

    instance_id: int
    batch: str
    status: InstanceStatus
    duration: float
    at: datetime


Listener = Callable[[StepEvent], None]


@runtime_checkable
class InstanceListener(Protocol):
    """A listener that also wants to hear when instances end (metrics)."""

    def instance_ended(self, event: InstanceEvent) -> None: ...


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
    labels: dict[str, list[str]] = field(default_factory=dict)
    wake_at: float | None = None
    resync: bool = False
    failures: int = 0
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
        max_result_bytes: int | None = None,
        db_patience_seconds: float = 300.0,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.owner = owner or process_owner_id()
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.listener = listener
        self._listener_errors = 0
        limit = store.payload_limit()
        if max_result_bytes is None or (limit is not None and limit < max_result_bytes):
            max_result_bytes = limit
        self.max_result_bytes = max_result_bytes
        self.db_patience_seconds = db_patience_seconds
        self._outcomes: queue.SimpleQueue[StepOutcome | None] = queue.SimpleQueue()
        self._active: dict[int, _Active] = {}
        self._next_heartbeat = 0.0
        # Every transaction reads the cancel flag too: polling is for instances that wait.
        self._next_poll = time.monotonic() + poll_seconds
        self.alert_threads: list[threading.Thread | None] = []
        self.draining = False
        self.woken = False
        self._deferred: list[StepWork] | None = None
        """While step_once advances instances: the attempts to submit when it is done."""
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
        self._heartbeat()
        instance, _ = self.store.create_instance(stored, params or {}, trigger, owner=self.owner)
        return instance

    def run(self, instance_id: int, timeout: float | None = None) -> InstanceRecord:
        """Drive ``instance_id`` (and anything else active) in this thread until it is final.

        A database that stops answering is waited for (``db_patience_seconds``), then
        StoreUnavailable is raised and the instance is left for recovery.
        """
        end = None if timeout is None else time.monotonic() + timeout
        backoff = Backoff(self.db_patience_seconds)
        while True:
            try:
                self._heartbeat()  # renewed if due: the lease is valid for two more periods
                self.adopt(instance_id)
                break
            except StoreUnavailable as exc:
                backoff.wait(exc)
        active = self._active.get(instance_id)
        while active is not None and not active.done.is_set():
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"instance {instance_id} did not finish in {timeout} s")
            try:
                self.step_once()
            except StoreUnavailable as exc:
                backoff.wait(exc)
            else:
                backoff.reset()
        while True:
            try:
                return self.store.instance(instance_id)
            except StoreUnavailable as exc:
                backoff.wait(exc)

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
        taken = self._take_ownership(instance_id, takeover=takeover, expected_owner=expected_owner)
        if taken is None:
            return False
        current, definition = taken
        active = _Active(
            replace(current, status=InstanceStatus.RUNNING, owner_id=self.owner), definition
        )
        self._active[instance_id] = active
        active.settle_pending = True
        self._advance(active, [])
        if takeover:
            self._taken_over(instance_id)
        return True

    def _take_ownership(
        self,
        instance_id: int,
        *,
        takeover: bool,
        expected_owner: str | None,
    ) -> tuple[InstanceRecord, BatchDefinition] | None:
        """Make this process the instance's owner, in one transaction; the instance as it
        was before and its definition, or None if it is final or (``takeover``) changed
        hands since."""
        # One read: the locked row tells whether it is final and which definition it runs
        # (from memory once loaded; a first load reads it in its own connection).
        with self.store.instance_transaction(instance_id) as tx:
            current = tx.instance
            if current.status.is_final:
                return None
            definition = self._definition(current)
            if takeover and current.owner_id != expected_owner:
                return None  # someone recovered it first
            if current.owner_id not in (None, self.owner) and not takeover and tx.owner_alive():
                raise Conflict(
                    f"instance {instance_id} is being run by {current.owner_id}",
                    hint=f"`stepline cancel {instance_id}` stops it",
                )
            tx.set_instance(InstanceStatus.RUNNING, owner=self.owner)
            # Taking back one of its own that it does not drive: none of its steps run here.
            ours = takeover and expected_owner == self.owner
            exclude = None if ours else self.owner
            requeued = self._requeue_running(tx, definition, exclude_owner=exclude)
        if requeued:
            log.info("resumed steps of a dead owner", instance_id=instance_id, steps=requeued)
        return current, definition

    def _requeue_running(
        self, tx: InstanceTransaction, definition: BatchDefinition, *, exclude_owner: str | None
    ) -> list[str]:
        """Steps a previous owner left running run again here as a new attempt."""
        return tx.requeue_running(
            exclude_owner=exclude_owner,
            exclude_keys=[s.key for s in definition.steps if s.map is not None],
        )

    def _taken_over(self, instance_id: int) -> None:
        """After a recovery took the instance over: nothing more to do here."""

    def step_once(self) -> None:
        """Wait for outcomes (or the next deadline) and process them once."""
        timeout = self._wait_seconds()
        batch: list[StepOutcome] = []
        try:
            item = self._outcomes.get(timeout=timeout)
            if item is not None:
                batch.append(item)
            while not self._outcomes.empty():  # only this thread takes from the queue
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
        # The attempts claimed below are handed to the dispatcher last, just before this
        # thread waits again: a runner thread woken earlier would only wait for the GIL
        # while the driver finishes its turn (and be woken a second time).
        deferred: list[StepWork] = []
        self._deferred = deferred
        try:
            self._advance_all(by_instance)
        finally:
            self._deferred = None
            self._submit(deferred)

    def _advance_all(self, by_instance: dict[int, list[StepOutcome]]) -> None:
        now = time.monotonic()
        failure: BaseException | None = None
        for instance_id, active in list(self._active.items()):
            outcomes = by_instance.get(instance_id, [])
            outcomes.extend(self._expired(instance_id, active, now))
            due = active.wake_at is not None and active.wake_at <= now
            if due:
                active.look_for_queued = True  # a retry delay ended: its step is claimable
            if outcomes or due:
                # One instance's failure must not cost another its outcomes: each is
                # recorded (or put back) on its own, and the first error is raised after.
                try:
                    self._advance(active, outcomes)
                except Exception as exc:
                    failure = failure or exc
        if failure is not None:
            # The lease is renewed all the same: an instance that fails every turn must not
            # make this live process look dead, and its other instances taken over.
            with contextlib.suppress(StoreUnavailable):
                self._heartbeat()
            raise failure
        if now >= self._next_poll:
            self._next_poll = now + self.poll_seconds
            self._poll_cancellations()
        self._heartbeat()

    def _submit(self, deferred: list[StepWork]) -> None:
        """Hand deferred attempts to the dispatcher, except one that is no longer in
        flight (its instance was cancelled or lost in the same turn)."""
        submit = self.dispatcher.submit
        for work in deferred:
            active = self._active.get(work.instance_id)
            inflight = None if active is None else active.inflight.get(work.claimed.row_id)
            if inflight is not None and inflight.attempt == work.claimed.attempt:
                submit(work)

    def heartbeat(self) -> None:
        """Renew this process's lease now if it is due (while it waits outside step_once)."""
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

    @property
    def alert_claim_seconds(self) -> float:
        """How long a sender holds an alert before another process may send it again."""
        return 2 * self.lease_seconds

    def close(self) -> None:
        """Stop; alerts being sent get up to 30 s (whatever is unsent stays in the outbox)."""
        outcome_log.flush()
        self.dispatcher.shutdown(wait=False)
        deadline = time.monotonic() + 30
        for thread in self.alert_threads:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        self._release()

    def _release(self) -> None:
        """Release the lease, waiting for the database at most RELEASE_SECONDS.

        A database that does not answer (a frozen server, a hung proxy: the connection stays
        open and nothing comes back) must not hold a process that is stopping, such as
        ``stepline run`` after Ctrl-C: the lease then lapses, and whatever this process
        still owned is recovered as after a crash. An error the database answers with is
        raised, as before."""
        failed: list[BaseException] = []

        def release() -> None:
            try:
                self.store.release(self.owner)
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=release, name="stepline-release", daemon=True)
        thread.start()
        thread.join(RELEASE_SECONDS)
        if thread.is_alive():
            log.warning(
                "could not release the lease: the database does not answer; it lapses, "
                "and what this process owned is recovered then",
                owner=self.owner,
                waited_seconds=RELEASE_SECONDS,
                lease_seconds=self.lease_seconds,
            )
        elif failed:
            raise failed[0]

    # -- internals ------------------------------------------------------------------------

    def _definition(self, instance: InstanceRecord) -> BatchDefinition:
        return self.store.definition_for(instance)  # cached: no read, no decoding

    def _advance(self, active: _Active, outcomes: list[StepOutcome], *, split: bool = True) -> None:
        instance_id = active.instance.id
        if len(self._active) == 1:
            running = len(active.inflight) - len(outcomes)
        else:
            running = sum(len(a.inflight) for a in self._active.values()) - len(outcomes)
        slots = self.dispatcher.capacity - running
        if self.draining:
            slots = 0  # shutting down: record what ends, start nothing new
        now = datetime.now(UTC)
        reported = {o.row_id for o in outcomes}
        idle = True
        items: dict[str, int] = {}  # map items still running, by step
        for row_id, inflight in active.inflight.items():
            if row_id not in reported:
                idle = False
                if inflight.map_index >= 0:
                    items[inflight.step.key] = items.get(inflight.step.key, 0) + 1
        try:
            with self.store.instance_transaction(instance_id, active.instance) as tx:
                if tx.instance.owner_id != self.owner or tx.instance.status.is_final:
                    self._lose(active)
                    return
                if tx.instance.cancel_requested:
                    self._cancel(active, tx)
                    return
                if active.resync:
                    self._resync(active, tx)
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
                    idle=idle,
                    params=active.instance.params,
                    running_items=items,
                    item_labels=lambda key: self._labels(active, key),
                )
        except Exception as exc:
            if split and outcomes and not isinstance(exc, StoreUnavailable):
                # The database refused this burst for good (a value it cannot hold): find
                # the outcome it refuses, and record that attempt as failed instead.
                self._advance_one_by_one(active, outcomes, exc)
                return
            # Nothing was recorded, or the commit's fate is unknown: the outcomes go back
            # to be recorded on the next turn (the attempt fence makes a second record a
            # no-op), and that turn first reconciles the stored state with this process.
            for o in outcomes:
                self._outcomes.put(o)
            active.resync = True
            active.failures += 1
            active.wake_at = time.monotonic() + min(_RESYNC_DELAY * 2**active.failures, 5.0)
            raise
        active.resync = False
        active.failures = 0
        for o in outcomes:
            active.inflight.pop(o.row_id, None)
        active.settle_pending = False
        for o in outcomes:
            if o.map_index < 0 and done.finished.get(o.step_key) is StepStatus.SUCCEEDED:
                active.results[o.step_key] = _decode(o.payload)
        active.results.update(done.mapped_results)
        active.map_items.update(done.expanded)
        for key in done.expanded:
            active.labels.pop(key, None)
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
        for key in done.mapped_results:  # a finished map: its items are not named again
            active.map_items.pop(key, None)
            active.labels.pop(key, None)
        if done.final is not None:
            self._finish(active, done.final)
            return
        definition, results = active.definition, active.results
        submit = self.dispatcher.submit if self._deferred is None else self._deferred.append
        predecessors = definition.graph.predecessors
        for n, claimed in enumerate(done.claimed):
            step = definition.step(claimed.step_key)
            item = None
            if claimed.map_index >= 0:
                try:  # a read after a restart or a resync: the claims are committed by now
                    item = self._items(active, step)[claimed.map_index]
                except Exception:
                    # These claims will not run: the next transaction queues them again
                    # (_resync), as after a commit whose fate is unknown.
                    for rest in done.claimed[n:]:
                        active.inflight.pop(rest.row_id, None)
                    active.resync = True
                    active.failures += 1
                    retry = time.monotonic() + min(_RESYNC_DELAY * 2**active.failures, 5.0)
                    active.wake_at = min(active.wake_at or retry, retry)
                    raise
            deadline = (
                time.monotonic() + step.timeout.total_seconds()
                if step.timeout is not None
                else None
            )
            active.inflight[claimed.row_id] = _Inflight(
                step, claimed.attempt, deadline, claimed.map_index
            )
            preds = predecessors.get(claimed.step_key, ())
            known = {k: results[k] for k in preds if k in results}
            submit(
                StepWork(
                    instance_id,
                    active.instance.batch,
                    claimed,
                    step,
                    active.instance.params,
                    known,
                    () if len(known) == len(preds) else tuple(k for k in preds if k not in known),
                    item,
                    self.max_result_bytes,
                )
            )

    def _advance_one_by_one(
        self, active: _Active, outcomes: list[StepOutcome], error: Exception
    ) -> None:
        """Record ``outcomes`` one at a time; an outcome the store refuses on its own is
        recorded as a failed attempt that says why (not retried: it would fail again)."""
        log.warning(
            "the database refused a burst of outcomes; recording them one by one",
            instance_id=active.instance.id,
            error=short_error(error),
        )
        for i, o in enumerate(outcomes):
            if active.instance.id not in self._active:
                return  # it ended or was lost meanwhile; the rest are fenced off anyway
            try:
                self._record_alone(active, o)
            except BaseException:
                # _advance put this one back; the rest go back too, or their attempts
                # would stay in flight with nobody to report them.
                for rest in outcomes[i + 1 :]:
                    self._outcomes.put(rest)
                raise

    def _record_alone(self, active: _Active, o: StepOutcome) -> None:
        """Record one outcome; one the store refuses becomes its attempt's bare failure."""
        try:
            self._advance(active, [o], split=False)
            return
        except StoreUnavailable:
            raise
        except Exception as exc:
            refused = exc
        if o.row_id not in active.inflight:
            return
        log.warning(
            "step outcome could not be stored; failing the attempt",
            instance_id=active.instance.id,
            step=o.step_key,
            attempt=o.attempt,
            error=short_error(refused),
        )
        why = f"the outcome of attempt {o.attempt} could not be stored: {short_error(refused)}"
        self._advance(active, [o.unstored(why)], split=False)

    def _resync(self, active: _Active, tx: Any) -> None:
        """After a transaction whose commit may or may not have happened: steps the store
        has ``running`` under this process that it is not running are queued again."""
        tracked = {(row_id, i.attempt) for row_id, i in active.inflight.items()}
        mapped = [s.key for s in active.definition.steps if s.map is not None]
        unclaimed = tx.unclaim_untracked(self.owner, tracked, exclude_keys=mapped)
        if unclaimed:
            log.info(
                "steps claimed in a transaction whose commit was not confirmed are queued again",
                instance_id=active.instance.id,
                steps=unclaimed,
            )
        active.look_for_queued = True
        active.settle_pending = True
        active.map_items.clear()
        active.labels.clear()

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

    def _labels(self, active: _Active, key: str) -> list[str]:
        """The names of a mapped step's items, by map_index (see MapSpec.item_label); named
        once per instance, as progress asks for one at each item event."""
        labels = active.labels.get(key)
        if labels is None:
            step = active.definition.step(key)
            assert step.map is not None
            params = active.instance.params
            labels = active.labels[key] = [
                step.map.item_label(item, index, params)
                for index, item in enumerate(self._items(active, step))
            ]
        return labels

    def _label(self, active: _Active, key: str, index: int) -> str:
        try:
            labels = self._labels(active, key)
        except Exception:  # naming is a courtesy: the position is shown instead
            return str(index)
        return labels[index] if index < len(labels) else str(index)

    def _emit(
        self, active: _Active, done: Advance, outcomes: list[StepOutcome], now: datetime
    ) -> None:
        instance, batch = active.instance.id, active.instance.batch
        if done.recorded and outcome_log.enabled():
            outcome_log.attempts_ended(
                batch,
                instance,
                [
                    (
                        o,
                        StepStatus.SUCCEEDED
                        if o.succeeded
                        else StepStatus.QUEUED
                        if retrying
                        else StepStatus.FAILED,
                    )
                    for o, retrying in done.recorded
                ],
            )
        listener = self.listener
        if listener is None:
            return
        try:
            self._tell(active, done, now, listener)
        except Exception as exc:
            self._listener_failed(exc)

    def _listener_failed(self, exc: Exception) -> None:
        """A listener that raises loses its events, never the engine's work: the decisions
        are committed and the claimed steps still have to be handed to the dispatcher."""
        self._listener_errors += 1
        first = self._listener_errors == 1  # with its traceback: it may be a bug of ours
        (log.warning if first else log.debug)(
            "the progress listener raised; its events are dropped",
            error=short_error(exc),
            errors=self._listener_errors,
            exc_info=exc if first else None,
        )

    def _tell(self, active: _Active, done: Advance, now: datetime, listener: Listener) -> None:
        instance, batch = active.instance.id, active.instance.batch
        ended: dict[str, StepOutcome] = {}
        for o, retrying in done.recorded:
            if o.map_index < 0 and not retrying:
                ended[o.step_key] = o
        for key, items in done.expanded.items():
            listener(
                StepEvent(instance, key, -1, StepStatus.RUNNING, 0, now, batch, items=len(items))
            )
        for o, retrying in done.recorded:
            if o.map_index >= 0:
                status = StepStatus.SUCCEEDED if o.succeeded else StepStatus.FAILED
                if retrying:
                    status = StepStatus.QUEUED  # failed, to be tried again: not failed yet
                listener(
                    StepEvent(
                        instance,
                        o.step_key,
                        o.map_index,
                        status,
                        o.attempt,
                        now,
                        batch,
                        _seconds(o),
                        label=self._label(active, o.step_key, o.map_index),
                    )
                )
            elif retrying:
                listener(
                    StepEvent(
                        instance,
                        o.step_key,
                        o.map_index,
                        StepStatus.QUEUED,
                        o.attempt,
                        now,
                        batch,
                        _seconds(o),
                    )
                )
        # After the items, so that a display has counted every item when the step ends.
        for key, status in done.finished.items():
            last = ended.get(key)
            listener(
                StepEvent(
                    instance,
                    key,
                    -1,
                    status,
                    last.attempt if last is not None else 0,
                    now,
                    batch,
                    _seconds(last) if last is not None else None,
                )
            )
        for c in done.claimed:
            label = self._label(active, c.step_key, c.map_index) if c.map_index >= 0 else None
            listener(
                StepEvent(
                    instance,
                    c.step_key,
                    c.map_index,
                    StepStatus.RUNNING,
                    c.attempt,
                    now,
                    batch,
                    label=label,
                )
            )

    def _expired(self, instance_id: int, active: _Active, now: float) -> list[StepOutcome]:
        expired: list[StepOutcome] = []
        for row_id, inflight in active.inflight.items():
            if inflight.deadline is None or inflight.deadline > now:
                continue
            assert inflight.step.timeout is not None
            inflight.deadline = None  # reported once; if recording fails, it is put back
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
                    error=timeout_error(inflight.attempt, inflight.step.timeout),
                    started_at=finished - inflight.step.timeout,
                    finished_at=finished,
                    error_codes=("TimeoutError",),
                )
            )
        return expired

    def _cancel(self, active: _Active, tx: Any) -> None:
        for row_id, inflight in active.inflight.items():
            self.dispatcher.abandon(active.instance.id, row_id, inflight.attempt)
        active.inflight.clear()
        tx.cancel_unfinished()
        tx.set_instance(InstanceStatus.CANCELLED, error="cancelled on request")
        self._finish(active, InstanceStatus.CANCELLED)

    def _lose(self, active: _Active) -> None:
        """The instance is no longer ours (recovered by another process, or final)."""
        log.warning("instance no longer owned here; dropping it", instance_id=active.instance.id)
        for row_id, inflight in active.inflight.items():
            self.dispatcher.abandon(active.instance.id, row_id, inflight.attempt)
        active.inflight.clear()
        self._active.pop(active.instance.id, None)
        active.done.set()

    def _finish(self, active: _Active, final: InstanceStatus) -> None:
        del self._active[active.instance.id]
        record = active.instance
        now = datetime.now(UTC)
        duration = (now - (record.started_at or record.created_at)).total_seconds()
        outcome_log.instance_ended(record.batch, record.id, final, duration)
        if isinstance(self.listener, InstanceListener):
            try:
                self.listener.instance_ended(
                    InstanceEvent(record.id, record.batch, final, duration, now)
                )
            except Exception as exc:
                self._listener_failed(exc)
        if final is InstanceStatus.FAILED and active.definition.alerts:
            self.alert_threads.append(
                deliver_in_background(
                    self.store,
                    self.owner,
                    self.alert_claim_seconds,
                    instance_id=active.instance.id,
                )
            )
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


def _seconds(o: StepOutcome) -> float:
    return max(0.0, (o.finished_at - o.started_at).total_seconds())


def _decode(payload: str | None) -> Any:
    if payload is None or payload == "null":  # a step that returns nothing: no parsing
        return None
    return json.loads(payload)
