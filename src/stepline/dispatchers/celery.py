"""CeleryDispatcher and the worker of ``stepline worker``, on Redis or RabbitMQ.

The only module that imports Celery. A message is ``stepline.step(instance_id, row_id,
attempt)``, or ``stepline.steps(instance_id, attempt, row_ids)`` for several first attempts
of a wide send (see :meth:`CeleryDispatcher.parcels`); params and results stay in the
database and no result backend is used.
At-least-once delivery is made harmless by the store: ``acks_late`` and
``reject_on_worker_lost`` redeliver what a dead worker held, a prefetch of one keeps
messages in the broker rather than in a busy worker, and ``Store.pickup`` lets only the
first delivery of an attempt run. Step timeouts become the task's soft time limit (the
runner gets an exception and the attempt fails, retried per policy) and a hard limit
``HARD_LIMIT_GRACE`` later (the process is killed; its attempt is recovered as lost).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from celery import Celery, signals
from celery.exceptions import SoftTimeLimitExceeded
from kombu.utils.uuid import uuid

from stepline.core.definition import BatchDefinition
from stepline.dispatchers.base import RemoteDispatcher, Report, StepMessage
from stepline.engine.backoff import Backoff
from stepline.engine.orchestrator import RELEASE_SECONDS, process_owner_id
from stepline.engine.remote import Recorder, StepJob
from stepline.errors import Problem, StoreUnavailable
from stepline.stores.base import Store

log = structlog.get_logger("stepline.celery")

TASK = "stepline.step"
TASK_MANY = "stepline.steps"
MESSAGES_PER_PROCESS = 8
"""A wide send goes in at least this many messages per live Stepline process."""
MAX_STEPS_PER_MESSAGE = 500
PROCESSES_SECONDS = 10.0
"""How long a count of the live processes is used before it is read again."""
SWITCH_INTERVAL = 0.0005
"""Seconds a worker process's thread may hold the GIL while another waits for it."""
PUBLISH_CHUNK = 200
"""Messages published in one pipelined round trip to Redis."""
PERSISTENT = 2
"""AMQP delivery mode: the broker keeps the message on disk (Celery's default)."""
HARD_LIMIT_GRACE = 10.0
"""Seconds after a step's timeout (the soft limit) before its worker process is killed."""
BROKER_SOCKET_TIMEOUT = 10.0
"""Seconds a Redis broker may leave a command or a connection attempt unanswered."""


def is_redis(broker_url: str) -> bool:
    return broker_url.split("://", 1)[0] in ("redis", "rediss", "redis+socket")


def celery_app(broker_url: str, *, queue: str, visibility_timeout: float) -> Celery:
    app = Celery("stepline", broker=broker_url, set_as_current=False)
    options: dict[str, Any] = {}
    if is_redis(broker_url):
        options["visibility_timeout"] = visibility_timeout
        # Without a socket timeout a command to a Redis that went silent (failover, NAT or
        # firewall timeout, a dead host) waits for ever: a publish would hold the owner's
        # driver or a worker's recorder. A failed publish is sent again (see send).
        options.update(
            socket_timeout=BROKER_SOCKET_TIMEOUT,
            socket_connect_timeout=BROKER_SOCKET_TIMEOUT,
            socket_keepalive=True,
        )
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_enable_remote_control=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.task(name=TASK, acks_late=True, reject_on_worker_lost=True)(_step)
    app.task(name=TASK_MANY, acks_late=True, reject_on_worker_lost=True)(_steps)
    return app


def live_processes(store: Store) -> int:
    """Registered Stepline processes whose lease is valid: workers' and owners'."""
    return sum(1 for *_, valid in store.workers() if valid)


def broker_problems(
    definition: BatchDefinition, broker_url: str, visibility_timeout: float
) -> list[Problem]:
    """Steps whose timeout outlasts the Redis redelivery window, refused at apply time.

    Redis hands an unacknowledged message to another worker after ``visibility_timeout``;
    the pickup fence would make that delivery a no-op, but a step meant to be killed at
    its time limit must end (and be acknowledged) before the broker gives it away.
    """
    if not is_redis(broker_url):
        return []
    problems = []
    for step in definition.steps:
        if step.timeout is None:
            continue
        needed = step.timeout.total_seconds() + HARD_LIMIT_GRACE
        if needed > visibility_timeout:
            problems.append(
                Problem(
                    f"timeout {step.timeout.total_seconds():g} s (+{HARD_LIMIT_GRACE:g} s to "
                    f"stop it) is longer than the Redis broker's visibility_timeout of "
                    f"{visibility_timeout:g} s; set STEPLINE_BROKER_VISIBILITY_TIMEOUT to at "
                    f"least {needed:g} on every process, or shorten the timeout",
                    definition.name,
                    step.key,
                )
            )
    return problems


class CeleryDispatcher(RemoteDispatcher):
    """Sends claimed attempts to Celery; the workers record outcomes themselves."""

    capacity = 100_000

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        queue: str = "stepline",
        visibility_timeout: float = 3600.0,
        app: Celery | None = None,
        processes: Callable[[], int] | None = None,
    ) -> None:
        """``processes`` counts the live Stepline processes (:func:`live_processes`); without
        it every step goes in a message of its own."""
        self._own_app = app is None
        if app is None:
            assert broker_url is not None
            app = celery_app(broker_url, queue=queue, visibility_timeout=visibility_timeout)
        self.app = app
        self.queue = queue
        self._unsent: list[StepMessage] = []
        self._lock = threading.Lock()
        self._retrier: threading.Thread | None = None
        self._closed = threading.Event()
        self._origin = f"stepline-{os.getpid()}@{socket.gethostname()}"
        self._processes = processes
        self._counted: tuple[float, int] = (-math.inf, 1)

    def __repr__(self) -> str:
        return f"CeleryDispatcher(queue={self.queue!r})"

    def start(self, report: Report) -> None:
        """Nothing to start: outcomes are recorded by the workers."""

    def send(self, messages: Sequence[StepMessage]) -> None:
        if not messages:
            return
        with self._lock:
            waiting = self._retrier is not None
        # While earlier messages wait for the broker, these wait with them: a broker that
        # stopped answering would otherwise cost every send its socket timeout, on the
        # owner's driver thread or a worker's recorder.
        left = list(messages) if waiting else self._publish(list(messages))
        if left:
            with self._lock:
                self._unsent.extend(left)
                if self._retrier is None:
                    self._retrier = threading.Thread(
                        target=self._retry, name="stepline-celery-resend", daemon=True
                    )
                    self._retrier.start()

    @property
    def unsent(self) -> int:
        with self._lock:
            return len(self._unsent)

    def parcels(self, messages: Sequence[StepMessage]) -> list[list[StepMessage]]:
        """The messages as the broker gets them: several steps to a message where a send is
        wide, so that a fan-out of thousands of short steps does not pay a broker round trip,
        a pool hand-over and an acknowledgement for each one.

        Only first attempts without a timeout travel together, by instance and queue:

        - a step with a timeout needs the task's time limits for itself;
        - a retried step goes alone, so a runner that kills its worker process takes nobody
          else with it more than once (its neighbours' attempts are lost with it once, and
          run again alone);
        - a send is cut into at least ``MESSAGES_PER_PROCESS`` messages per live Stepline
          process (its registered workers' and owners'), so every worker process gets
          several and a message's steps, run one after the other, never wait for a process
          that sits idle. A narrow send (two parallel steps) goes as one message per step.
        """
        parcels: list[list[StepMessage]] = []
        together: dict[tuple[int, str | None], list[StepMessage]] = {}
        for m in messages:
            if m.timeout is None and m.attempt == 1:
                together.setdefault((m.instance_id, m.queue), []).append(m)
            else:
                parcels.append([m])
        for group in together.values():
            size = self._parcel_size(len(group))
            parcels.extend(group[i : i + size] for i in range(0, len(group), size))
        return parcels

    def _parcel_size(self, steps: int) -> int:
        if steps <= MESSAGES_PER_PROCESS or self._processes is None:
            return 1
        at, processes = self._counted
        if time.monotonic() - at > PROCESSES_SECONDS:
            try:
                processes = max(1, self._processes())
            except Exception as exc:  # a step a message costs nothing but speed
                log.info("could not count the live processes", error=f"{type(exc).__name__}: {exc}")
                return 1
            self._counted = (time.monotonic(), processes)
        size = steps // (MESSAGES_PER_PROCESS * processes)
        return max(1, min(MAX_STEPS_PER_MESSAGE, size))

    def _publish(self, messages: list[StepMessage]) -> list[StepMessage]:
        """Publish; return what could not be. On Redis the messages go in pipelined chunks
        (kombu's ``Producer.batch``, one round trip for a chunk instead of one per message):
        a chunk that fails is returned whole, so some of it may be sent twice (harmless).

        Each message is built by Celery (``amqp.create_task_message``, the task protocol
        its workers read) and published by kombu directly: ``Task.apply_async`` costs four
        times as much per message (a repr of the arguments, signals, routing and the
        declaration looked up for every message), paid by the worker that claimed a wide
        fan-out for each of its successors. A failed chunk is sent again by ``send``."""
        parcels = self.parcels(messages)
        sent = 0
        try:
            with self.app.producer_or_acquire() as producer:
                batch = getattr(producer, "batch", None)  # kombu 5.7+
                declared: set[str] = set()
                for start in range(0, len(parcels), PUBLISH_CHUNK):
                    chunk = parcels[start : start + PUBLISH_CHUNK]
                    with batch(max_size=PUBLISH_CHUNK) if batch else contextlib.nullcontext():
                        for parcel in chunk:
                            self._publish_one(producer, parcel, declared)
                    sent += len(chunk)
        except Exception as exc:
            left = [m for parcel in parcels[sent:] for m in parcel]
            log.warning(
                "broker unavailable; the steps are sent again when it answers",
                error=f"{type(exc).__name__}: {exc}",
                waiting=len(left),
            )
            return left
        return []

    def _publish_one(self, producer: Any, parcel: list[StepMessage], declared: set[str]) -> None:
        m = parcel[0]
        queue = m.queue or self.queue
        if queue not in declared:  # RabbitMQ drops a message sent to a queue not declared
            producer.maybe_declare(self.app.amqp.queues[queue])
            declared.add(queue)
        limits: dict[str, float] = {}
        args: tuple[Any, ...]
        if len(parcel) > 1:
            name, args = TASK_MANY, (m.instance_id, m.attempt, [p.row_id for p in parcel])
            shown = f"({m.instance_id}, {m.attempt}, [{len(parcel)} steps])"
        else:
            name, args = TASK, (m.instance_id, m.row_id, m.attempt)
            shown = repr(args)
            if m.timeout is not None:
                limits = {"soft_time_limit": m.timeout, "time_limit": m.timeout + HARD_LIMIT_GRACE}
        task_id = uuid()
        headers, properties, body, _ = self.app.amqp.create_task_message(
            task_id,
            name,
            args,
            {},
            argsrepr=shown,
            kwargsrepr="{}",
            origin=self._origin,
            ignore_result=True,
            **limits,
        )
        producer.publish(
            body,
            exchange="",
            routing_key=queue,
            serializer="json",
            headers=headers,
            delivery_mode=PERSISTENT,
            retry=False,
            **properties,
        )

    def _retry(self) -> None:
        while not self._closed.wait(1.0):
            with self._lock:
                pending, self._unsent = self._unsent, []
                if not pending:
                    self._retrier = None  # the next send that fails starts another
                    return
            left = self._publish(pending)
            with self._lock:
                self._unsent = left + self._unsent
            if not left:
                log.info("broker answers again; waiting steps sent", steps=len(pending))

    def shutdown(self, wait: bool = True) -> None:
        self._closed.set()
        with self._lock:
            pending, self._unsent = self._unsent, []
        if pending and self._publish(pending):
            log.warning("steps left unsent at exit; the owner of their instance resends them")
        if self._own_app:
            self.app.close()


# -- the worker -------------------------------------------------------------------------


@dataclass
class _Worker:
    """What one worker process (a prefork child) holds: its store, identity and sender."""

    store: Store
    owner: str
    job: StepJob
    recorder: Recorder
    dispatcher: CeleryDispatcher
    stop: threading.Event
    lease_seconds: float
    registered: threading.Event = field(default_factory=threading.Event)

    def register(self) -> None:
        """Take the process's lease (raises StoreUnavailable while the database is away)."""
        self.store.heartbeat(self.owner, self.lease_seconds)
        self.registered.set()


_setup: tuple[Callable[[], Store], Celery, str, float, int | None] | None = None
_worker: _Worker | None = None


def _ready() -> _Worker:
    worker = _worker
    if worker is None:
        raise RuntimeError("stepline's tasks run only in a `stepline worker` process")
    if not worker.registered.is_set():
        # Registered before it picks anything up, or the owner would take the attempt for
        # a dead process's; the message stays unacknowledged meanwhile.
        Backoff(None).call(worker.register)
    return worker


def _steps(instance_id: int, attempt: int, row_ids: list[int]) -> None:
    """Several first attempts of one instance (see CeleryDispatcher.parcels), one after
    the other; no time limit (a step with a timeout travels alone)."""
    worker = _ready()
    for finished in worker.job.run_many(row_ids, attempt, send=worker.dispatcher.send):
        worker.recorder.put(finished)


def _step(instance_id: int, row_id: int, attempt: int) -> None:
    worker = _ready()
    retry = attempt > 1
    if retry:
        # A retry may be of an attempt lost with its process: a runner that kills it. It
        # runs alone: what this process ran before is recorded first, and its own outcome
        # before the process takes another message, so nothing else is lost with it again.
        worker.recorder.flush()
    finished = worker.job.run(instance_id, row_id, attempt, timeouts=(SoftTimeLimitExceeded,))
    if finished is not None:
        # Recorded (and its successors sent) by the process's recorder thread, grouped with
        # what the process runs meanwhile; see Recorder for what a crash does to it.
        worker.recorder.put(finished)
        if retry:
            worker.recorder.flush()


def _start_child(**_: Any) -> None:
    """In each worker process: its own connections, its own owner id and lease.

    Celery logs what a ``worker_process_init`` handler raises and goes on, which would leave
    a process that takes messages and fails every one of them: a process that cannot set
    itself up ends instead (the pool starts another). A database that does not answer yet
    is not such a failure: the process registers as soon as it answers (`_Worker.register`).
    """
    global _worker
    try:
        assert _setup is not None
        make_store, app, queue, lease_seconds, max_result_bytes = _setup
        store = make_store()
        owner = process_owner_id()
        # The process's main thread waits on short round trips (the pickup, the pool's pipe)
        # while its recorder thread runs Python; with the default 5 ms switch interval each
        # reply could wait that long for the GIL (measured: pickup median 0.6 -> 0.35 ms).
        sys.setswitchinterval(SWITCH_INTERVAL)
        job = StepJob(store, owner, max_result_bytes=max_result_bytes)
        dispatcher = CeleryDispatcher(app=app, queue=queue, processes=lambda: live_processes(store))
        worker = _Worker(
            store,
            owner,
            job,
            Recorder(job, dispatcher.send),
            dispatcher,
            threading.Event(),
            lease_seconds,
        )
        with contextlib.suppress(StoreUnavailable):
            worker.register()
        threading.Thread(target=_heartbeat, args=(worker,), daemon=True).start()
    except BaseException as exc:
        log.critical(
            "worker process could not start", error=f"{type(exc).__name__}: {exc}", exc_info=True
        )
        os._exit(1)
    _worker = worker
    if worker.registered.is_set():
        log.info("worker process ready", owner=owner)
    else:
        log.warning("database unavailable; the worker process registers when it answers")


def _heartbeat(worker: _Worker) -> None:
    """Renews the process's lease every third of it; registers it first if the database
    did not answer when it started."""
    backoff = Backoff(None)
    while not worker.registered.is_set() and not worker.stop.is_set():
        try:
            worker.register()
            log.info("worker process ready", owner=worker.owner)
        except StoreUnavailable as exc:
            backoff.wait(exc)
        except Exception as exc:
            log.warning("could not register the worker", error=f"{type(exc).__name__}: {exc}")
            worker.stop.wait(5.0)
    while not worker.stop.wait(worker.lease_seconds / 3):
        try:
            worker.store.heartbeat(worker.owner, worker.lease_seconds)
        except Exception as exc:
            log.warning("could not renew the worker lease", error=f"{type(exc).__name__}: {exc}")


SHUTDOWN_RECORD_SECONDS = 30.0
"""How long a stopping worker process waits for its outcomes to be recorded."""


def _stop_child(**_: Any) -> None:
    worker = _worker
    if worker is None:
        return
    # What this process ran is recorded before it goes, while its lease is still renewed
    # (a lease lapsing meanwhile would have the owner run those steps again).
    drained = worker.recorder.close(timeout=SHUTDOWN_RECORD_SECONDS)
    worker.stop.set()
    worker.dispatcher.shutdown()
    if not drained:
        # Outcomes still unrecorded: keep the worker row, so that its lease lapses and the
        # owner records those attempts as lost (a released owner is nobody's to recover).
        log.error(
            "could not record every step outcome before stopping; their steps run again",
            seconds=SHUTDOWN_RECORD_SECONDS,
        )
        return
    # Everything it ran is recorded: releasing the lease only spares the owner a wait for
    # it to lapse. A database that does not answer must not hold the process: the call
    # runs aside, for a bounded time.
    released = threading.Thread(target=_release, args=(worker,), daemon=True)
    released.start()
    released.join(RELEASE_SECONDS)
    if released.is_alive():
        log.warning(
            "could not release the worker lease: the database does not answer; it lapses",
            seconds=RELEASE_SECONDS,
        )


def _release(worker: _Worker) -> None:
    try:
        worker.store.release(worker.owner)
        worker.store.dispose()
    except Exception as exc:
        log.warning("could not release the worker lease", error=f"{type(exc).__name__}: {exc}")


def run_worker(
    make_store: Callable[[], Store],
    broker_url: str,
    *,
    queues: Sequence[str],
    default_queue: str,
    concurrency: int,
    lease_seconds: float,
    visibility_timeout: float,
    max_result_bytes: int | None = None,
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker (prefork, ``concurrency`` processes) until it is stopped."""
    global _setup
    app = celery_app(broker_url, queue=default_queue, visibility_timeout=visibility_timeout)
    _setup = (make_store, app, default_queue, lease_seconds, max_result_bytes)
    signals.worker_process_init.connect(_start_child, weak=False)
    signals.worker_process_shutdown.connect(_stop_child, weak=False)
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(queues),
            "--concurrency",
            str(concurrency),
            "--pool",
            "prefork",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            loglevel,
            "--hostname",
            f"stepline-{os.getpid()}@%h",
        ]
    )
