"""One write transaction on one instance, for SqlAlchemyStore (the store's hot path).

The statements run once per step live here, on the driver's cursor (see hotpath.py), with
the helpers the store shares: the database clock and the reading of stored results.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from stepline.core.definition import item_name
from stepline.core.states import InstanceStatus, StepStatus
from stepline.stores.base import (
    ClaimedStep,
    InstanceRecord,
    InstanceTransaction,
    StepOutcome,
    iter_chunks,
)
from stepline.stores.hotpath import HotStatement, driver_cursor
from stepline.stores.schema import (
    Encoded,
    batch_instance,
    batch_step_attempt,
    batch_step_log,
    batch_step_result,
    json_serializer,
    stepline_alert_outbox,
    stepline_worker,
)

R = batch_step_result
BI = batch_instance
CHUNK = 500  # bound for IN lists: Oracle allows at most 1000 expressions in one list


def utcnow() -> datetime:
    return datetime.now(UTC)


# The per-step path: see stepline.stores.hotpath for why these bypass SQLAlchemy Core.
_RECORD = HotStatement(
    "UPDATE batch_step_result SET status = :status, result_payload = :payload, error = :error,"
    " available_at = :available_at, started_at = :started_at, finished_at = :finished_at"
    " WHERE id = :id AND attempt = :attempt AND status = 'running'",
    json=["payload"],
    times=["available_at", "started_at", "finished_at"],
)
_RECORD_RETURNING = HotStatement(
    _RECORD.sql + " RETURNING id", json=["payload"], times=sorted(_RECORD.times)
)
# The per-step statements on a step's own row address it by primary key (the ids come
# from SqlInstanceTransaction.row_ids, read once per instance and process). By
# (instance, step_key), PostgreSQL's planner saw three indexes starting with the instance
# at one cost (within its 1% fuzz) on a table without statistics, and often took
# ix_step_result_queue (instance, status, ...), walking every row of the instance that had
# been pending, old row versions included until vacuum: a chain grew quadratic (0.4 ms a
# countdown 2,000 steps into a chain). By id there is one index to use.
_STEP_ROWS = HotStatement(
    "SELECT step_key, id FROM batch_step_result WHERE batch_instance_id = :iid AND map_index = -1"
)
_PENDING_KEYS = " WHERE id IN :ids AND status = 'pending'"
_UPSTREAM_DONE = HotStatement(
    "UPDATE batch_step_result SET upstream_pending = upstream_pending - :amount" + _PENDING_KEYS
)
_UPSTREAM_DONE_RETURNING = HotStatement(
    _UPSTREAM_DONE.sql + " RETURNING id, step_key, attempt, first_attempt, upstream_pending"
)
_UPSTREAM_DONE_START = HotStatement(
    # The countdown and the start of steps already decided to run (their one upstream step
    # just succeeded), in one statement: a chain step saves the start UPDATE.
    "UPDATE batch_step_result SET upstream_pending = upstream_pending - :amount,"
    " status = 'running', attempt = attempt + 1, owner_id = :owner, started_at = :now,"
    " finished_at = NULL, available_at = NULL"
    + _PENDING_KEYS
    + " AND upstream_pending <= :amount RETURNING id, step_key, attempt, first_attempt",
    times=["now"],
)
_READY = HotStatement(
    "SELECT id, step_key, attempt, first_attempt FROM batch_step_result"
    + _PENDING_KEYS
    + " AND upstream_pending <= 0"
)
_PENDING_READY = HotStatement(
    "SELECT id, step_key, attempt, first_attempt FROM batch_step_result"
    " WHERE batch_instance_id = :iid AND map_index = -1 AND status = 'pending'"
    " AND upstream_pending <= 0"
)
_PENDING_AMONG = HotStatement(
    "SELECT id, step_key, attempt, first_attempt FROM batch_step_result" + _PENDING_KEYS
)
_START = HotStatement(
    "UPDATE batch_step_result SET status = 'running', attempt = attempt + 1, owner_id = :owner,"
    " started_at = :now, finished_at = NULL, available_at = NULL"
    " WHERE id IN :ids AND status = 'pending'",
    times=["now"],
)
_SET_PENDING = HotStatement("UPDATE batch_step_result SET upstream_pending = :n WHERE id = :id")
# A mapped step's own row is running while its items run. By (instance, step_key) the
# planner took ix_step_result_items and read every item's entry (old row versions
# included): 7.6 ms a call at 50,000 items against 1.4 ms at 5,000.
_PARENT_ROW = " WHERE id = :id AND status = 'running'"
_ITEMS_DONE = HotStatement(
    "UPDATE batch_step_result SET upstream_pending = upstream_pending - :n" + _PARENT_ROW
)
_ITEMS_DONE_RETURNING = HotStatement(_ITEMS_DONE.sql + " RETURNING upstream_pending")
_PARENT_PENDING = HotStatement("SELECT upstream_pending FROM batch_step_result" + _PARENT_ROW)
_QUEUED_ITEMS = HotStatement(
    "SELECT id, map_index, attempt, first_attempt FROM batch_step_result"
    " WHERE batch_instance_id = :iid AND step_key = :key AND map_index > :after"
    " AND status = 'queued' AND (available_at IS NULL OR available_at <= :now)"
    " ORDER BY map_index LIMIT :limit",
    times=["now"],
)
_START_QUEUED = HotStatement(
    "UPDATE batch_step_result SET status = 'running', attempt = attempt + 1, owner_id = :owner,"
    " started_at = :now, finished_at = NULL, available_at = NULL"
    " WHERE id IN :ids AND status = 'queued'",
    times=["now"],
)
_CLAIM_ITEMS_RETURNING = HotStatement(
    "UPDATE batch_step_result SET status = 'running', attempt = attempt + 1, owner_id = :owner,"
    " started_at = :now, finished_at = NULL, available_at = NULL"
    " WHERE id IN (SELECT id FROM batch_step_result"
    " WHERE batch_instance_id = :iid AND step_key = :key AND map_index > :after"
    " AND status = 'queued' AND (available_at IS NULL OR available_at <= :now)"
    " ORDER BY map_index LIMIT :limit)"
    " RETURNING id, map_index, attempt, first_attempt",
    times=["now"],
)


def _by_index(row: Any) -> int:
    return int(row[1])


_QUEUED_STEPS = HotStatement(
    "SELECT id, step_key, attempt, first_attempt FROM batch_step_result"
    " WHERE batch_instance_id = :iid AND status = 'queued' AND map_index = -1"
    " AND (available_at IS NULL OR available_at <= :now)"
    " ORDER BY id LIMIT :limit",
    times=["now"],
)
_ADD_ITEM = HotStatement(
    "INSERT INTO batch_step_result (batch_instance_id, step_key, map_index, status, attempt,"
    " first_attempt, created_at, upstream_pending)"
    " VALUES (:iid, :key, :i, 'queued', 0, 1, :now, 0)",
    times=["now"],
)
_RESULTS = HotStatement(
    "SELECT step_key, result_payload FROM batch_step_result WHERE batch_instance_id = :iid"
    " AND step_key IN :keys AND map_index = -1 AND status = 'succeeded'"
)
_STATUSES_OF = HotStatement(
    # A join deciding after its last upstream step: the statuses of the others.
    "SELECT step_key, status FROM batch_step_result WHERE id IN :ids"
)
_STATUSES = HotStatement(
    "SELECT step_key, map_index, status FROM batch_step_result WHERE batch_instance_id = :iid"
)
_UNFINISHED = [s.value for s in StepStatus if not s.is_final]
_UNFINISHED_ROW = HotStatement(
    # IN over the few unfinished states seeks the (instance, status) index; NOT IN over
    # the final ones scanned every finished row of the instance.
    "SELECT id FROM batch_step_result WHERE batch_instance_id = :iid AND status IN :states"
    " LIMIT :limit"
)
_SET_INSTANCE: dict[tuple[str, ...], HotStatement] = {}
"""``set_instance``'s UPDATE, by the columns it sets (a handful of shapes)."""
_QUEUE = HotStatement(
    "UPDATE batch_step_result SET status = 'queued' WHERE id IN :ids AND status = 'pending'"
)


ARRAY_CHUNK = 100_000
"""PostgreSQL takes a list as one array parameter: one statement for a whole fan-out (ten
statements of 500 each read all of a 5,000-step instance's rows ten times over)."""


def _chunks(items: list[Any], size: int = CHUNK) -> Sequence[list[Any]]:
    """``items`` in lists of at most ``size`` (a short list as is: the per-step case)."""
    if len(items) <= size:
        return (items,) if items else ()
    return [items[i : i + size] for i in range(0, len(items), size)]


def not_in_chunks(column: sa.ColumnElement[Any], values: Sequence[Any]) -> sa.ColumnElement[bool]:
    """``column NOT IN (values)`` as an AND of lists of at most CHUNK (Oracle: 1000 max)."""
    return sa.and_(*(column.not_in(chunk) for chunk in iter_chunks(values, CHUNK)))


# The database's clock in UTC, as naive or text timestamps, per dialect.
CLOCK_SQL = {
    "postgresql": "SELECT (now() AT TIME ZONE 'UTC')",
    "mysql": "SELECT UTC_TIMESTAMP(6)",
    "mariadb": "SELECT UTC_TIMESTAMP(6)",
    # SYSTIMESTAMP carries the server's offset; SYS_EXTRACT_UTC makes it UTC whatever the
    # server's or the session's time zone is.
    "oracle": "SELECT SYS_EXTRACT_UTC(SYSTIMESTAMP) FROM DUAL",
    "sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
}


def _record_params(outcome: StepOutcome, retry_at: datetime | None) -> dict[str, Any]:
    if outcome.succeeded:
        status, payload = StepStatus.SUCCEEDED, Encoded(outcome.payload or "null")
    else:
        status = StepStatus.QUEUED if retry_at is not None else StepStatus.FAILED
        payload = None
    return {
        "status": status.value,
        "payload": payload,
        "error": outcome.error,
        "available_at": retry_at,
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
        "id": outcome.row_id,
        "attempt": outcome.attempt,
    }


def _returning(conn: Connection) -> bool:
    """Whether UPDATE ... RETURNING is there: PostgreSQL, and SQLite from 3.35 (MariaDB
    has no UPDATE ... RETURNING; Oracle's RETURNING INTO binds outputs instead)."""
    name = conn.dialect.name
    return name == "postgresql" or (name == "sqlite" and _SQLITE_RETURNING)


_SQLITE_RETURNING = sqlite3.sqlite_version_info >= (3, 35)


def db_now(conn: Connection) -> datetime:
    """The database's clock: leases must not depend on the clocks of the machines."""
    sql = CLOCK_SQL.get(conn.dialect.name, CLOCK_SQL["sqlite"])
    value = conn.exec_driver_sql(sql).scalar_one()
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def load_results(conn: Connection, instance_id: int, keys: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if conn.dialect.name == "postgresql":
        # psycopg decodes JSONB itself: on the driver's cursor a fan-in's thousands of
        # upstream results load several times faster than through Core's result rows.
        for chunk in iter_chunks(list(keys), ARRAY_CHUNK):
            params = {"iid": instance_id, "keys": list(chunk)}
            out.update(_RESULTS.run(conn, params).fetchall())
        return out
    for chunk in iter_chunks(list(keys), CHUNK):
        query = (
            sa.select(R.c.step_key, R.c.map_index, R.c.result_payload)
            .where(
                R.c.batch_instance_id == instance_id,
                R.c.step_key.in_(chunk),
                R.c.map_index == -1,  # a mapped step's row holds the list of item results
                R.c.status == StepStatus.SUCCEEDED.value,
            )
            .order_by(R.c.step_key, R.c.map_index)
        )
        for key, index, payload in conn.execute(query):
            if index < 0:
                out[key] = payload
            else:
                out.setdefault(key, []).append(payload)
    return out


_RUNNING = sa.select(R.c.id, R.c.step_key, R.c.attempt, R.c.owner_id, R.c.started_at).where(
    R.c.batch_instance_id == sa.bindparam("iid"), R.c.status == StepStatus.RUNNING.value
)
_RUNNING_NOT_OWNED = _RUNNING.where(
    sa.or_(R.c.owner_id.is_(None), R.c.owner_id != sa.bindparam("owner"))
)
# Whether there is anything to requeue at all: an adoption finds nothing running in the
# usual case, and reads that without compiling and processing a typed query of the rows.
_ANY_RUNNING = HotStatement(
    "SELECT id FROM batch_step_result WHERE batch_instance_id = :iid AND status = 'running'"
    " LIMIT :limit"
)
_ANY_RUNNING_NOT_OWNED = HotStatement(
    "SELECT id FROM batch_step_result WHERE batch_instance_id = :iid AND status = 'running'"
    " AND (owner_id IS NULL OR owner_id <> :owner) LIMIT :limit"
)


class ItemCursors:
    """Per store (process) and mapped step (instance, key): the highest map_index it
    claimed, and the items it queued again behind that (retries: map_index -> when due).
    Hints only: the status in the claim's WHERE is the fence."""

    __slots__ = ("after", "behind")

    def __init__(self) -> None:
        self.after: dict[tuple[int, str], int] = {}
        self.behind: dict[tuple[int, str], dict[int, datetime]] = {}

    def forget(self, slot: tuple[int, str]) -> None:
        self.after.pop(slot, None)
        self.behind.pop(slot, None)


StepRows = dict[tuple[int, datetime], dict[str, int]]
"""Per instance (id and creation time: SQLite may reuse the id of a deleted instance): the
primary key of each step's own row. Made with the instance, never deleted while it lives."""

_MAX_CURSORS = 4096
_MAX_INSTANCES = 256


class SqlInstanceTransaction(InstanceTransaction):
    def __init__(
        self,
        conn: Connection,
        instance: InstanceRecord,
        cursors: ItemCursors | None = None,
        step_rows: StepRows | None = None,
    ) -> None:
        self.conn = conn
        self._cursors = ItemCursors() if cursors is None else cursors
        self._step_rows: StepRows = {} if step_rows is None else step_rows
        self.instance = instance
        self.id = instance.id
        self._ready: dict[str, tuple[int, int, int]] = {}
        self._dialect = conn.dialect.name
        self._cursor: Any = None
        self._arrays = self._dialect == "postgresql"
        self._chunk = ARRAY_CHUNK if self._arrays else CHUNK
        self._returning = _returning(conn)
        self._waiting: set[str] = set()
        """Steps this transaction saw pending with upstream steps left: unfinished, unless
        it decides them itself (mark, start, cancel)."""
        self._started: dict[str, ClaimedStep] = {}
        """Steps ``upstream_done`` already moved to running, for ``start`` to return."""

    def row_ids(self, keys: Iterable[str]) -> list[int]:
        """The primary keys of these steps' own rows (read once per instance and process)."""
        slot = (self.id, self.instance.created_at)
        rows = self._step_rows.get(slot)
        if rows is None:
            rows = dict(self._run(_STEP_ROWS, {"iid": self.id}).fetchall())
            if len(self._step_rows) >= _MAX_INSTANCES:
                self._step_rows.clear()
            self._step_rows[slot] = rows
        return [rows[k] for k in keys if k in rows]

    def _run(self, statement: HotStatement, params: Mapping[str, Any]) -> Any:
        """``statement.run`` on this transaction's driver cursor, looked up once."""
        cursor = self._cursor
        if cursor is None:
            if self._dialect == "oracle":
                return statement.run(self.conn, params)
            cursor = self._cursor = driver_cursor(self.conn)
        return statement.run_on(cursor, self._dialect == "sqlite", params, arrays=self._arrays)

    def record(self, outcome: StepOutcome, *, retry_at: datetime | None, owner: str) -> bool:
        updated = self._run(_RECORD, _record_params(outcome, retry_at)).rowcount
        if not updated:
            return False
        if outcome.log is not None:
            self._keep_logs([outcome])
        if not outcome.succeeded:
            self._keep_attempt(outcome, owner)
            self._queued_again(outcome, retry_at)
        return True

    def record_many(
        self, outcomes: Sequence[tuple[StepOutcome, datetime | None]], *, owner: str
    ) -> list[bool]:
        if len(outcomes) < 2 or self._dialect != "postgresql":
            return [self.record(o, retry_at=at, owner=owner) for o, at in outcomes]
        # psycopg pipelines an executemany: one round trip for a whole burst of outcomes
        # instead of one per outcome; RETURNING tells which rows the fence let through.
        rows = [_record_params(o, at) for o, at in outcomes]
        cursor = _RECORD_RETURNING.run_many(self.conn, rows, returning=True)
        stored: set[int] = set()
        while True:
            stored.update(row[0] for row in cursor.fetchall())
            if not cursor.nextset():
                break
        for o, at in outcomes:
            if o.row_id in stored and not o.succeeded:
                self._keep_attempt(o, owner)
                self._queued_again(o, at)
        self._keep_logs([o for o, _ in outcomes if o.row_id in stored])
        return [o.row_id in stored for o, _ in outcomes]

    def _queued_again(self, outcome: StepOutcome, retry_at: datetime | None) -> None:
        """A mapped item to retry behind the cursor: its claim is due at ``retry_at``."""
        slot = (self.id, outcome.step_key)
        if retry_at is not None and 0 <= outcome.map_index <= self._cursors.after.get(slot, -1):
            self._cursors.behind.setdefault(slot, {})[outcome.map_index] = retry_at

    def _keep_logs(self, outcomes: Sequence[StepOutcome]) -> None:
        """What the recorded attempts logged, in their own transaction (one statement; a
        silent attempt costs nothing)."""
        rows = [
            {
                "step_result_id": o.row_id,
                "attempt": o.attempt,
                "text": o.log,
                "truncated": o.log_truncated,
                "created_at": o.finished_at,
            }
            for o in outcomes
            if o.log is not None
        ]
        if rows:
            self.conn.execute(sa.insert(batch_step_log), rows)

    def _keep_attempt(self, outcome: StepOutcome, owner: str) -> None:
        self.conn.execute(
            sa.insert(batch_step_attempt).values(
                step_result_id=outcome.row_id,
                attempt=outcome.attempt,
                status=StepStatus.FAILED.value,
                error=outcome.error,
                owner_id=owner,
                started_at=outcome.started_at,
                finished_at=outcome.finished_at,
            )
        )

    def upstream_done(
        self,
        counts: Mapping[str, int],
        *,
        start: Sequence[str] = (),
        owner: str | None = None,
        now: datetime | None = None,
    ) -> list[str]:
        returning = self._returning
        ready: list[str] = []
        if start and returning and now is not None:
            counts = self._count_down_and_start(counts, start, owner, now, ready)
        by_amount: dict[int, list[str]] = {}
        for key, amount in counts.items():
            by_amount.setdefault(amount, []).append(key)
        for amount, keys in by_amount.items():
            for chunk in _chunks(self.row_ids(keys), self._chunk):
                params = {"amount": amount, "ids": chunk}
                if not returning:
                    self._run(_UPSTREAM_DONE, params)
                    continue
                # One statement instead of two: the counts come back with the rows.
                for row_id, key, attempt, first, left in self._run(
                    _UPSTREAM_DONE_RETURNING, params
                ).fetchall():
                    if left <= 0:
                        self._ready[key] = (row_id, attempt, first)
                        ready.append(key)
                    else:
                        self._waiting.add(key)
        if returning:
            return ready
        for chunk in _chunks(self.row_ids(counts), self._chunk):
            for row_id, key, attempt, first in self._run(_READY, {"ids": chunk}).fetchall():
                self._ready[key] = (row_id, attempt, first)
                ready.append(key)
        return ready

    def _count_down_and_start(
        self,
        counts: Mapping[str, int],
        start: Sequence[str],
        owner: str | None,
        now: datetime,
        ready: list[str],
    ) -> Mapping[str, int]:
        """Count down and start the ``start`` keys at once (one statement per amount);
        the counts left for the usual countdown: the other keys, and any ``start`` key the
        statement did not take (not pending, or with other upstream steps left)."""
        by_amount: dict[int, list[str]] = {}
        for key in start:
            by_amount.setdefault(counts[key], []).append(key)
        taken: set[str] = set()
        for amount, keys in by_amount.items():
            for chunk in _chunks(self.row_ids(keys), self._chunk):
                params = {"amount": amount, "ids": chunk}
                rows = self._run(
                    _UPSTREAM_DONE_START, {**params, "owner": owner, "now": now}
                ).fetchall()
                for row_id, key, attempt, first in rows:
                    self._started[key] = ClaimedStep(row_id, key, -1, attempt, now, first)
                    taken.add(key)
                    ready.append(key)
        if len(taken) == len(counts):
            return {}
        return {key: amount for key, amount in counts.items() if key not in taken}

    def start(
        self, keys: Sequence[str], limit: int, owner: str | None, *, now: datetime
    ) -> list[ClaimedStep]:
        self._waiting.difference_update(keys)
        started: list[ClaimedStep] = []
        if self._started:  # moved to running by upstream_done: they come first
            started = [self._started.pop(k) for k in keys if k in self._started]
            if started:
                keys = [k for k in keys if k in self._ready]
                limit = max(limit - len(started), 0)
        rows = [(key, *self._ready.pop(key)) for key in keys]
        run, wait = rows[:limit], rows[limit:]
        for chunk in _chunks(run, self._chunk):
            self._run(_START, {"ids": [r[1] for r in chunk], "owner": owner, "now": now})
        for chunk in _chunks(wait, self._chunk):
            self._run(_QUEUE, {"ids": [r[1] for r in chunk]})
        return started + [
            ClaimedStep(row_id, key, -1, attempt + 1, now, first)
            for key, row_id, attempt, first in run
        ]

    def pending_ready(self) -> list[str]:
        ready: list[str] = []
        for row_id, key, attempt, first in _PENDING_READY.run(
            self.conn, {"iid": self.id}
        ).fetchall():
            self._ready[key] = (row_id, attempt, first)
            ready.append(key)
        return ready

    def pending_among(self, keys: Sequence[str]) -> list[str]:
        ready: list[str] = []
        for chunk in iter_chunks(self.row_ids(keys), CHUNK):
            for row_id, key, attempt, first in _PENDING_AMONG.run(
                self.conn, {"ids": list(chunk)}
            ).fetchall():
                self._ready[key] = (row_id, attempt, first)
                ready.append(key)
        return ready

    def statuses(self, keys: Iterable[str]) -> dict[str, StepStatus]:
        out: dict[str, StepStatus] = {}
        for chunk in iter_chunks(self.row_ids(keys), self._chunk):
            for key, status in self._run(_STATUSES_OF, {"ids": list(chunk)}).fetchall():
                out[key] = StepStatus(status)
        return out

    def results(self, keys: Iterable[str]) -> dict[str, Any]:
        return load_results(self.conn, self.id, keys)

    def mark(self, keys: Sequence[str], status: StepStatus, *, error: str | None = None) -> None:
        self._waiting.difference_update(keys)
        values: dict[str, Any] = {"status": status.value}
        if status.is_final:
            values.update(finished_at=utcnow(), error=error)
        for chunk in iter_chunks(list(keys), CHUNK):
            self.conn.execute(
                sa.update(R)
                .where(
                    R.c.batch_instance_id == self.id,
                    R.c.step_key.in_(chunk),
                    R.c.status == StepStatus.PENDING.value,
                )
                .values(**values)
            )

    def claim(self, limit: int, owner: str | None, *, now: datetime) -> list[ClaimedStep]:
        if limit <= 0:
            return []
        rows = self._run(_QUEUED_STEPS, {"iid": self.id, "now": now, "limit": limit}).fetchall()
        if not rows:
            return []
        # attempt + 1 in SQL: the rows were read under this transaction's instance lock.
        for chunk in iter_chunks(rows, self._chunk):
            self._run(_START_QUEUED, {"ids": [r[0] for r in chunk], "owner": owner, "now": now})
        return [ClaimedStep(r[0], r[1], -1, r[2] + 1, now, r[3]) for r in rows]

    def expand(self, key: str, count: int) -> None:
        now = utcnow()
        rows = [{"iid": self.id, "key": key, "i": index, "now": now} for index in range(count)]
        for chunk in iter_chunks(rows, 2000):
            _ADD_ITEM.run_many(self.conn, chunk)
        _SET_PENDING.run(self.conn, {"id": self.row_ids([key])[0], "n": count})

    def claim_items(
        self, key: str, limit: int, owner: str | None, *, now: datetime
    ) -> list[ClaimedStep]:
        # Items are claimed in map_index order, so the next ones lie after the last one
        # this process claimed: the claim seeks there. From item 0 it would walk an index
        # entry for every item claimed before (on PostgreSQL each one's old row version
        # stays in the queued range until vacuum): 13 ms a claim late in a 50,000-item
        # map. A retry this process decided is claimed from its own index once due, before
        # the items after it, as from item 0. Other items behind the cursor (a lost
        # attempt, another process's retry, a claim rolled back) are found when the items
        # after it run short: the claim then looks from the start as well.
        slot = (self.id, key)
        hints = self._cursors
        after = hints.after.get(slot, -1)
        start = after
        behind = hints.behind.get(slot)
        due: list[int] = []
        if behind:
            due = [index for index, at in behind.items() if at <= now]
            if due:
                start = min(due) - 1
        items = self._claim_items(key, limit, owner, now, start)
        if len(items) < limit and start >= 0:
            items += self._claim_items(key, limit - len(items), owner, now, -1)
        if behind and due:
            reached = max((i.map_index for i in items), default=start)
            for index in due:  # claimed, or taken by another process meanwhile
                if index <= reached or len(items) < limit:
                    del behind[index]
            if not behind:
                hints.behind.pop(slot, None)
        if items:
            if len(hints.after) >= _MAX_CURSORS and slot not in hints.after:
                hints.after.clear()
                hints.behind.clear()
            hints.after[slot] = max(after, *(i.map_index for i in items))
        return items

    def _claim_items(
        self, key: str, limit: int, owner: str | None, now: datetime, after: int
    ) -> list[ClaimedStep]:
        if limit <= 0:
            return []
        params = {"iid": self.id, "key": key, "now": now, "limit": limit, "after": after}
        if self._returning:
            # One statement: the claim returns the rows it took (the attempt already
            # counted up), instead of a read of the queued items and then their claim.
            taken = self._run(_CLAIM_ITEMS_RETURNING, {**params, "owner": owner})
            rows = sorted(taken.fetchall(), key=_by_index)
            return [ClaimedStep(r[0], key, r[1], r[2], now, r[3]) for r in rows]
        rows = self._run(_QUEUED_ITEMS, params).fetchall()
        if not rows:
            return []
        for chunk in iter_chunks(rows, CHUNK):
            self._run(_START_QUEUED, {"ids": [r[0] for r in chunk], "owner": owner, "now": now})
        return [ClaimedStep(r[0], key, r[1], r[2] + 1, now, r[3]) for r in rows]

    def running_items(self, exclude_rows: Iterable[int] = ()) -> dict[str, int]:
        query = (
            sa.select(R.c.step_key, sa.func.count())
            .where(
                R.c.batch_instance_id == self.id,
                R.c.map_index >= 0,
                R.c.status == StepStatus.RUNNING.value,
            )
            .group_by(R.c.step_key)
        )
        skip = list(exclude_rows)
        if skip:
            query = query.where(R.c.id.not_in(skip))
        return {key: int(n) for key, n in self.conn.execute(query)}

    def items_done(self, key: str, count: int) -> bool:
        params = {"id": self.row_ids([key])[0], "n": count}
        if self._returning:  # one statement (a round trip on PostgreSQL) instead of two
            left = self._run(_ITEMS_DONE_RETURNING, params).fetchone()
            return left is not None and left[0] <= 0
        self._run(_ITEMS_DONE, params)
        left = self._run(_PARENT_PENDING, params).fetchone()
        return left is not None and left[0] <= 0

    def finish_mapped(
        self, key: str, *, error: str | None = None, labels: Sequence[str] | None = None
    ) -> tuple[StepStatus, list[Any]]:
        self._cursors.forget((self.id, key))
        payloads: list[Any] = []
        failed: list[int] = []
        if error is None:
            for index, status, payload in self.conn.execute(
                sa.select(R.c.map_index, R.c.status, R.c.result_payload)
                .where(R.c.batch_instance_id == self.id, R.c.step_key == key, R.c.map_index >= 0)
                .order_by(R.c.map_index)
            ):
                payloads.append(payload)
                if status != StepStatus.SUCCEEDED.value:
                    failed.append(index)
            if failed:
                named = labels is not None and len(labels) == len(payloads)
                shown = ", ".join(
                    item_name(key, labels[i] if named and labels else str(i)) for i in failed[:20]
                ) + (", ..." if len(failed) > 20 else "")
                error = f"{len(failed)} of {len(payloads)} items failed: {shown}"
        status = StepStatus.FAILED if error else StepStatus.SUCCEEDED
        self.conn.execute(
            sa.update(R)
            .where(R.c.batch_instance_id == self.id, R.c.step_key == key, R.c.map_index == -1)
            .values(
                status=status.value,
                error=error,
                finished_at=utcnow(),
                upstream_pending=0,
                result_payload=None if error else Encoded(json_serializer(payloads)),
            )
        )
        return status, payloads

    def next_available_at(self) -> datetime | None:
        value: datetime | None = self.conn.execute(
            sa.select(sa.func.min(R.c.available_at)).where(
                R.c.batch_instance_id == self.id, R.c.status == StepStatus.QUEUED.value
            )
        ).scalar()
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def step_statuses(self) -> dict[str, StepStatus]:
        return {
            (key if index < 0 else f"{key}[{index}]"): StepStatus(status)
            for key, index, status in _STATUSES.run(self.conn, {"iid": self.id}).fetchall()
        }

    def enqueue_alerts(self, count: int) -> None:
        now = utcnow()
        self.conn.execute(
            sa.insert(stepline_alert_outbox),
            [
                {
                    "batch_instance_id": self.id,
                    "alert_index": index,
                    "status": "pending",
                    "attempts": 0,
                    "available_at": now,
                    "created_at": now,
                }
                for index in range(count)
            ],
        )

    def requeue_running(
        self, *, exclude_owner: str | None, exclude_keys: Iterable[str] = ()
    ) -> list[str]:
        params: dict[str, Any] = {"iid": self.id}
        if exclude_owner is not None:
            params["owner"] = exclude_owner
        probe = _ANY_RUNNING if exclude_owner is None else _ANY_RUNNING_NOT_OWNED
        if not probe.run(self.conn, {**params, "limit": 1}).fetchall():
            return []  # nothing running (the usual adoption), whatever is excluded
        skip = list(exclude_keys)
        if not skip:  # no mapped step: statements built once
            query = _RUNNING if exclude_owner is None else _RUNNING_NOT_OWNED
            rows = self.conn.execute(query, params).all()
            return self._requeue(rows, "lost: its owner {owner} stopped before the attempt ended")
        query = self._running(skip)
        if exclude_owner is not None:
            query = query.where(sa.or_(R.c.owner_id.is_(None), R.c.owner_id != exclude_owner))
        rows = self.conn.execute(query).all()
        return self._requeue(rows, "lost: its owner {owner} stopped before the attempt ended")

    def unclaim_untracked(
        self, owner: str, tracked: set[tuple[int, int]], *, exclude_keys: Iterable[str] = ()
    ) -> list[str]:
        rows = [
            r
            for r in self.conn.execute(self._running(exclude_keys).where(R.c.owner_id == owner))
            if (r.id, r.attempt) not in tracked
        ]
        for r in rows:
            self.conn.execute(
                sa.update(R)
                .where(
                    R.c.id == r.id, R.c.attempt == r.attempt, R.c.status == StepStatus.RUNNING.value
                )
                .values(
                    status=StepStatus.QUEUED.value,
                    attempt=r.attempt - 1,
                    owner_id=None,
                    started_at=None,
                    available_at=None,
                )
            )
        return [r.step_key for r in rows]

    def _running(self, exclude_keys: Iterable[str]) -> sa.Select[Any]:
        query = sa.select(R.c.id, R.c.step_key, R.c.attempt, R.c.owner_id, R.c.started_at).where(
            R.c.batch_instance_id == self.id, R.c.status == StepStatus.RUNNING.value
        )
        skip = list(exclude_keys)
        if skip:  # a mapped step's own row stays running while its items run
            query = query.where(sa.or_(R.c.map_index >= 0, not_in_chunks(R.c.step_key, skip)))
        return query

    def _requeue(self, rows: Sequence[Row[Any]], reason: str) -> list[str]:
        now = utcnow()
        for r in rows:
            updated = self.conn.execute(
                sa.update(R)
                .where(
                    R.c.id == r.id, R.c.attempt == r.attempt, R.c.status == StepStatus.RUNNING.value
                )
                .values(status=StepStatus.QUEUED.value, available_at=None, owner_id=None)
            ).rowcount
            if updated:
                self.conn.execute(
                    sa.insert(batch_step_attempt).values(
                        step_result_id=r.id,
                        attempt=r.attempt,
                        status=StepStatus.FAILED.value,
                        error=reason.format(owner=r.owner_id),
                        owner_id=r.owner_id,
                        started_at=r.started_at,
                        finished_at=now,
                    )
                )
        return [r.step_key for r in rows]

    def reset_unsuccessful(
        self,
        predecessors: Mapping[str, Sequence[str]],
        mapped: Iterable[str] = (),
        only_items: Mapping[str, Iterable[int]] | None = None,
    ) -> list[str]:
        mapped = set(mapped)
        chosen = {k: set(v) for k, v in (only_items or {}).items()}
        rows = self.conn.execute(
            sa.select(R.c.id, R.c.step_key, R.c.map_index, R.c.status, R.c.attempt).where(
                R.c.batch_instance_id == self.id
            )
        ).all()
        parents = {r.step_key: r for r in rows if r.map_index < 0}
        items: dict[str, list[Row[Any]]] = {}
        for r in rows:
            if r.map_index >= 0:
                items.setdefault(r.step_key, []).append(r)
        succeeded = {k for k, r in parents.items() if r.status == StepStatus.SUCCEEDED.value}
        reset: list[str] = []
        for key, parent in parents.items():
            if key in succeeded:
                continue
            reset.append(key)
            waiting = sum(1 for p in predecessors.get(key, ()) if p not in succeeded)
            unfinished = [i for i in items.get(key, []) if i.status != StepStatus.SUCCEEDED.value]
            if key in chosen:
                unfinished = [i for i in unfinished if i.map_index in chosen[key]]
            if key in mapped and unfinished and not waiting:
                # Resume the fan-out: only the items that did not succeed run again.
                for item in unfinished:
                    self._reset_row(item.id, StepStatus.QUEUED, 0, item.attempt + 1)
                self._reset_row(parent.id, StepStatus.RUNNING, len(unfinished), parent.attempt)
                continue
            for chunk in iter_chunks([i.id for i in items.get(key, [])], CHUNK):
                self.conn.execute(
                    sa.delete(batch_step_attempt).where(
                        batch_step_attempt.c.step_result_id.in_(chunk)
                    )
                )
                self.conn.execute(sa.delete(R).where(R.c.id.in_(chunk)))
            # Pending even when its upstream all succeeded: the next advance decides it again
            # (trigger rule, condition), so a step skipped on purpose stays skipped.
            self._reset_row(parent.id, StepStatus.PENDING, waiting, parent.attempt + 1)
        return reset

    def _reset_row(self, row_id: int, status: StepStatus, pending: int, first: int) -> None:
        self.conn.execute(
            sa.update(R)
            .where(R.c.id == row_id)
            .values(
                status=status.value,
                upstream_pending=pending,
                first_attempt=first,
                error=None,
                result_payload=None,
                owner_id=None,
                available_at=None,
                started_at=None,
                finished_at=None,
            )
        )

    def cancel_unfinished(self) -> list[str]:
        self._waiting.clear()
        final = [s.value for s in StepStatus if s.is_final]
        keys = list(
            self.conn.execute(
                sa.select(R.c.step_key).where(
                    R.c.batch_instance_id == self.id, R.c.status.not_in(final)
                )
            ).scalars()
        )
        self.conn.execute(
            sa.update(R)
            .where(R.c.batch_instance_id == self.id, R.c.status.not_in(final))
            .values(
                status=StepStatus.CANCELLED.value,
                finished_at=utcnow(),
                error="cancelled on request",
            )
        )
        return keys

    def request_cancel(self) -> None:
        self.conn.execute(sa.update(BI).where(BI.c.id == self.id).values(cancel_requested=True))

    def clear_cancel(self) -> None:
        self.conn.execute(sa.update(BI).where(BI.c.id == self.id).values(cancel_requested=False))

    def owner_alive(self) -> bool:
        owner = self.instance.owner_id
        if owner is None:
            return False
        expires = self.conn.execute(
            sa.select(stepline_worker.c.expires_at).where(stepline_worker.c.id == owner)
        ).scalar()
        return expires is not None and expires > db_now(self.conn)

    def has_unfinished(self) -> bool:
        if self._waiting:
            return True  # a step still waiting for its upstream: no need to ask
        params = {"iid": self.id, "states": _UNFINISHED, "limit": 1}
        return _UNFINISHED_ROW.run(self.conn, params).fetchone() is not None

    def set_instance(
        self,
        status: InstanceStatus,
        *,
        owner: str | None = None,
        error: str | None = None,
        release: bool = False,
    ) -> None:
        values: dict[str, Any] = {"status": status.value}
        now = utcnow()
        if status is InstanceStatus.RUNNING:
            values.update(finished_at=None, error=None)
            if self.instance.started_at is None:
                values["started_at"] = now
        if status.is_final:
            values.update(finished_at=now, error=error)
        if owner is not None:
            values["owner_id"] = owner
        elif release:
            values["owner_id"] = None
        statement = _SET_INSTANCE.get(tuple(values))
        if statement is None:
            sets = ", ".join(f"{name} = :{name}" for name in values)
            statement = _SET_INSTANCE[tuple(values)] = HotStatement(
                f"UPDATE batch_instance SET {sets} WHERE id = :id",
                times=[n for n in ("started_at", "finished_at") if n in values],
            )
        statement.run(self.conn, {**values, "id": self.id})
