"""Runners used by the integration tests (imported by name, as users' runners are).

Each call is counted per (test key, step) so a test can assert how often a runner ran.
Behaviour comes from the step's ``with`` arguments, so one runner serves many tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

from stepline import DoNotRetry, StepContext

calls: Counter[tuple[str, str]] = Counter()
_lock = threading.Lock()
gates: dict[str, threading.Event] = {}


def _count(ctx: StepContext) -> int:
    with _lock:
        calls[(ctx.batch, ctx.step)] += 1
        return calls[(ctx.batch, ctx.step)]


def work(ctx: StepContext) -> Any:
    """Count the call, optionally sleep, fail the first N attempts, or return a value."""
    n = _count(ctx)
    args = ctx.args
    if args.get("sleep"):
        time.sleep(float(args["sleep"]))
    if n == 1 and args.get("slow_first"):
        time.sleep(float(args["slow_first"]))
        return "late"
    if n <= int(args.get("fail_times", 0)):
        raise RuntimeError(f"planned failure {n} of {ctx.step}")
    if args.get("fatal"):
        raise DoNotRetry(f"{ctx.step} cannot succeed")
    if "gate" in args:
        gates.setdefault(args["gate"], threading.Event()).wait(30)
    return args.get("value", {"step": ctx.step, "upstream": sorted(ctx.results)})


async def awork(ctx: StepContext) -> Any:
    n = _count(ctx)
    if ctx.args.get("sleep"):
        await asyncio.sleep(float(ctx.args["sleep"]))
    if n <= int(ctx.args.get("fail_times", 0)):
        raise RuntimeError(f"planned failure {n} of {ctx.step}")
    return {"step": ctx.step, "async": True}


def fan_in(ctx: StepContext) -> dict[str, Any]:
    _count(ctx)
    return {"seen": sorted(ctx.results), "values": dict(ctx.results)}


def not_json(ctx: StepContext) -> Any:
    _count(ctx)
    return {"when": object()}


def hang(ctx: StepContext) -> None:
    _count(ctx)
    time.sleep(float(ctx.args.get("seconds", 30)))


async def ahang(ctx: StepContext) -> None:
    _count(ctx)
    await asyncio.sleep(float(ctx.args.get("seconds", 30)))


def probe_transactions(ctx: StepContext) -> dict[str, int]:
    """Count transactions, read ones included, that others hold open on the store now."""
    import sqlalchemy as sa

    url = str(ctx.args["url"])
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                own = conn.connection.driver_connection
                return {"open_transactions": _sqlite_open_transactions(own, engine.url.database)}
            if engine.dialect.name == "postgresql":
                return {"open_transactions": _postgresql_open_transactions(conn)}
            return {"open_transactions": _mariadb_open_transactions(conn)}
    finally:
        engine.dispose()


def _postgresql_open_transactions(conn: Any) -> int:
    """Sessions of this test's own database (the server is shared) idle inside the same
    transaction at two samples 0.3 s apart, having run nothing in between (the same
    ``state_change``): a heartbeat caught between two of its statements is not counted."""
    sql = (
        "SELECT pid, xact_start, state_change FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND state IN ('idle in transaction', 'idle in transaction (aborted)')"
    )
    time.sleep(0.3)
    first = {tuple(row) for row in conn.exec_driver_sql(sql)}
    conn.rollback()
    time.sleep(0.3)
    second = {tuple(row) for row in conn.exec_driver_sql(sql)}
    return len(first & second)


def _mariadb_open_transactions(conn: Any) -> int:
    """Connections of this test's own database (the server is shared) that stayed idle
    inside a transaction from one sample to the next, 0.5 s later.

    "Stayed idle": the processlist's ``TIME_MS`` (milliseconds in the current state) grew
    by the whole time between the samples, so the connection ran no statement in between
    and so neither ended its transaction nor began another. ``trx_started`` has whole
    seconds only, so two short transactions of a busy connection (a heartbeat, a poll)
    within one second look like one; a loaded machine that pauses such a connection
    mid-transaction for a moment must not count either. InnoDB serves innodb_trx from a
    cache refreshed at most every 0.1 s, so the first sample waits past it.
    """
    sql = (
        "SELECT t.trx_mysql_thread_id, p.time_ms"
        " FROM information_schema.innodb_trx t"
        " JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id"
        " WHERE p.db = DATABASE() AND p.command = 'Sleep'"
        " AND t.trx_mysql_thread_id <> CONNECTION_ID()"
    )
    time.sleep(0.3)
    first = {int(thread): float(idle) for thread, idle in conn.exec_driver_sql(sql)}
    conn.rollback()
    first_done = time.monotonic()
    time.sleep(0.5)
    second_sent = time.monotonic()
    second = {int(thread): float(idle) for thread, idle in conn.exec_driver_sql(sql)}
    # The server read the two processlists at least this far apart; a connection that ran
    # a statement in between shows less idle time than that.
    apart_ms = (second_sent - first_done) * 1000
    return sum(1 for t in first.keys() & second.keys() if second[t] - first[t] >= apart_ms - 20)


def _sqlite_open_transactions(own: Any, database: str | None) -> int:
    """SQLite cannot list its sessions, and in WAL mode a reader blocks nobody, so:

    - every sqlite3 connection of this process (the engine runs here) that is inside a
      transaction, read or write, on the same database file;
    - plus another process's write transaction: taking the write lock without waiting fails.
    """
    import gc
    import os
    import sqlite3

    target = os.path.realpath(database or "")
    found = 0
    for obj in gc.get_objects():
        if not isinstance(obj, sqlite3.Connection) or obj is own:
            continue
        try:
            if not obj.in_transaction:
                continue
            files = [row[2] for row in obj.execute("PRAGMA database_list").fetchall()]
        except sqlite3.Error:
            continue  # closed, or usable only from its own thread: not the store's
        if target in {os.path.realpath(f) for f in files if f}:
            found += 1
    own.execute("PRAGMA busy_timeout=0")
    own.isolation_level = None
    try:
        own.execute("BEGIN IMMEDIATE")
        own.execute("ROLLBACK")
    except sqlite3.OperationalError:
        found += 1
    return found


def item_work(ctx: StepContext) -> Any:
    """A map item: counts per item, fails for items listed in ``fail_items`` until healed."""
    with _lock:
        calls[(ctx.batch, f"{ctx.step}[{ctx.map_index}]")] += 1
        calls[(ctx.batch, ctx.step)] += 1
        running[ctx.batch] = running.get(ctx.batch, 0) + 1
        peak[ctx.batch] = max(peak.get(ctx.batch, 0), running[ctx.batch])
    try:
        if ctx.args.get("sleep"):
            time.sleep(float(ctx.args["sleep"]))
        if ctx.item in ctx.args.get("fail_items", []) and ctx.batch not in healed:
            raise RuntimeError(f"item {ctx.item} failed")
        return {"item": ctx.item, "double": ctx.item * 2 if isinstance(ctx.item, int) else None}
    finally:
        with _lock:
            running[ctx.batch] -= 1


running: dict[str, int] = {}
peak: dict[str, int] = {}
healed: set[str] = set()


def chatty(ctx: StepContext) -> Any:
    """Log through ctx.log and Python logging: ``lines`` lines of ``width`` characters."""
    import logging

    _count(ctx)
    width = int(ctx.args.get("width", 20))
    for n in range(int(ctx.args.get("lines", 1))):
        ctx.log.info("line", n=n, text="x" * width)
    logging.getLogger("chatty.lib").warning("from logging, token %s", ctx.params.get("api_token"))
    if ctx.args.get("fail"):
        raise RuntimeError("chatty failed on purpose")
    return "done"


async def achatty(ctx: StepContext) -> Any:
    """An async runner that logs, yielding between lines so other tasks interleave."""
    import logging

    _count(ctx)
    for n in range(3):
        ctx.log.info("async line", n=n, step=ctx.step)
        logging.getLogger("achatty").warning("record of %s", ctx.step)
        await asyncio.sleep(0.01)
    return "done"


def _gate(ctx: StepContext) -> threading.Event:
    return gates.setdefault(str(ctx.args["gate"]), threading.Event())


def wait_gate(ctx: StepContext) -> Any:
    """Fail the first ``fail_times`` calls; then wait (at most ``wait`` s) for the gate
    ``gate`` to open and report whether it did; with ``fatal`` fail after waiting."""
    n = _count(ctx)
    if n <= int(ctx.args.get("fail_times", 0)):
        raise RuntimeError(f"planned failure {n} of {ctx.step}")
    opened = _gate(ctx).wait(float(ctx.args.get("wait", 20)))
    if ctx.args.get("fatal"):
        raise DoNotRetry(
            f"{ctx.step} failed after the gate {'opened' if opened else 'stayed shut'}"
        )
    return {"opened": opened}


def open_gate(ctx: StepContext) -> Any:
    """Fail the first ``fail_times`` calls; then open the gate ``gate``."""
    n = _count(ctx)
    if n <= int(ctx.args.get("fail_times", 0)):
        raise RuntimeError(f"planned failure {n} of {ctx.step}")
    _gate(ctx).set()
    return {"step": ctx.step, "upstream": sorted(ctx.results)}


def fail_with(ctx: StepContext) -> None:
    """Fail for good with the step's ``message`` (templates resolved: it may carry params)."""
    _count(ctx)
    raise DoNotRetry(str(ctx.args["message"]))


def _unstorable_value(kind: str, args: Any) -> Any:
    if kind == "deep":
        value: list[Any] = []
        for _ in range(100_000):
            value = [value]
        return value
    if kind == "surrogate":
        return {"text": "\ud800"}
    if kind == "nul":
        return "a\x00b"
    if kind == "big":
        return "x" * int(args["bytes"])
    raise ValueError(f"unknown kind {kind!r}")


def unstorable(ctx: StepContext) -> Any:
    """Returns a value no store can keep as is (see ``_unstorable_value``)."""
    _count(ctx)
    if ctx.args["kind"] == "exit":
        raise SystemExit(3)
    return _unstorable_value(ctx.args["kind"], ctx.args)


async def aunstorable(ctx: StepContext) -> Any:
    _count(ctx)
    if ctx.args["kind"] == "exit":
        raise SystemExit(3)
    return _unstorable_value(ctx.args["kind"], ctx.args)


def raises_odd_text(ctx: StepContext) -> None:
    _count(ctx)
    raise RuntimeError("odd \x00 text \udcff here")


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("this exception cannot be shown")


def raises_unprintable(ctx: StepContext) -> None:
    """Raises an exception whose ``str()`` raises (a third-party bug a runner may meet)."""
    _count(ctx)
    raise _Unprintable()


def coded(ctx: StepContext) -> Any:
    """Fail the first ``fail_times`` attempts with a database error carrying ``code``."""
    from stepline.sql import DatabaseError

    n = _count(ctx)
    if n <= int(ctx.args.get("fail_times", 0)):
        code = str(ctx.args["code"])
        raise DatabaseError(f"{code}: planned failure {n} of {ctx.step}", code)
    return {"attempt": ctx.attempt}


def logs_text(ctx: StepContext) -> str:
    """Logs ``text`` through ctx.log; its result is plain ASCII."""
    _count(ctx)
    ctx.log.info(str(ctx.args["text"]))
    return "ok"


def says_weather(ctx: StepContext) -> str:
    """Logs a line through ctx.log (the dashboard and `stepline logs` show it)."""
    _count(ctx)
    ctx.log.info("weather for farm F002 collected")
    return "ok"


def outcomes(ctx: StepContext) -> dict[str, str]:
    """Returns what a final handler sees: each upstream step's status."""
    _count(ctx)
    return dict(ctx.upstream)


def query_connection(ctx: StepContext) -> Any:
    """Runs ``with.sql`` on the named connection ``with.connection`` via ``ctx.connections``."""
    _count(ctx)
    with ctx.connections[ctx.args["connection"]].connect() as conn:
        return conn.exec_driver_sql(ctx.args["sql"]).scalar_one()


barriers: dict[str, threading.Barrier] = {}


def rendezvous(ctx: StepContext) -> str:
    """Waits until ``with.parties`` steps sharing ``with.barrier`` are all inside at once:
    it succeeds only if they run concurrently, however loaded the machine is."""
    _count(ctx)
    with _lock:
        barrier = barriers.setdefault(
            str(ctx.args["barrier"]), threading.Barrier(int(ctx.args["parties"]))
        )
    try:
        barrier.wait(timeout=float(ctx.args.get("patience", 30)))
    except threading.BrokenBarrierError:
        raise DoNotRetry(f"{ctx.step} waited alone: the steps did not run concurrently") from None
    return ctx.step


abarriers: dict[str, asyncio.Barrier] = {}


async def arendezvous(ctx: StepContext) -> dict[str, Any]:
    """:func:`rendezvous` for ``async def`` runners: all of them on one event loop at once."""
    _count(ctx)
    barrier = abarriers.setdefault(
        str(ctx.args["barrier"]), asyncio.Barrier(int(ctx.args["parties"]))
    )
    try:
        await asyncio.wait_for(barrier.wait(), float(ctx.args.get("patience", 30)))
    except TimeoutError:
        raise DoNotRetry(f"{ctx.step} waited alone: the steps did not run concurrently") from None
    return {"step": ctx.step, "async": True}
