"""Driving instances whose steps run on remote workers (the celery dispatcher).

Two roles share the same decision transaction, :func:`~stepline.engine.advance.advance`:

- a **worker** (:class:`StepJob`) picks an attempt up (fenced by attempt), runs the runner,
  then records the outcome and advances the DAG in one transaction, and says which claimed
  successors to send. No process needs to see every outcome.
- the **owner** of the instance (:class:`RemoteOrchestrator`, in ``serve`` or ``run``)
  adopts it, sends its first steps, and then only watches: it sends retried steps when
  their backoff ends (the wait is a timestamp in the database, not a message in the
  broker), cancels, turns the attempts of dead workers into lost attempts, sends again what
  no worker picked up, and notices the end (alerts, progress).

Claimed attempts are handed over without an owner (``advance(handoff=True)``): the first
worker to pick one up owns it, so a duplicate delivery runs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, NamedTuple, NoReturn

import structlog

from stepline.core.definition import BatchDefinition, StepDefinition
from stepline.core.states import InstanceStatus, StepStatus
from stepline.dispatchers.base import RemoteDispatcher, StepMessage, StepWork
from stepline.engine.advance import advance, map_items
from stepline.engine.backoff import Backoff, short_error
from stepline.engine.execution import (
    is_async,
    outcome,
    run_async,
    run_sync,
    timed_out,
    timeout_error,
)
from stepline.engine.orchestrator import Listener, Orchestrator, StepEvent, _Active
from stepline.errors import NotFound, StoreUnavailable
from stepline.stores.base import (
    ClaimedStep,
    InstanceRecord,
    InstanceTransaction,
    KeptAttempt,
    RunningStep,
    StepOutcome,
    StepState,
    Store,
)

log = structlog.get_logger("stepline.remote")

MAX_CLAIM = 100_000
"""Steps one transaction may hand to the broker: the broker queues what workers cannot
take yet, so the only bound is the size of one transaction."""
PARCEL_SECONDS = 1.0
"""How long a worker runs the steps of one message before it sends back those not started."""
REFUSALS = 3
"""Times the database may refuse a step outcome before it is recorded without its result."""


class Finished(NamedTuple):
    """An attempt a worker ran, not yet recorded."""

    instance: InstanceRecord
    definition: BatchDefinition
    outcome: StepOutcome


_MISSING = object()


def message_for(definition: BatchDefinition, instance_id: int, claimed: ClaimedStep) -> StepMessage:
    step = definition.step(claimed.step_key)
    return StepMessage(
        instance_id,
        claimed.row_id,
        claimed.attempt,
        definition.queue_of(step.key),
        step.timeout.total_seconds() if step.timeout is not None else None,
    )


def dead_owners(store: Store, me: str | None = None) -> list[str]:
    """Registered owners whose lease expired, or whose process on this host is gone."""
    host = socket.gethostname()
    dead = []
    for owner, hostname, pid, valid in store.workers():
        if owner == me:
            continue
        if not valid or (hostname == host and not pid_alive(pid)):
            dead.append(owner)
    return dead


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lost_outcome(step: StepDefinition, running: RunningStep, now: datetime) -> StepOutcome:
    """The outcome of an attempt whose worker died: failed, retried per policy (at least once)."""
    started = running.started_at or now
    if step.timeout is not None and now - started >= step.timeout:
        error = (
            f"{timeout_error(running.attempt, step.timeout)}; its worker process "
            f"{running.owner_id} was stopped at the hard time limit"
        )
    else:
        error = f"lost: its worker {running.owner_id} stopped before the attempt ended"
    return StepOutcome(
        row_id=running.row_id,
        step_key=running.step_key,
        map_index=running.map_index,
        attempt=running.attempt,
        succeeded=False,
        payload=None,
        error=error,
        started_at=started,
        finished_at=now,
        first_attempt=running.first_attempt,
        lost=True,
    )


class StepJob:
    """A worker process's whole job for one message: pick up, run, record, advance."""

    def __init__(self, store: Store, owner: str, *, max_result_bytes: int | None = None) -> None:
        self.store = store
        self.owner = owner
        limit = store.payload_limit()
        if max_result_bytes is None or (limit is not None and limit < max_result_bytes):
            max_result_bytes = limit
        self.max_result_bytes = max_result_bytes
        self._items: dict[tuple[int, str], list[Any]] = {}
        self._definitions: dict[tuple[str, int], BatchDefinition] = {}
        self._instances: dict[int, InstanceRecord] = {}
        self._results: dict[tuple[int, str], Any] = {}

    def __call__(
        self,
        instance_id: int,
        row_id: int,
        attempt: int,
        *,
        timeouts: tuple[type[BaseException], ...] = (),
    ) -> list[StepMessage]:
        """Run the attempt if this delivery is the first to pick it up, record it; return
        the claimed successors to send. ``timeouts`` are the exceptions that mean the
        attempt ran out of time (the worker's soft time limit)."""
        finished = self.run(instance_id, row_id, attempt, timeouts=timeouts)
        if finished is None:
            return []
        return self.record(*finished)

    def run(
        self,
        instance_id: int,
        row_id: int,
        attempt: int,
        *,
        timeouts: tuple[type[BaseException], ...] = (),
    ) -> Finished | None:
        """Pick the attempt up and run it; None if another delivery took it first (or it
        ended, or a newer attempt superseded it). Nothing is recorded yet."""
        at = datetime.now(UTC)  # made again with the same time, a pickup is idempotent

        def pickup() -> tuple[int, ClaimedStep] | None:
            return self.store.pickup(row_id, attempt, self.owner, now=at)

        try:
            picked = pickup()
        except StoreUnavailable:  # held, not dropped: a dropped message waits for a resend
            picked = Backoff(None).call(pickup)
        if picked is None:
            log.info(
                "delivery of an attempt already taken, ended or superseded; nothing to run",
                instance_id=instance_id,
                row_id=row_id,
                attempt=attempt,
            )
            return None
        return self.execute(*picked, timeouts=timeouts)

    def run_many(
        self,
        row_ids: Sequence[int],
        attempt: int,
        *,
        send: Callable[[Sequence[StepMessage]], None],
        seconds: float = PARCEL_SECONDS,
    ) -> Iterator[Finished]:
        """Pick up several attempts of one number at once (a message of several steps), then
        run them one after the other, yielding each as it ends. Those another delivery took
        first (or that ended, or were superseded) are left out.

        Every attempt picked up is this process's from then on: if it dies, each one not
        yet recorded is a lost attempt, as on the direct dispatcher. Once ``seconds`` have
        gone by, even in the middle of a long step, what has not started is handed back and
        sent again (``send``): a message of long steps holds neither work an idle process
        could take, nor a worker that is asked to stop, nor steps cancelled meanwhile."""
        at = datetime.now(UTC)

        picked = Backoff(None).call(  # once per message: a database blip is waited for
            lambda: self.store.pickup_many(row_ids, attempt, self.owner, now=at)
        )
        if len(picked) < len(row_ids):
            log.info(
                "deliveries of attempts already taken, ended or superseded; not run again",
                steps=len(row_ids) - len(picked),
                attempt=attempt,
            )
        if picked:
            yield from _Parcel(self, picked, attempt, at, send, seconds)

    def hand_back(
        self,
        rest: Sequence[tuple[int, ClaimedStep]],
        attempt: int,
        picked_at: datetime,
        send: Callable[[Sequence[StepMessage]], None],
    ) -> list[tuple[int, ClaimedStep]]:
        """Give back attempts picked up at ``picked_at`` and not started, and send them
        again. Returns those that are still this process's to run: all of them if the
        database refused to take them back (a database that does not answer is waited for:
        the hand-back, made again, is idempotent)."""
        ids = [c.row_id for _, c in rest]
        try:
            back = set(
                Backoff(None).call(
                    lambda: self.store.hand_back(ids, attempt, self.owner, picked_at=picked_at)
                )
            )
        except Exception as exc:
            log.warning("could not hand steps back; running them here", error=short_error(exc))
            return list(rest)
        try:
            messages = [
                message_for(self._definition(self._instance(i)), i, c)
                for i, c in rest
                if c.row_id in back
            ]
        except Exception as exc:  # given back: the owner sends them again in a while
            log.warning("could not send steps handed back", error=short_error(exc))
            return []
        send(messages)
        return []

    def execute(
        self,
        instance_id: int,
        claimed: ClaimedStep,
        *,
        timeouts: tuple[type[BaseException], ...] = (),
    ) -> Finished:
        """Run an attempt this process picked up; nothing is recorded yet."""
        # The attempt is this process's now: nothing may end the task before its outcome is
        # handed to the recorder, or it stays `running` under a live lease for ever. A
        # database blip is waited for, as for the pickup; anything else ends the process,
        # and the owner records the attempt as lost (see `fatal`).
        try:
            instance = Backoff(None).call(lambda: self._instance(instance_id))
            definition = Backoff(None).call(lambda: self._definition(instance))
            step = definition.step(claimed.step_key)
        except Exception as exc:
            fatal(f"could not load step {claimed.step_key!r} it picked up: {short_error(exc)}")
        work = StepWork(
            instance_id=instance.id,
            batch=instance.batch,
            claimed=claimed,
            step=step,
            params=instance.params,
            results={},
            missing_results=definition.graph.predecessors.get(step.key, ()),
            max_result_bytes=self.max_result_bytes,
        )
        started = datetime.now(UTC)
        try:
            if claimed.map_index >= 0:
                work = replace(work, item=self._item(instance, step, claimed))
            result = self._run(work, timeouts)
        except timeouts:  # the time limit may strike outside the runner too
            result = timed_out(work, started)
        except Exception as exc:
            result = outcome(work, started, error=exc)
        return Finished(instance, definition, result)

    def _instance(self, instance_id: int) -> InstanceRecord:
        """Batch, version and params of an instance never change: read once per process."""
        instance = self._instances.get(instance_id)
        if instance is None:
            if len(self._instances) > 256:
                self._instances.clear()
            instance = self._instances[instance_id] = self.store.instance(instance_id)
        return instance

    def _load(self, instance_id: int, keys: tuple[str, ...]) -> dict[str, Any]:
        """Upstream results; a succeeded step's result never changes, so each is read once
        per process (a retry in place resets only steps that did not succeed)."""
        found: dict[str, Any] = {}
        for k in keys:  # .get: the recorder's thread may clear the cache meanwhile
            value = self._results.get((instance_id, k), _MISSING)
            if value is not _MISSING:
                found[k] = value
        missing = [k for k in keys if k not in found]
        if missing:
            loaded = self.store.results_for(instance_id, missing)
            if len(self._results) > 1024:
                self._results.clear()
            for key, value in loaded.items():
                self._results[(instance_id, key)] = value
            found.update(loaded)
        return found

    def _definition(self, instance: InstanceRecord) -> BatchDefinition:
        """Versions never change, so each is read (and parsed) once per process."""
        key = (instance.batch, instance.definition_version)
        definition = self._definitions.get(key)
        if definition is None:
            if len(self._definitions) > 256:
                self._definitions.clear()
            stored = self.store.definition(instance.batch, instance.definition_version)
            definition = self._definitions[key] = stored.definition
        return definition

    def _item(self, instance: InstanceRecord, step: StepDefinition, claimed: ClaimedStep) -> Any:
        return self._items_of(instance, step)[claimed.map_index]

    def _items_of(self, instance: InstanceRecord, step: StepDefinition) -> list[Any]:
        assert step.map is not None
        key = (instance.id, step.key)
        items = self._items.get(key)
        if items is None:
            if len(self._items) > 64:
                self._items.clear()
            results = self._load(instance.id, (step.map.over,))
            items = self._items[key] = map_items(step, instance.params, results)
        return items

    def _labels(self, instance: InstanceRecord, definition: BatchDefinition, key: str) -> list[str]:
        """The names of a mapped step's items, by map_index (see MapSpec.item_label)."""
        step = definition.step(key)
        assert step.map is not None
        return [
            step.map.item_label(item, index, instance.params)
            for index, item in enumerate(self._items_of(instance, step))
        ]

    def _run(self, work: StepWork, timeouts: tuple[type[BaseException], ...]) -> StepOutcome:
        """Run the attempt as the direct dispatcher does (its log captured, ``ctx.upstream``
        naming upstream steps that did not succeed), within the step's timeout."""
        statuses = self.store.statuses_for
        if not is_async(work.step.runner):
            return run_sync(work, self._load, statuses=statuses, timeouts=timeouts)
        seconds = work.step.timeout.total_seconds() if work.step.timeout else None
        return asyncio.run(
            run_async(work, self._load, statuses=statuses, timeout=seconds, timeouts=timeouts)
        )

    def record(
        self, instance: InstanceRecord, definition: BatchDefinition, *results: StepOutcome
    ) -> list[StepMessage]:
        """Record outcomes of one instance and advance it in one transaction, retried until
        the database takes it; return the claimed successors to send.

        A database that does not answer (StoreUnavailable) is waited for, however long: the
        outcome is kept. A group the database refuses is recorded one outcome at a time; an
        outcome refused three times is recorded as the step's failure without its result and
        log (not retried); if even that is refused, the process ends (see :func:`fatal`).
        An outcome of a deleted instance is dropped.
        """
        if len(results) > 1:
            try:
                return self._record(instance, definition, results)
            except Exception as exc:
                log.warning(
                    "could not record a group of step outcomes; recording them one by one",
                    instance_id=instance.id,
                    steps=len(results),
                    error=f"{type(exc).__name__}: {exc}",
                )
            return [m for r in results for m in self.record(instance, definition, r)]
        (result,) = results
        backoff = Backoff(None)  # the database may come back: the outcome is kept
        refused = 0
        while True:
            try:
                return self._record(instance, definition, [result])
            except StoreUnavailable as exc:
                backoff.wait(exc)  # a blip or a failover costs a step nothing
                continue
            except NotFound:
                log.warning(
                    "the instance is gone (deleted or purged); its step outcome is dropped",
                    instance_id=instance.id,
                    step=result.step_key,
                )
                return []
            except Exception as exc:
                refused += 1
                error = short_error(exc)
                if refused > REFUSALS:
                    # Even the bare failure is refused: not a value, a fault of this process
                    # or of the database. Left running under a live lease the attempt would
                    # hang for ever; let the process die so that its owner records it lost.
                    fatal(f"could not record step {result.step_key!r}: {error}")
                log.warning(
                    "the database refused a step outcome; retrying",
                    instance_id=instance.id,
                    step=result.step_key,
                    error=error,
                )
                if refused == REFUSALS:
                    # What the runner produced (result, log) is what the database refuses:
                    # record the attempt's failure without it, never to be retried.
                    result = result.unstored(f"the outcome could not be stored: {error}")
                time.sleep(0.2 * refused)

    def _record(
        self, instance: InstanceRecord, definition: BatchDefinition, results: Sequence[StepOutcome]
    ) -> list[StepMessage]:
        mapped = definition.mapped
        with self.store.instance_transaction(instance.id, instance) as tx:
            if tx.instance.status.is_final:
                return []
            done = advance(
                tx,
                definition,
                results,
                owner=self.owner,
                now=datetime.now(UTC),
                slots=0 if tx.instance.cancel_requested else MAX_CLAIM,
                look_for_queued=False,
                results={},
                idle=True,
                params=instance.params,
                running_items=tx.running_items([r.row_id for r in results]) if mapped else {},
                handoff=True,
                item_labels=lambda key: self._labels(instance, definition, key),
            )
        return [message_for(definition, instance.id, c) for c in done.claimed]


class _Parcel:
    """The steps of one message, run one after the other by the process that picked them up.

    A timer hands back those not started once ``seconds`` have gone by, even while a long
    step runs; a lock between it and the start of each step decides which side has a step.
    """

    def __init__(
        self,
        job: StepJob,
        picked: list[tuple[int, ClaimedStep]],
        attempt: int,
        picked_at: datetime,
        send: Callable[[Sequence[StepMessage]], None],
        seconds: float,
    ) -> None:
        self.job = job
        self.picked = picked
        self.attempt = attempt
        self.picked_at = picked_at
        self.send = send
        self._lock = threading.Lock()
        self._started = 0
        self._closed = False
        self._kept: list[tuple[int, ClaimedStep]] = []
        self._timer = threading.Timer(seconds, self._give_back)
        self._timer.daemon = True

    def __iter__(self) -> Iterator[Finished]:
        self._timer.start()
        try:
            while True:
                with self._lock:
                    if self._closed or self._started >= len(self.picked):
                        break
                    instance_id, claimed = self.picked[self._started]
                    self._started += 1
                yield self.job.execute(instance_id, claimed)
        finally:
            self._timer.cancel()
            self._timer.join()
        for instance_id, claimed in self._kept:  # the database would not take them back
            yield self.job.execute(instance_id, claimed)

    def _give_back(self) -> None:
        with self._lock:
            self._closed = True
            rest = self.picked[self._started :]
        if rest:
            self._kept = self.job.hand_back(rest, self.attempt, self.picked_at, self.send)


class Recorder:
    """Records what a worker process ran, in a thread of its own, so the process goes on
    to its next message while the database commits.

    Outcomes that finish while one transaction commits are recorded together in the next
    (one transaction, one commit and one row lock of the instance for the group, like the
    direct dispatcher's ``step_once``); the successors they claimed are sent after the
    commit, in one go. A process that dies before its outcomes are recorded leaves their
    attempts ``running`` under its owner id, so the instance's owner records them as lost
    attempts and they run again, as for a process killed in the middle of a step.
    """

    def __init__(
        self,
        job: StepJob,
        send: Callable[[Sequence[StepMessage]], None],
        *,
        group: int = 500,
        backlog: int = 2000,
    ) -> None:
        self.job = job
        self.send = send
        self.group = group
        self.backlog = backlog
        self._queue: queue.Queue[Finished | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="stepline-recorder", daemon=True)
        self._thread.start()

    def put(self, finished: Finished) -> None:
        """Hand an outcome over; waits while the database is far behind (back pressure)."""
        if not self._thread.is_alive():
            fatal("the recorder thread has stopped")
        self._queue.put(finished)
        while self._queue.qsize() > self.backlog and self._thread.is_alive():
            time.sleep(0.01)

    def flush(self) -> None:
        """Wait until everything handed over is recorded and its successors sent."""
        self._queue.join()

    def close(self, timeout: float | None = None) -> bool:
        """Record what is left, then stop; False if that took longer than ``timeout``."""
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        try:
            while True:
                taken = [self._queue.get()]
                while len(taken) < self.group:
                    try:
                        taken.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                try:
                    self._record([f for f in taken if f is not None])
                finally:
                    for _ in taken:
                        self._queue.task_done()
                if None in taken:
                    return
        except BaseException as exc:
            # Without this thread nothing this process runs is ever recorded, while its
            # lease stays alive: end the process, so its owner takes its attempts as lost.
            fatal(f"the recorder thread failed: {short_error(exc)}")

    def _record(self, finished: list[Finished]) -> None:
        groups: dict[int, list[Finished]] = {}
        for f in finished:
            groups.setdefault(f.instance.id, []).append(f)
        for group in groups.values():
            instance, definition = group[0].instance, group[0].definition
            messages = self.job.record(instance, definition, *(f.outcome for f in group))
            try:
                self.send(messages)
            except Exception as exc:  # claimed and committed: the owner's sweep resends them
                log.warning(
                    "could not send claimed steps; the owner sends them again later",
                    instance_id=instance.id,
                    steps=len(messages),
                    error=short_error(exc),
                )


def fatal(reason: str) -> NoReturn:
    """End this worker process at once. Its attempts still ``running`` are then recorded as
    lost by the instance's owner once the lease lapses, and run again per their retry
    policy: what a killed process leads to, the path the crash tests cover."""
    log.critical("ending the worker process", reason=reason)
    os._exit(70)


def _last_failed(r: StepState) -> int:
    """The highest attempt of this row that may be kept as failed: its current one when it
    failed (queued again, or failed for good), else the one before."""
    if r.status in (StepStatus.RUNNING, StepStatus.SUCCEEDED):
        return r.attempt - 1
    return r.attempt


def _last_ended(r: StepState) -> int:
    """The highest attempt of this row that has ended."""
    if r.status is StepStatus.SUCCEEDED and r.started_at is not None:
        return r.attempt
    return max(0, _last_failed(r))


def _span(started: datetime | None, finished: datetime | None) -> float | None:
    if started is None or finished is None:
        return None
    return max(0.0, (finished - started).total_seconds())


def _row_events(
    instance_id: int,
    batch: str,
    r: StepState,
    before: tuple[StepStatus, int] | None,
    now: datetime,
    counted: dict[int, int] | None,
    kept: Mapping[tuple[int, int], KeptAttempt],
) -> list[StepEvent]:
    """The events of one changed row; ``counted`` (by row: the last attempt counted) is
    brought up to date. None: the row's attempts are not counted (a mapped step's row)."""
    events: list[StepEvent] = []
    done = counted.get(r.row_id, 0) if counted is not None else _last_ended(r)
    own = r.attempt if r.status in (StepStatus.QUEUED, StepStatus.FAILED) else None
    for attempt in range(done + 1, _last_failed(r) + 1):
        k = kept.get((r.row_id, attempt))
        if k is not None and attempt != own:  # failed and retried between two looks
            duration = _span(k.started_at, k.finished_at)
            events.append(
                StepEvent(
                    instance_id, r.step_key, r.map_index, StepStatus.QUEUED, attempt, now,
                    batch, duration,
                )
            )  # fmt: skip
    duration = None
    if own is not None and own > done and (r.row_id, own) in kept:
        k = kept[(r.row_id, own)]
        duration = _span(k.started_at, k.finished_at)
    elif r.status is StepStatus.SUCCEEDED and r.attempt > done:
        duration = _span(r.started_at, r.finished_at)
    if counted is not None:
        counted[r.row_id] = max(done, _last_ended(r))
    ran = r.status.is_final and r.started_at is not None and r.attempt > 0
    if ran and before != (StepStatus.RUNNING, r.attempt):
        # Polling can miss a short attempt; it ran, so say so, as direct does.
        events.append(
            StepEvent(
                instance_id, r.step_key, r.map_index, StepStatus.RUNNING, r.attempt, now, batch
            )
        )
    events.append(
        StepEvent(instance_id, r.step_key, r.map_index, r.status, r.attempt, now, batch, duration)
    )
    return events


class RemoteOrchestrator(Orchestrator):
    """The owner's side: adopt, send, and watch instances that workers drive."""

    dispatcher: RemoteDispatcher

    def __init__(
        self,
        store: Store,
        dispatcher: RemoteDispatcher,
        *,
        owner: str | None = None,
        lease_seconds: float = 30.0,
        poll_seconds: float = 1.0,
        listener: Listener | None = None,
        watch_seconds: float = 0.05,
        redispatch_seconds: float = 300.0,
        unpicked_warning_seconds: float = 30.0,
    ) -> None:
        super().__init__(
            store,
            dispatcher,
            owner=owner,
            lease_seconds=lease_seconds,
            poll_seconds=poll_seconds,
            listener=listener,
        )
        self.watch_seconds = watch_seconds
        self.redispatch_seconds = redispatch_seconds
        self.unpicked_warning_seconds = unpicked_warning_seconds
        """After this long without a worker taking a step, a warning says so, once."""
        self._warned: set[tuple[int, int]] = set()
        self._next_sweep = 0.0
        self._next_progress = 0.0
        self._resent: dict[tuple[int, int], tuple[float, int]] = {}
        self._seen: dict[int, dict[tuple[str, int], tuple[StepStatus, int]]] = {}
        self._counted: dict[int, dict[int, int]] = {}
        """By instance, by step row: the last attempt whose end the listener was told of."""

    @property
    def busy(self) -> bool:
        return False  # every attempt runs on a worker; nothing here to wait for

    def _requeue_running(
        self, tx: InstanceTransaction, definition: BatchDefinition, *, exclude_owner: str | None
    ) -> list[str]:
        """Nothing: running attempts belong to workers; :meth:`_sweep` turns those of dead
        workers into lost attempts and sends again those no worker picked up.

        Called in the transaction that takes the instance over, holding its lock: what has
        ended by now (a previous owner's attempts, or those before a retry in place) is
        not this process's to count; what ends later is recorded after this commit."""
        if self.listener is not None:
            instance_id = tx.instance.id
            try:
                states = self.store.step_states(instance_id)
            except Exception as exc:  # only metrics depend on it, not the adoption
                log.warning(
                    "could not read what had run before; metrics may count it again",
                    instance_id=instance_id,
                    error=short_error(exc),
                )
            else:
                self._counted[instance_id] = {
                    r.row_id: ended for r in states if (ended := _last_ended(r))
                }
        return []

    def _taken_over(self, instance_id: int) -> None:
        if instance_id in self._active:
            # Attempts a previous owner handed over may never have reached the broker.
            self._sweep([instance_id], resend_all=True)

    def step_once(self) -> None:
        try:
            self._outcomes.get(timeout=self._wait_seconds())
            while True:
                self._outcomes.get_nowait()
        except queue.Empty:
            pass
        ids = list(self._active)
        failure: BaseException | None = None
        if ids:
            now, clock = datetime.now(UTC), time.monotonic()
            for instance_id, seen in self.store.watch(ids).items():
                active = self._active.get(instance_id)
                if active is None:
                    continue
                due = seen.next_available_at is not None and seen.next_available_at <= now
                if due and active.wake_at is not None and active.wake_at > clock:
                    due = False  # due but not claimable (a full map): look again shortly
                if seen.status.is_final or seen.cancel_requested or due:
                    try:  # one instance's failure must not stop the others
                        self._advance(active, [])
                    except Exception as exc:
                        failure = failure or exc
        if failure is not None:
            with contextlib.suppress(StoreUnavailable):
                self._heartbeat()  # a failing instance must not make this process look dead
            raise failure
        clock = time.monotonic()
        if self.listener is not None and clock >= self._next_progress:
            self._progress()  # sets the next look
        if clock >= self._next_sweep:
            self._next_sweep = clock + 1.0
            self._sweep(list(self._active))
        self._heartbeat()

    def _wait_seconds(self) -> float:
        due = self._next_heartbeat - time.monotonic()
        return max(0.0, min(self.watch_seconds, due))

    def _advance(self, active: _Active, outcomes: list[StepOutcome], *, split: bool = True) -> None:
        """Record lost attempts (the only outcomes the owner sees), claim what is due and send
        it. An error leaves everything as stored; the next look at the instance retries."""
        instance_id = active.instance.id
        definition = active.definition
        mapped = definition.mapped
        with self.store.instance_transaction(instance_id, active.instance) as tx:
            if tx.instance.owner_id != self.owner:
                self._lose(active)
                return
            ended = tx.instance.status if tx.instance.status.is_final else None
            cancelled = ended is None and tx.instance.cancel_requested
            if cancelled:
                self._cancel(active, tx)
            elif ended is None:
                done = advance(
                    tx,
                    definition,
                    outcomes,
                    owner=self.owner,
                    now=datetime.now(UTC),
                    slots=0 if self.draining else MAX_CLAIM,
                    look_for_queued=True,
                    results={},
                    idle=True,
                    params=active.instance.params,
                    running_items=tx.running_items([o.row_id for o in outcomes]) if mapped else {},
                    settle_pending=active.settle_pending,
                    handoff=True,
                    item_labels=lambda key: self._labels(active, key),
                )
                ended = done.final
        if cancelled:  # what the workers did until now, then the cancelled steps
            self._progress([active])
            self._forget(instance_id)
            return
        active.settle_pending = False
        if ended is not None:  # by a worker, or just now
            self._end(active, ended)
            return
        active.wake_at = None if done.claimed else time.monotonic() + self.poll_seconds / 2
        self.dispatcher.send([message_for(definition, instance_id, c) for c in done.claimed])

    def _end(self, active: _Active, final: InstanceStatus) -> None:
        self._progress([active])
        self._forget(active.instance.id)
        self._finish(active, final)

    def _lose(self, active: _Active) -> None:
        super()._lose(active)
        self._forget(active.instance.id)

    def _forget(self, instance_id: int) -> None:
        self._seen.pop(instance_id, None)
        self._counted.pop(instance_id, None)

    def _sweep(self, instance_ids: Sequence[int], *, resend_all: bool = False) -> None:
        """Lost attempts of dead workers go through advance(); attempts that no worker
        picked up for a while are sent again (the broker may have lost them)."""
        if not instance_ids:
            return
        running = self.store.running_steps(instance_ids)
        dead = set(dead_owners(self.store, self.owner)) if running else set()
        now = datetime.now(UTC)
        clock = time.monotonic()
        lost: dict[int, list[StepOutcome]] = {}
        resend: dict[int, list[StepMessage]] = {}
        current: set[tuple[int, int]] = set()
        for r in running:
            active = self._active.get(r.instance_id)
            if active is None:
                continue
            step = active.definition.step(r.step_key)
            if step.map is not None and r.map_index < 0:
                continue  # an expanded mapped step runs nothing itself
            key = (r.row_id, r.attempt)
            current.add(key)
            if r.owner_id is None:
                self._warn_unpicked(key, active, r, now)
                if resend_all or self._resend_due(key, r, now, clock):
                    claimed = ClaimedStep(r.row_id, r.step_key, r.map_index, r.attempt, now)
                    message = message_for(active.definition, r.instance_id, claimed)
                    resend.setdefault(r.instance_id, []).append(message)
            elif r.owner_id in dead:
                lost.setdefault(r.instance_id, []).append(lost_outcome(step, r, now))
        if len(instance_ids) >= len(self._active):  # a look at every instance: forget the rest
            for key in [k for k in self._resent if k not in current]:
                del self._resent[key]
            self._warned &= current
        for instance_id, messages in resend.items():
            log.info("sending unpicked steps again", instance_id=instance_id, steps=len(messages))
            self.dispatcher.send(messages)
        for instance_id, outcomes in lost.items():
            active = self._active.get(instance_id)
            if active is not None:
                log.warning(
                    "steps of a dead worker recorded as lost attempts",
                    instance_id=instance_id,
                    steps=[o.step_key for o in outcomes],
                )
                self._advance(active, outcomes)

    def _warn_unpicked(
        self, key: tuple[int, int], active: _Active, running: RunningStep, now: datetime
    ) -> None:
        """Say once that a step has waited long for a worker: none may be running, or none
        may listen on its queue (the common reason a step on Celery never starts)."""
        if key in self._warned:
            return
        waited = (now - (running.started_at or now)).total_seconds()
        if waited < self.unpicked_warning_seconds:
            return
        self._warned.add(key)
        queue = active.definition.queue_of(running.step_key) or getattr(
            self.dispatcher, "queue", None
        )
        log.warning(
            f"step {running.step_key!r} has waited {waited:.0f} s for a worker; "
            f"is a `stepline worker` running and listening on queue {queue!r}?",
            instance_id=running.instance_id,
            step=running.step_key,
            queue=queue,
        )

    def _resend_due(
        self, key: tuple[int, int], running: RunningStep, now: datetime, clock: float
    ) -> bool:
        last = self._resent.get(key)
        if last is None:
            started = running.started_at or now
            due = (now - started).total_seconds() >= self.redispatch_seconds
            if due:
                self._resent[key] = (clock, 1)
            return due
        at, count = last
        if clock - at < self.redispatch_seconds * 2 ** min(count, 6):
            return False
        self._resent[key] = (clock, count + 1)
        return True

    def _progress(self, actives: Sequence[_Active] | None = None) -> None:
        """Events from the stored rows: what the workers did since the last look, at the
        instances ``actives`` (default: all of them).

        Reads the rows' states only (no results), every 0.2 s, or less often when a look
        would take more than a tenth of the time (an instance of tens of thousands of steps)."""
        listener = self.listener
        if listener is None:
            return
        whole = actives is None
        started = time.monotonic()
        try:
            for active in list(self._active.values()) if actives is None else actives:
                events = self._changes(active)
                try:
                    for event in events:
                        listener(event)
                except Exception as exc:
                    self._listener_failed(exc)
        finally:
            if whole:
                taken = time.monotonic() - started
                self._next_progress = time.monotonic() + max(0.2, 10 * taken)

    def _changes(self, active: _Active) -> list[StepEvent]:
        """A state event per row of ``active`` that changed, as the direct dispatcher sends
        them. Each attempt that ended carries its duration, once (metrics count it): a
        succeeded one from its row, a failed one from the attempts kept for its row, read
        only for rows with one not counted yet (failures are rare; a clean map reads none).
        Nothing is marked seen until both reads are done: a read that fails loses nothing."""
        instance_id, batch = active.instance.id, active.instance.batch
        # A mapped step's own row never runs (its items do): no attempt of its own.
        mapped = {s.key for s in active.definition.steps if s.map}
        seen = self._seen.get(instance_id, {})
        counted = self._counted.get(instance_id, {})
        changed: list[tuple[StepState, tuple[StepStatus, int] | None]] = []
        for r in self.store.step_states(instance_id):
            before = seen.get((r.step_key, r.map_index))
            if before != (r.status, r.attempt):
                changed.append((r, before))
        wanted = [r.row_id for r, _ in changed if _last_failed(r) > counted.get(r.row_id, 0)]
        kept: dict[tuple[int, int], KeptAttempt] = {}
        if wanted:
            kept = {(k.row_id, k.attempt): k for k in self.store.kept_attempts(wanted)}
        seen = self._seen.setdefault(instance_id, seen)
        counted = self._counted.setdefault(instance_id, counted)
        now = datetime.now(UTC)
        events: list[StepEvent] = []
        for r, before in changed:
            seen[(r.step_key, r.map_index)] = (r.status, r.attempt)
            if r.status is StepStatus.PENDING:
                continue
            rows = None if r.map_index < 0 and r.step_key in mapped else counted
            events.extend(_row_events(instance_id, batch, r, before, now, rows, kept))
        return events
