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
    """Count write transactions other sessions hold open on the store while this runs."""
    import sqlalchemy as sa

    url = str(ctx.args["url"])
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                # Taking the write lock with no wait fails if anyone holds a transaction.
                raw = conn.connection.driver_connection
                raw.execute("PRAGMA busy_timeout=0")  # type: ignore[union-attr]
                raw.isolation_level = None  # type: ignore[union-attr]
                try:
                    raw.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
                    raw.execute("ROLLBACK")  # type: ignore[union-attr]
                    return {"open_transactions": 0}
                except Exception:
                    return {"open_transactions": 1}
            if engine.dialect.name == "postgresql":
                sql = (
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                    " AND state IN ('idle in transaction', 'idle in transaction (aborted)')"
                )
            else:
                sql = (
                    "SELECT count(*) FROM information_schema.innodb_trx"
                    " WHERE trx_mysql_thread_id <> CONNECTION_ID()"
                )
            return {"open_transactions": int(conn.exec_driver_sql(sql).scalar_one())}
    finally:
        engine.dispose()


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
