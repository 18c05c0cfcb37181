"""The application facade: what the CLI and the HTTP API call.

One store, one orchestrator with its dispatcher, and the operations users name:
apply, trigger, run, retry, cancel, recover.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from stepline.connections import Connections
from stepline.core.definition import BatchDefinition
from stepline.core.instance_params import instance_params
from stepline.core.loader import load_definitions
from stepline.core.runners import main_module_problem
from stepline.core.states import InstanceStatus, StepStatus
from stepline.core.targets import is_python_target, load_python_definitions
from stepline.dispatchers.base import Dispatcher, RemoteDispatcher
from stepline.dispatchers.direct import DirectDispatcher
from stepline.engine.alerts import alert_problems, deliver_alerts, deliver_in_background
from stepline.engine.backoff import Backoff
from stepline.engine.orchestrator import Listener, Orchestrator
from stepline.engine.remote import RemoteOrchestrator, dead_owners
from stepline.engine.steplogs import configure_step_logs
from stepline.errors import (
    Conflict,
    DefinitionError,
    InvalidSetting,
    NotFound,
    Paused,
    Problem,
    StoreUnavailable,
    shown,
)
from stepline.redact import add_secret_names, remember_secrets, url_secrets
from stepline.settings import Settings
from stepline.stores.base import InstanceRecord, PurgeFilter, StepLogRecord, StoredDefinition
from stepline.stores.sqlalchemy import SqlAlchemyStore, Timeouts

log = structlog.get_logger("stepline")
_ALERT_SWEEP_SECONDS = 5.0


class Stepline:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        db: str | None = None,
        dispatcher: Dispatcher | None = None,
        listener: Listener | None = None,
        store: SqlAlchemyStore | None = None,
    ) -> None:
        self.settings = settings or Settings()
        url = store.url if store is not None else self.settings.db if db is None else db
        if not url.strip():  # an unset variable in a script must not mean ./stepline.db
            raise InvalidSetting(
                "the database URL is empty: --db or STEPLINE_DB must name a database "
                "(e.g. sqlite:///stepline.db)"
            )
        add_secret_names(self.settings.secret_name_list())
        self._secrets = list(dict.fromkeys([*self.settings.secrets(), *url_secrets(url)]))
        remember_secrets(self._secrets)  # for log lines, which carry no list of their own
        timeouts = Timeouts(self.settings.db_connect_timeout, self.settings.db_statement_timeout)
        self.store = store or SqlAlchemyStore(url, timeouts=timeouts)
        configure_step_logs(self.settings.step_log_limit, lambda: self._secrets)
        if self.settings.dispatcher == "celery":
            self._check_celery()
        self.store.initialize()
        self._dispatcher = dispatcher
        self._listener = listener
        self._orchestrator: Orchestrator | None = None
        self._connections: Connections | None = None
        self._lock = threading.Lock()
        self._backoff = Backoff(None)

    @property
    def orchestrator(self) -> Orchestrator:
        with self._lock:  # API threads may ask first; there must be exactly one
            return self._make_orchestrator()

    def _check_celery(self) -> None:
        """The celery dispatcher needs a broker and a database that workers on other hosts
        can share: SQLite is refused (one file, one host; its single writer lock would
        serialise every worker process anyway)."""
        try:
            self.settings.broker()
        except ValueError as exc:
            self.store.dispose()
            raise InvalidSetting(str(exc)) from None
        if self.store.dialect == "sqlite":
            self.store.dispose()
            raise InvalidSetting(
                "the celery dispatcher needs a database that every worker can reach: "
                "use PostgreSQL or MariaDB/MySQL (STEPLINE_DB), or STEPLINE_DISPATCHER=direct "
                "with SQLite"
            )

    def _celery_dispatcher(self) -> Dispatcher:
        from stepline.dispatchers.celery import CeleryDispatcher, live_processes

        return CeleryDispatcher(
            self.settings.broker(),
            queue=self.settings.queue,
            visibility_timeout=self.settings.broker_visibility_timeout,
            processes=lambda: live_processes(self.store),
        )

    def _make_orchestrator(self) -> Orchestrator:
        if self._orchestrator is None and (
            isinstance(self._dispatcher, RemoteDispatcher)
            or (self._dispatcher is None and self.settings.dispatcher == "celery")
        ):
            remote = self._dispatcher or self._celery_dispatcher()
            assert isinstance(remote, RemoteDispatcher)
            self._orchestrator = RemoteOrchestrator(
                self.store,
                remote,
                lease_seconds=self.settings.lease_seconds,
                listener=self._listener,
            )
        if self._orchestrator is None:
            dispatcher = self._dispatcher or DirectDispatcher(
                self.settings.capacity,
                load=self.store.results_for,
                statuses=self.store.statuses_for,
                connections=self.connections,
            )
            self._orchestrator = Orchestrator(
                self.store,
                dispatcher,
                lease_seconds=self.settings.lease_seconds,
                listener=self._listener,
                max_result_bytes=self.settings.max_result_bytes,
            )
        return self._orchestrator

    @property
    def connections(self) -> Connections:
        """The named business databases of this service's settings (``ctx.connections``),
        created on first use and closed with the service."""
        if self._connections is None:
            try:
                self._connections = Connections.from_settings(self.settings)
            except ValueError as exc:
                raise InvalidSetting(f"STEPLINE_CONNECTIONS__*: {exc}") from None
        return self._connections

    def secrets(self) -> list[str]:
        """The secret values of settings and of the database URL in use, for redaction."""
        return list(self._secrets)

    def close(self) -> None:
        if self._orchestrator is not None:
            self._orchestrator.close()
        if self._connections is not None:
            self._connections.dispose()
        self.store.dispose()

    def __enter__(self) -> Stepline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- definitions ----------------------------------------------------------------------

    def _broker_problems(self, definition: BatchDefinition) -> list[Problem]:
        if self.settings.dispatcher != "celery":
            return []
        from stepline.dispatchers.celery import broker_problems

        return broker_problems(
            definition, self.settings.broker(), self.settings.broker_visibility_timeout
        )

    def apply(self, definition: BatchDefinition) -> StoredDefinition:
        problems = (
            alert_problems(definition)
            + self._broker_problems(definition)
            + [
                Problem(problem, step=s.key)
                for s in definition.steps
                if (problem := main_module_problem(s.runner))
            ]
        )
        if problems:
            raise DefinitionError(problems)
        return self.store.apply(definition)

    def apply_path(self, path: Path) -> list[StoredDefinition]:
        """Validate every definition under ``path`` first; store them only if all are valid."""
        return [self.store.apply(d) for d in self.check_path(path)]

    def check_path(self, path: Path) -> list[BatchDefinition]:
        """Every definition under ``path``, checked as :meth:`apply_path` does, not stored;
        DefinitionError naming every problem."""
        definitions: list[BatchDefinition] = []
        problems: list[Problem] = []
        for file, result in load_definitions(path):
            if isinstance(result, DefinitionError):
                problems.extend(result.problems)
            else:
                problems.extend(alert_problems(result, str(file)))
                problems.extend(self._broker_problems(result))
                definitions.append(result)
        if problems:
            raise DefinitionError(problems)
        if not definitions:
            raise DefinitionError([Problem("no .yaml, .yml or .json definitions", str(path))])
        return definitions

    def apply_target(self, target: str) -> list[StoredDefinition]:
        """Apply a definition file or directory, or a ``package.module:attribute``."""
        if not is_python_target(target):
            return self.apply_path(Path(target))
        definitions = load_python_definitions(target)
        problems = [p for d in definitions for p in alert_problems(d, target)]
        if problems:
            raise DefinitionError(problems)
        return [self.store.apply(d) for d in definitions]

    # -- instances ------------------------------------------------------------------------

    def trigger(
        self,
        batch: str,
        params: Mapping[str, Any] | None = None,
        trigger: str = "cli",
        *,
        scheduled_for: datetime | None = None,
        idempotency_key: str | None = None,
        owned: bool = False,
        limited: bool = False,
    ) -> tuple[InstanceRecord, bool]:
        """Create an instance of the current version of ``batch`` (not yet running).

        With ``limited`` (cron and HTTP triggers) the batch's ``max_active_instances`` is
        honoured: a busy batch queues the new instance (``on_busy: queue``, the default;
        ``serve`` admits it when one finishes) or records it as skipped (``on_busy:
        skip``: a cancelled instance whose error says why, so no trigger is lost).
        """
        stored = self.store.definition(batch)
        if stored.paused:
            raise Paused(f"batch {batch!r} is paused: it takes no new instance until resumed")
        params = instance_params(
            stored.definition,
            params or {},
            scheduled_for,
            stored.definition.timezone or self.settings.timezone,
        )
        skipped = None
        if limited and stored.definition.extra.get("on_busy", "queue") == "skip":
            limit = stored.definition.max_active_instances
            if self.store.active_count(stored.id) >= limit:
                skipped = (
                    f"skipped: {batch} already has {limit} active instance(s) "
                    "(max_active_instances) and on_busy is skip"
                )
        return self.store.create_instance(
            stored,
            params,
            trigger,
            scheduled_for=scheduled_for,
            idempotency_key=idempotency_key,
            owner=self.orchestrator.owner if owned else None,
            skipped=skipped,
        )

    # -- schedule control and retention ------------------------------------------------------

    def pause(self, batch: str) -> StoredDefinition:
        """Pause a batch: no cron instance and no trigger until :meth:`resume`. Instances
        already queued or running go on."""
        stored = self.store.set_paused(batch, True)
        log.info("batch paused", batch=batch)
        return stored

    def resume(self, batch: str) -> StoredDefinition:
        """Resume a paused batch; its ``misfire`` policy decides about the fire times that
        passed meanwhile (``once``: the latest runs; ``all``: each runs; ``skip``: none)."""
        stored = self.store.set_paused(batch, False)
        log.info("batch resumed", batch=batch)
        return stored

    def delete(self, batch: str, *, purge: bool = False) -> int:
        """Delete a batch (see :meth:`Store.delete_definition`); returns instances deleted."""
        deleted = self.store.delete_definition(batch, purge=purge)
        log.info("batch deleted", batch=batch, purged_instances=deleted if purge else None)
        return deleted

    def purge(
        self,
        which: PurgeFilter,
        *,
        chunk: int = 500,
        stop: threading.Event | None = None,
    ) -> int:
        """Delete the finished instances ``which`` names, ``chunk`` per transaction, so a
        busy database is never locked for long; returns how many were deleted."""
        total = 0
        while stop is None or not stop.is_set():
            deleted = self.store.purge_chunk(which, chunk)
            total += deleted
            if deleted < chunk:
                break
        if total:
            log.info("purged instances", count=total, before=which.before.isoformat())
        return total

    def purge_forever(
        self, stop: threading.Event, retention: timedelta, *, every_seconds: float = 3600.0
    ) -> None:
        """``serve``'s retention thread: purge what finished longer than ``retention`` ago,
        soon after start and then every ``every_seconds``, until ``stop``."""
        from stepline.core.states import InstanceStatus as Status

        final = tuple(s for s in Status if s.is_final)
        wait = min(5.0, every_seconds)
        while not stop.wait(wait):
            wait = every_seconds
            try:
                self.purge(PurgeFilter(datetime.now(UTC) - retention, final), stop=stop)
            except Exception as exc:  # the next round tries again
                log.warning("retention purge failed", error=f"{type(exc).__name__}: {exc}")

    def logs(
        self, instance_id: int, step: str | None = None, *, after_id: int = 0
    ) -> list[StepLogRecord]:
        """The logs of an instance's attempts, redacted again with today's secrets."""
        from stepline.redact import redact_text

        instance = self.store.instance(instance_id)  # NotFound for an unknown instance
        if step is not None:
            try:
                self.store.definition_for(instance).step(step)
            except KeyError:
                raise NotFound(
                    f"instance {instance_id} has no step {shown(step)}",
                    hint=f"`stepline show {instance_id}` lists its steps",
                ) from None
        secrets = self.settings.secrets()
        return [
            replace(r, text=redact_text(r.text, secrets))
            for r in self.store.step_logs(instance_id, step, after_id=after_id)
        ]

    def wake(self) -> None:
        """Tell this process's driver that there is new work (a trigger, a retry)."""
        if self._orchestrator is not None:
            self._orchestrator.wake()

    def run_instance(
        self, instance_id: int, *, on_wait: Callable[[str], None] | None = None
    ) -> InstanceRecord:
        """Drive one instance to a final state in this process.

        A waiting (``queued``) instance is admitted first under its batch's
        ``max_active_instances``, like a trigger from cron or HTTP: with ``on_busy: queue``
        this waits for a free place (``on_wait`` is told why, once); with ``on_busy: skip``
        the instance ends ``cancelled`` with the reason, and is returned as such.
        """
        skipped = self._admit_or_wait(instance_id, on_wait)
        if skipped is not None:
            return skipped
        return self.orchestrator.run(instance_id)

    def _admit_or_wait(
        self, instance_id: int, on_wait: Callable[[str], None] | None
    ) -> InstanceRecord | None:
        orchestrator = self.orchestrator
        told = False
        backoff = Backoff(orchestrator.db_patience_seconds)
        while True:
            try:
                instance = self.store.instance(instance_id)
                if instance.status is not InstanceStatus.QUEUED or instance.owner_id not in (
                    None,
                    orchestrator.owner,
                ):
                    return None  # admitted already, final, or another owner's: run() decides
                definition = self.store.definition_for(instance)
                limit = definition.max_active_instances
                if self.store.admit(instance_id, orchestrator.owner, limit):
                    return None
                reason = (
                    f"{instance.batch} already has {limit} running instance(s) "
                    "(max_active_instances)"
                )
                if definition.extra.get("on_busy", "queue") == "skip":
                    why = f"skipped: {reason} and on_busy is skip"
                    self.store.skip_waiting(instance_id, orchestrator.owner, why)
                    return self.store.instance(instance_id)
                if not told and on_wait is not None:
                    on_wait(f"waiting: {reason}; instance {instance_id} starts when one ends")
                told = True
                orchestrator.heartbeat()  # it owns the waiting instance: stay alive
                backoff.reset()
                time.sleep(min(orchestrator.poll_seconds, 0.25))
            except StoreUnavailable as exc:
                backoff.wait(exc)

    def retry(
        self, instance_id: int, items: Mapping[str, Iterable[int]] | None = None
    ) -> InstanceRecord:
        """Reset a failed or cancelled instance in place: only what did not succeed runs again.

        ``items`` ({mapped step key: map indexes}) narrows a mapped step's retry to those of
        its failed items; the others stay failed (so the step fails again unless none is
        left). Raises Conflict for a succeeded instance (run the batch anew instead), for
        one that is still queued or running, and for items that are not failed items of a
        mapped step.
        """
        instance = self.store.instance(instance_id)
        definition = self.store.definition_for(instance)
        chosen = {key: sorted(set(indexes)) for key, indexes in (items or {}).items()}
        if chosen:
            self._check_items(instance_id, definition, chosen)
        with self.store.instance_transaction(instance_id) as tx:
            status = tx.instance.status
            if status is InstanceStatus.SUCCEEDED:
                raise Conflict(
                    f"instance {instance_id} of {instance.batch!r} succeeded and is final; "
                    "run the batch anew instead",
                    hint=f"`stepline run {instance.batch}` runs it anew",
                )
            if not status.is_final:
                raise Conflict(
                    f"instance {instance_id} is {status.value}; only a failed or cancelled "
                    "instance can be retried",
                    hint="`stepline recover` resumes a crashed one",
                )
            reset = tx.reset_unsuccessful(
                definition.graph.predecessors,
                mapped=[s.key for s in definition.steps if s.map is not None],
                only_items=chosen or None,
            )
            tx.set_instance(InstanceStatus.QUEUED, release=True)
            tx.clear_cancel()
        log.info("instance reset for retry", instance_id=instance_id, steps=reset)
        return self.store.instance(instance_id)

    def _check_items(
        self, instance_id: int, definition: BatchDefinition, chosen: Mapping[str, list[int]]
    ) -> None:
        mapped = {s.key for s in definition.steps if s.map is not None}
        failed: dict[str, set[int]] = {}
        for r in self.store.step_results(instance_id):
            if r.map_index >= 0 and r.status is not StepStatus.SUCCEEDED:
                failed.setdefault(r.step_key, set()).add(r.map_index)
        for key, indexes in chosen.items():
            if key not in mapped:
                raise Conflict(f"step {key!r} of instance {instance_id} is not a mapped step")
            unknown = [i for i in indexes if i not in failed.get(key, set())]
            if unknown or not indexes:
                shown = ", ".join(str(i) for i in unknown[:10]) or "none given"
                raise Conflict(
                    f"map_index {shown} of step {key!r} is not a failed item of instance "
                    f"{instance_id}"
                )

    def cancel(self, instance_id: int) -> InstanceRecord:
        """Cancel an unfinished instance: at once if nobody runs it, else via its owner."""
        orchestrator = self.orchestrator  # before the transaction: it registers (a write)
        with self.store.instance_transaction(instance_id) as tx:
            if tx.instance.status.is_final:
                raise Conflict(
                    f"instance {instance_id} is already {tx.instance.status.value}; "
                    "only a queued or running instance can be cancelled"
                )
            tx.request_cancel()
            ours = tx.instance.owner_id == orchestrator.owner
            driven = ours and instance_id in orchestrator.active_ids()
            if not driven and (ours or not tx.owner_alive()):
                tx.cancel_unfinished()
                tx.set_instance(InstanceStatus.CANCELLED, error="cancelled on request")
        return self.store.instance(instance_id)

    def serve_forever(self, stop: threading.Event, *, grace_seconds: float = 30.0) -> None:
        """The driver of ``stepline serve``: admit queued instances, run them, recover dead
        owners' instances, until ``stop``; then let running steps end for up to
        ``grace_seconds`` and leave the rest to recovery (by this or another process)."""
        orchestrator = self.orchestrator
        next_admission = next_recovery = next_alerts = 0.0
        sweeper: threading.Thread | None = None
        while not stop.is_set():
            now = time.monotonic()
            if orchestrator.woken or now >= next_admission:
                orchestrator.woken = False
                next_admission = now + orchestrator.poll_seconds
                self._guard(self._admit)
            if now >= next_recovery:
                next_recovery = now + max(self.settings.lease_seconds / 3, 1.0)
                self._guard(self._recover_orphans)
            if now >= next_alerts and (sweeper is None or not sweeper.is_alive()):
                # Alerts a failed send or a dead process left in the outbox.
                next_alerts = now + _ALERT_SWEEP_SECONDS
                sweeper = deliver_in_background(
                    self.store, orchestrator.owner, orchestrator.alert_claim_seconds
                )
            self._guard(orchestrator.step_once)
        orchestrator.draining = True
        deadline = time.monotonic() + grace_seconds
        while orchestrator.busy and time.monotonic() < deadline:
            self._guard(orchestrator.step_once)
        log.info("driver stopped", unfinished=orchestrator.active_ids())

    def _guard(self, action: Callable[[], object]) -> None:
        """The driver must outlive any one failure: log it, pause (longer each time in a
        row, up to 5 s), go on. Nothing it holds is lost: see Orchestrator.step_once."""
        try:
            action()
        except StoreUnavailable as exc:
            self._backoff.wait(exc)
        except Exception as exc:
            log.exception("driver error; continuing", error=f"{type(exc).__name__}: {exc}")
            time.sleep(0.2)
        else:
            self._backoff.reset()

    def _admit(self) -> None:
        orchestrator = self.orchestrator
        full: set[int] = set()  # batches at their limit: their later instances wait too
        for instance in self.store.waiting_instances(limit=1000):
            if instance.definition_id in full:
                continue
            definition = self.store.definition_for(instance)
            if self.store.admit(instance.id, orchestrator.owner, definition.max_active_instances):
                self._adopt(instance.id, orchestrator.owner)
            else:
                full.add(instance.definition_id)

    def _recover_orphans(self) -> None:
        # This process's own instances that it does not drive are orphans too: an adoption
        # whose transaction failed after admission committed leaves one behind.
        own = self.orchestrator.owner
        for instance_id, owner in self.store.orphaned_instances([*self.dead_owners(), own]):
            if instance_id not in self.orchestrator.active_ids():
                log.info(
                    "recovering instance of a dead owner", instance_id=instance_id, dead_owner=owner
                )
                self._adopt(instance_id, owner)

    def dead_owners(self) -> list[str]:
        """Owners whose lease expired, or whose process on this host is gone."""
        return dead_owners(self.store, self.orchestrator.owner)

    def recover(self) -> list[InstanceRecord]:
        """Resume every instance whose owner died, and run them all to a final state.

        One instance that cannot be resumed does not stop the others: the error is logged
        and the rest are driven to the end. An instance whose dead owner was still waiting
        to start it (``max_active_instances``) goes back to waiting; it runs here if its
        batch has room, and is otherwise left for ``serve`` to admit.
        """
        orphans = self.store.orphaned_instances(self.dead_owners())
        adopted: list[int] = []
        for instance_id, owner in orphans:
            try:
                if self._adopt(instance_id, owner) or self._admit_released(instance_id):
                    adopted.append(instance_id)
            except StoreUnavailable:
                raise
            except Exception as exc:
                log.exception("could not resume instance", instance_id=instance_id, error=str(exc))
        for instance_id in adopted:
            try:
                self.orchestrator.run(instance_id)
            except StoreUnavailable:
                raise
            except Exception as exc:
                log.exception("could not resume instance", instance_id=instance_id, error=str(exc))
        # Alerts that a dead process never sent, or that failed to go out before.
        deliver_alerts(self.store, self.orchestrator.owner, self.orchestrator.alert_claim_seconds)
        return [self.store.instance(i) for i in adopted]

    def _admit_released(self, instance_id: int) -> bool:
        instance = self.store.instance(instance_id)
        if instance.status is not InstanceStatus.QUEUED or instance.owner_id is not None:
            return False
        limit = self.store.definition_for(instance).max_active_instances
        return self.store.admit(instance_id, self.orchestrator.owner, limit)

    def _adopt(self, instance_id: int, dead_owner: str | None) -> bool:
        """Take over a dead owner's instance; one it never started (still ``queued``)
        goes back to admission instead, so a crash cannot bypass max_active_instances."""
        try:
            if dead_owner is not None and self.store.release_waiting(instance_id, dead_owner):
                log.info("instance of a dead owner goes back to waiting", instance_id=instance_id)
                return False
            return self.orchestrator.adopt(instance_id, takeover=True, expected_owner=dead_owner)
        except (NotFound, Conflict):
            return False
