"""The store port: where definitions, instances and step results live.

The store is the source of truth. Every method is one short transaction; none is ever held
open while a runner executes. Implementations: :class:`stepline.stores.sqlalchemy.SqlAlchemyStore`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

from stepline.core.definition import BatchDefinition
from stepline.core.records import quick_init
from stepline.core.states import InstanceStatus, StepStatus


@dataclass(frozen=True)
class StoredDefinition:
    id: int
    name: str
    version: int
    definition: BatchDefinition
    created_at: datetime
    updated_at: datetime
    paused_at: datetime | None = None

    @property
    def paused(self) -> bool:
        return self.paused_at is not None


@dataclass(frozen=True)
class InstanceRecord:
    id: int
    batch: str
    definition_id: int
    definition_version: int
    status: InstanceStatus
    params: Mapping[str, Any]
    trigger: str
    scheduled_for: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    owner_id: str | None
    cancel_requested: bool


@dataclass(frozen=True)
class StepResultRecord:
    id: int
    instance_id: int
    step_key: str
    map_index: int
    status: StepStatus
    attempt: int
    result_payload: Any
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime


class StepState(NamedTuple):
    """What a step row says of its attempts, without its result: what an owner polls to
    follow the steps that workers run (progress, metrics)."""

    row_id: int
    step_key: str
    map_index: int
    status: StepStatus
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None


class KeptAttempt(NamedTuple):
    """A failed attempt kept in the history of its step row (it was retried, or lost)."""

    row_id: int
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class AttemptRecord:
    step_key: str
    map_index: int
    attempt: int
    status: StepStatus
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class StepLogRecord:
    """What one attempt of one step (or map item) logged, redacted and capped."""

    id: int
    step_key: str
    map_index: int
    attempt: int
    text: str
    truncated: bool
    created_at: datetime


@dataclass(frozen=True)
class PurgeFilter:
    """Which finished instances a purge deletes: finished before ``before``, in one of
    ``statuses`` (final ones only), of ``batch`` if given."""

    before: datetime
    statuses: tuple[InstanceStatus, ...]
    batch: str | None = None


@dataclass(frozen=True)
class PendingAlert:
    """One alert of a failed instance, claimed for sending."""

    id: int
    instance_id: int
    alert_index: int
    attempts: int


@quick_init
@dataclass(frozen=True)
class ClaimedStep:
    """A step result row this process now owns as ``running`` for ``attempt``."""

    row_id: int
    step_key: str
    map_index: int
    attempt: int
    started_at: datetime
    first_attempt: int = 1
    """Where this run of the step began counting attempts (see ``stepline retry``)."""


@quick_init
@dataclass(frozen=True)
class StepOutcome:
    """What one attempt of a step produced, reported back by whoever ran it."""

    row_id: int
    step_key: str
    map_index: int
    attempt: int
    succeeded: bool
    payload: str | None  # JSON text, already encoded
    error: str | None
    started_at: datetime
    finished_at: datetime
    retryable: bool = True
    first_attempt: int = 1
    log: str | None = None
    """What the runner logged in this attempt (redacted, capped), or None if nothing."""
    log_truncated: bool = False
    lost: bool = False
    """The attempt's worker died before it reported (remote dispatchers): retried per the
    policy, but at least once, so one crash does not fail a step that allows no retry."""
    error_codes: tuple[str, ...] = ()
    """The failed attempt's error codes and exception class names, for ``retry.on``."""

    @property
    def tries(self) -> int:
        """Attempts used in this run of the step, the number the retry policy limits."""
        return self.attempt - self.first_attempt + 1

    def unstored(self, why: str) -> StepOutcome:
        """The attempt's failure without what the runner produced (result, log, error
        text), for an outcome the database refuses: none of the refused values is in it,
        and it is not retried (it would be refused again)."""
        return replace(
            self,
            succeeded=False,
            payload=None,
            log=None,
            log_truncated=False,
            retryable=False,
            error=why,
            error_codes=(),
        )


@dataclass(frozen=True)
class RunningStep:
    """A ``running`` row as the owner of its instance sees it (remote dispatchers)."""

    instance_id: int
    row_id: int
    step_key: str
    map_index: int
    attempt: int
    first_attempt: int
    owner_id: str | None
    """None while the attempt waits in the broker for a worker to pick it up."""
    started_at: datetime | None


@dataclass(frozen=True)
class InstanceWatch:
    """What the owner of an instance polls while remote workers drive it."""

    status: InstanceStatus
    cancel_requested: bool
    next_available_at: datetime | None
    """When the earliest queued step becomes claimable (NULL availability counts as now);
    map items waiting only for a concurrency slot are not counted."""


class InstanceTransaction(ABC):
    """One transaction on one instance, with the instance row locked against other writers.

    Obtained from :meth:`Store.instance_transaction`; commits when the ``with`` block ends
    normally and rolls back on an exception. Every method acts on that instance only.
    """

    instance: InstanceRecord

    @abstractmethod
    def record(self, outcome: StepOutcome, *, retry_at: datetime | None, owner: str) -> bool:
        """Store the outcome of ``outcome.attempt`` if that attempt still owns the row.

        The update is fenced on (row, attempt, status running): a late or duplicate report
        of an attempt that was abandoned (timed out, recovered, cancelled) changes nothing
        and returns False. With ``retry_at`` a failure sends the row back to ``queued``,
        available from that time, and keeps the failed attempt in the attempt history.
        """

    def record_many(
        self, outcomes: Sequence[tuple[StepOutcome, datetime | None]], *, owner: str
    ) -> list[bool]:
        """:meth:`record` each ``(outcome, retry_at)``, in order; one result per outcome.

        A store may send them together (one round trip instead of one per outcome)."""
        return [self.record(o, retry_at=at, owner=owner) for o, at in outcomes]

    @abstractmethod
    def upstream_done(
        self,
        counts: Mapping[str, int],
        *,
        start: Sequence[str] = (),
        owner: str | None = None,
        now: datetime | None = None,
    ) -> list[str]:
        """Subtract ``counts[key]`` from each pending step's count of unfinished upstream
        steps; return the keys whose count reached zero and that are still ``pending``.

        The keys in ``start`` (already decided to run once their count reaches zero) may be
        moved to ``running`` for ``owner`` in the same statement; :meth:`start` then
        returns them first, within its ``limit`` (so ``start`` must not name more keys
        than the caller's :meth:`start` will allow)."""

    @abstractmethod
    def pending_ready(self) -> list[str]:
        """Pending steps with no unfinished upstream step (roots, reset steps): the steps
        whose trigger rule and condition must be decided now."""

    @abstractmethod
    def pending_among(self, keys: Sequence[str]) -> list[str]:
        """The named steps that are still ``pending``, whatever their count of unfinished
        upstream steps: steps whose trigger rule fires before every upstream step ended
        (``one_success`` on a success, ``always`` at once). Like :meth:`upstream_done`, the
        returned steps may then be passed to :meth:`start`."""

    @abstractmethod
    def start(
        self, keys: Sequence[str], limit: int, owner: str | None, *, now: datetime
    ) -> list[ClaimedStep]:
        """Move pending steps that became ready: the first ``limit`` straight to ``running``
        (claimed by ``owner``), the rest to ``queued``. Saves a claim query per step.

        An ``owner`` of None hands the claimed attempts to a broker: the row is ``running``
        with no owner until a worker picks it up (:meth:`Store.pickup`). The same holds for
        :meth:`claim` and :meth:`claim_items`."""

    @abstractmethod
    def statuses(self, keys: Iterable[str]) -> dict[str, StepStatus]:
        """The status of each named step (its unmapped row)."""

    @abstractmethod
    def results(self, keys: Iterable[str]) -> dict[str, Any]:
        """Stored payloads of the named succeeded steps (item lists for mapped steps)."""

    @abstractmethod
    def mark(self, keys: Sequence[str], status: StepStatus, *, error: str | None = None) -> None:
        """Move pending steps to ``status`` (queued, skipped, upstream_failed, cancelled)."""

    @abstractmethod
    def claim(self, limit: int, owner: str | None, *, now: datetime) -> list[ClaimedStep]:
        """Take up to ``limit`` queued steps (not map items) available at ``now``: running,
        attempt + 1."""

    @abstractmethod
    def expand(self, key: str, count: int) -> None:
        """Insert ``count`` queued item rows (map_index 0..count-1) of a claimed mapped
        step; the step's own row then counts its unfinished items."""

    @abstractmethod
    def claim_items(
        self, key: str, limit: int, owner: str | None, *, now: datetime
    ) -> list[ClaimedStep]:
        """Take up to ``limit`` queued, available items of a mapped step, lowest first."""

    @abstractmethod
    def running_items(self, exclude_rows: Iterable[int] = ()) -> dict[str, int]:
        """How many items of each mapped step are ``running`` (by any process), not
        counting ``exclude_rows``: the items whose outcomes this transaction records."""

    @abstractmethod
    def items_done(self, key: str, count: int) -> bool:
        """Count ``count`` more items of a mapped step as final; True when none is left."""

    @abstractmethod
    def finish_mapped(
        self, key: str, *, error: str | None = None, labels: Sequence[str] | None = None
    ) -> tuple[StepStatus, list[Any]]:
        """Make a mapped step final from its items: succeeded with the list of item
        results (map_index order) if every item succeeded, else failed naming the failed
        items (``key[label]`` with ``labels`` by map_index, else ``key[map_index]``). With
        ``error`` (its list could not be read) it fails with that error."""

    @abstractmethod
    def next_available_at(self) -> datetime | None:
        """When the earliest queued step waiting for a retry delay becomes available."""

    @abstractmethod
    def step_statuses(self) -> dict[str, StepStatus]:
        """Status of every row of the instance, as ``"key"`` or ``"key[index]"``."""

    @abstractmethod
    def unclaim_untracked(
        self, owner: str, tracked: set[tuple[int, int]], *, exclude_keys: Iterable[str] = ()
    ) -> list[str]:
        """Undo ``owner``'s claims of steps it holds ``running`` but never started: every
        such row except the (row, attempt) pairs in ``tracked`` goes back to ``queued`` at
        its previous attempt number, as if never claimed (no attempt is used up).

        For an owner that cannot tell whether its last transaction committed: it starts a
        runner only after the claim's commit is confirmed, so a claim it does not track
        never ran. ``exclude_keys`` as for :meth:`requeue_running`.
        """

    @abstractmethod
    def enqueue_alerts(self, count: int) -> None:
        """Keep ``count`` alerts of this (now failed) instance to send after the commit:
        one row per entry of the definition's ``alerts:``, in this same transaction, so a
        process that dies before sending them leaves them to the next (see
        :meth:`Store.claim_alerts`)."""

    @abstractmethod
    def requeue_running(
        self, *, exclude_owner: str | None, exclude_keys: Iterable[str] = ()
    ) -> list[str]:
        """Send ``running`` rows not owned by ``exclude_owner`` back to ``queued``.

        Used when a new owner adopts an instance whose owner died: each such attempt is
        kept in the history as lost, and the step runs again as the next attempt. A lost
        attempt is rerun whatever the retry policy says: the runner never reported. The rows
        of ``exclude_keys`` (expanded mapped steps, which run nothing themselves) stay.
        """

    @abstractmethod
    def reset_unsuccessful(
        self,
        predecessors: Mapping[str, Sequence[str]],
        mapped: Iterable[str] = (),
        only_items: Mapping[str, Iterable[int]] | None = None,
    ) -> list[str]:
        """Send every step that did not succeed back to ``pending`` (to be decided again by
        the next advance) for a retry of the instance; succeeded rows and their
        results stay. Each reset step's retry budget starts again. Of a ``mapped`` step
        whose upstream all succeeded, only the items that did not succeed run again; if its
        upstream runs again too, its items are dropped and it expands anew. With
        ``only_items`` ({mapped key: map indexes}) just those of a key's unfinished items run
        again; its other failed items stay failed. Returns the reset keys.
        """

    @abstractmethod
    def cancel_unfinished(self) -> list[str]:
        """Move every row that is not final to ``cancelled``; return their keys."""

    @abstractmethod
    def request_cancel(self) -> None:
        """Flag the instance for cancellation; its owner stops it at its next transaction."""

    @abstractmethod
    def clear_cancel(self) -> None:
        """Forget an earlier cancel request (the instance is being retried)."""

    @abstractmethod
    def owner_alive(self) -> bool:
        """Whether the instance's owner holds an unexpired lease (database clock)."""

    @abstractmethod
    def has_unfinished(self) -> bool:
        """Whether any step of the instance is not final."""

    @abstractmethod
    def set_instance(
        self,
        status: InstanceStatus,
        *,
        owner: str | None = None,
        error: str | None = None,
        release: bool = False,
    ) -> None:
        """Move the instance to ``status`` (timestamps follow); ``owner`` takes ownership,
        ``release`` leaves it unowned (for whichever process admits it next)."""


@dataclass(frozen=True)
class InstanceQuery:
    """Which instances a listing wants: every field left None matches all."""

    batch: str | None = None
    status: InstanceStatus | None = None
    trigger: str | None = None
    created_from: datetime | None = None
    """Created at or after this instant."""
    created_to: datetime | None = None
    """Created before this instant."""
    before_id: int | None = None
    """Only instances with a smaller id (the next page of a newest-first listing)."""


@dataclass(frozen=True)
class StepOverview:
    """An instance's step rows for a page: every unmapped row, the first items of each
    mapped step and its later failed ones, and each mapped step's item counts by status."""

    rows: list[StepResultRecord]
    item_counts: dict[str, dict[StepStatus, int]]


@dataclass(frozen=True)
class AuditRecord:
    """One operator action: who did what, when, to which batch or instance."""

    id: int
    at: datetime
    actor: str
    action: str
    batch: str | None
    instance_id: int | None
    detail: str | None


class Store(ABC):
    """Definitions, instances and step results in a relational database."""

    @abstractmethod
    def initialize(self) -> None:
        """Bring the schema up to date (migrations); idempotent and safe to race."""

    @abstractmethod
    def apply(self, definition: BatchDefinition) -> StoredDefinition:
        """Store ``definition`` as the batch's current version.

        A document identical to the current version is not a new version. Instances keep
        the version they started with.
        """

    @abstractmethod
    def definition(self, name: str, version: int | None = None) -> StoredDefinition:
        """The named batch at ``version`` (default: current); NotFound if absent."""

    def definition_for(self, instance: InstanceRecord) -> BatchDefinition:
        """The definition version ``instance`` started with. Versions never change, so an
        implementation may keep them in memory (the driver asks at every adoption)."""
        return self.definition(instance.batch, instance.definition_version).definition

    @abstractmethod
    def definitions(self) -> list[StoredDefinition]:
        """Every batch at its current version, by name."""

    @abstractmethod
    def create_instance(
        self,
        stored: StoredDefinition,
        params: Mapping[str, Any],
        trigger: str,
        *,
        scheduled_for: datetime | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
        skipped: str | None = None,
    ) -> tuple[InstanceRecord, bool]:
        """Insert a queued instance and a ``pending`` row per step; roots are ``queued``.

        Returns (instance, created). With ``scheduled_for`` or ``idempotency_key``, an
        instance that already exists for it is returned with created False: the unique
        constraint, not a lock, makes concurrent schedulers create at most one. With
        ``owner`` the new instance is owned from the start, so recovery leaves it alone.
        With ``skipped`` (a reason) the trigger is recorded but nothing runs: the instance
        and its steps are created ``cancelled`` (a later retry can still run them).
        """

    @abstractmethod
    def active_count(self, definition_id: int) -> int:
        """How many instances of the batch are queued or running."""

    @abstractmethod
    def waiting_instances(self, limit: int = 100) -> list[InstanceRecord]:
        """Queued instances that nobody owns yet, oldest first (for admission)."""

    @abstractmethod
    def admit(self, instance_id: int, owner: str, max_active: int) -> bool:
        """Start a waiting (``queued``) instance as ``owner``'s if fewer than ``max_active``
        instances of its batch are running; atomic across processes (the batch's
        definition row is locked while counting). The instance must be unowned or already
        ``owner``'s (``stepline run`` owns its instance while it waits); returns False if
        the batch is at its limit or the instance is not waiting for ``owner``."""

    @abstractmethod
    def release_waiting(self, instance_id: int, owner: str) -> bool:
        """Give up ``owner``'s claim on an instance still ``queued`` (never admitted), so
        admission decides it like any trigger; False if it is not queued under ``owner``."""

    @abstractmethod
    def skip_waiting(self, instance_id: int, owner: str, reason: str) -> bool:
        """End ``owner``'s waiting instance as ``cancelled`` with ``reason`` (``on_busy:
        skip``): the trigger is kept, nothing runs; False if it is no longer waiting."""

    @abstractmethod
    def instance_transaction(
        self, instance_id: int, known: InstanceRecord | None = None
    ) -> AbstractContextManager[InstanceTransaction]:
        """Open a write transaction on one instance (see :class:`InstanceTransaction`).

        With ``known`` (a record of this instance read earlier) only the fields that other
        processes change are read again. Raises NotFound if there is no such instance.
        """

    @abstractmethod
    def pickup(
        self, row_id: int, attempt: int, owner: str, *, now: datetime | None = None
    ) -> tuple[int, ClaimedStep] | None:
        """A worker takes an attempt that was handed to a broker; one short transaction.

        Fenced on (row, attempt, ``running``, no owner yet): only the first delivery of an
        attempt gets it, so a duplicate, a late redelivery or a message of an attempt that
        was since recovered, cancelled or retried returns None and must run nothing.
        Returns the instance id and the claimed step; the row's ``started_at`` becomes
        ``now`` (default: the current time). A pickup whose commit went unconfirmed (the
        connection failed) is made again with the same ``now``: it gets the row if that
        commit happened, rather than leave it to a process that thinks it did not.
        """

    def pickup_many(
        self, row_ids: Sequence[int], attempt: int, owner: str, *, now: datetime | None = None
    ) -> list[tuple[int, ClaimedStep]]:
        """:meth:`pickup` of several attempts of one number (one message of several steps),
        in one short transaction; those no longer to be had are left out. In the order of
        ``row_ids``."""
        now = now or datetime.now(UTC)
        picked = (self.pickup(row_id, attempt, owner, now=now) for row_id in row_ids)
        return [p for p in picked if p is not None]

    @abstractmethod
    def hand_back(
        self, row_ids: Sequence[int], attempt: int, owner: str, *, picked_at: datetime
    ) -> list[int]:
        """Undo ``owner``'s pickup (made at ``picked_at``) of attempts it has not run: they
        are handed over again, to be sent to the broker anew. Returns the rows given back,
        in the order given; a row since recovered, cancelled or retried is not its to give.
        Made again after a commit that went unconfirmed, it returns the same rows."""

    @abstractmethod
    def running_steps(self, instance_ids: Sequence[int]) -> list[RunningStep]:
        """Every ``running`` row of the instances (map items included, mapped parents too)."""

    @abstractmethod
    def watch(self, instance_ids: Sequence[int]) -> dict[int, InstanceWatch]:
        """Status, cancel flag and next claimable time of each instance, in one read."""

    @abstractmethod
    def instance(self, instance_id: int) -> InstanceRecord:
        """One instance; NotFound if absent."""

    @abstractmethod
    def instances(
        self,
        batch: str | None = None,
        status: InstanceStatus | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
    ) -> list[InstanceRecord]:
        """Newest first; with ``before`` (an instance id, the cursor) only older ones."""

    @abstractmethod
    def step_results(self, instance_id: int) -> list[StepResultRecord]:
        """Every step result row of an instance, in row order."""

    @abstractmethod
    def step_states(self, instance_id: int) -> list[StepState]:
        """Every step row of an instance, in row order, without results or errors."""

    @abstractmethod
    def attempts(self, instance_id: int) -> list[AttemptRecord]:
        """The history of failed attempts of the instance's steps."""

    @abstractmethod
    def kept_attempts(self, row_ids: Sequence[int]) -> list[KeptAttempt]:
        """The failed attempts kept for these step rows, by row and attempt."""

    @abstractmethod
    def results_for(self, instance_id: int, keys: Iterable[str]) -> dict[str, Any]:
        """Stored payloads of succeeded steps, by key; a mapped step gives its item list."""

    @abstractmethod
    def statuses_for(self, instance_id: int, keys: Iterable[str]) -> dict[str, StepStatus]:
        """The status of each step of ``keys`` (a mapped step: the step's, not its items')."""

    @abstractmethod
    def claim_alerts(
        self, holder: str, claim_seconds: float, *, instance_id: int | None = None
    ) -> list[PendingAlert]:
        """Take the alerts due to be sent (of ``instance_id``, or of any instance) for
        ``claim_seconds``: another process takes them again only once that has passed,
        so a sender that dies mid-send is replaced (at-least-once delivery)."""

    @abstractmethod
    def alert_done(self, alert: PendingAlert, holder: str, error: str | None) -> None:
        """Record a send: sent, or failed with ``error`` (tried again later with a growing
        delay, up to a limit after which it is kept as ``abandoned`` with the error)."""

    def payload_limit(self) -> int | None:
        """The largest JSON result (in bytes) this database accepts in one statement, if
        it sets one below what the settings allow (MariaDB's ``max_allowed_packet``)."""
        return None

    @abstractmethod
    def heartbeat(self, owner: str, ttl_seconds: float) -> None:
        """Register or extend ``owner``'s lease, timed by the database clock."""

    @abstractmethod
    def release(self, owner: str) -> None:
        """End ``owner``'s lease now (clean shutdown)."""

    @abstractmethod
    def workers(self) -> list[tuple[str, str, int, bool]]:
        """Registered owners as (owner, hostname, pid, lease still valid)."""

    @abstractmethod
    def orphaned_instances(self, dead: Iterable[str] = ()) -> list[tuple[int, str | None]]:
        """Unfinished instances whose owner is unregistered, expired, or in ``dead`` (known
        dead by other means, e.g. its pid on this host is gone). Queued instances that
        nobody owns yet are waiting for admission, not orphaned. Returns (id, owner) pairs:
        recovery takes an instance over only if it still has that owner."""

    @abstractmethod
    def acquire_lease(self, name: str, holder: str, ttl_seconds: float) -> int | None:
        """Take or renew the named lease for ``ttl_seconds`` of database time.

        Returns the lease's epoch while ``holder`` holds it, None if someone else holds an
        unexpired lease. Each change of holder increments the epoch, so a stale leader's
        work can be fenced with :meth:`lease_valid`.
        """

    @abstractmethod
    def lease_valid(self, name: str, holder: str, epoch: int) -> bool:
        """Whether ``holder`` still holds the lease at ``epoch`` (database clock)."""

    @abstractmethod
    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up now so another process can take it without waiting."""

    @abstractmethod
    def last_scheduled(self, definition_id: int) -> datetime | None:
        """The latest cron fire time an instance of the batch was created for."""

    @abstractmethod
    def set_paused(self, name: str, paused: bool) -> StoredDefinition:
        """Pause or resume a batch (idempotent); NotFound if there is no such batch.

        A paused batch keeps its definition and its instances; the scheduler creates no
        instance for it and triggers are refused until it is resumed.
        """

    @abstractmethod
    def delete_definition(self, name: str, *, purge: bool) -> int:
        """Delete a batch; Conflict while any of its instances is queued or running.

        Without ``purge`` the batch leaves every list, schedule and trigger but its
        instances, step results and logs stay readable (applying it again revives it as a
        new version). With ``purge`` they are deleted too, with its versions and fire
        times. Returns how many instances were deleted.
        """

    @abstractmethod
    def fire_times_taken(
        self, definition_id: int, times: Sequence[datetime]
    ) -> dict[datetime, int | None]:
        """Of ``times``, the fire times that already got an instance: its id, or None if
        that instance was purged (its fire time is kept, so it never runs twice)."""

    @abstractmethod
    def step_logs(
        self, instance_id: int, step: str | None = None, *, after_id: int = 0
    ) -> list[StepLogRecord]:
        """The stored logs of an instance's attempts (of one step if given), oldest first;
        ``after_id`` returns only logs stored after that one (for following)."""

    @abstractmethod
    def purge_chunk(self, which: PurgeFilter, limit: int) -> int:
        """Delete up to ``limit`` matching instances, oldest first, with their step results,
        attempts and logs, in one short transaction; return how many. Never deletes an
        unfinished instance (a retry racing the purge waits on the instance row lock),
        never a fire time: a purged fire time cannot get a second instance."""

    @abstractmethod
    def count_purgeable(self, which: PurgeFilter) -> int:
        """How many instances :meth:`purge_chunk` would delete in total."""

    @abstractmethod
    def find_instances(self, query: InstanceQuery, limit: int) -> list[InstanceRecord]:
        """Instances matching ``query``, newest (highest id) first, at most ``limit``."""

    @abstractmethod
    def step_overview(self, instance_id: int, first_items: int, failed_items: int) -> StepOverview:
        """The rows a page shows without reading every item of a wide map: unmapped rows,
        items with map_index < ``first_items``, up to ``failed_items`` later unsuccessful
        ones, and every mapped step's item counts by status (counted in the database)."""

    @abstractmethod
    def record_audit(
        self,
        actor: str,
        action: str,
        *,
        batch: str | None = None,
        instance_id: int | None = None,
        detail: str | None = None,
    ) -> AuditRecord:
        """Store one operator action (its own transaction) and return it."""

    @abstractmethod
    def audit(
        self, *, instance_id: int | None = None, batch: str | None = None, limit: int = 200
    ) -> list[AuditRecord]:
        """Recorded actions on an instance (or a batch), newest first."""

    @abstractmethod
    def dispose(self) -> None:
        """Close connections."""


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
