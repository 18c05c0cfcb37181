"""The floor: the least a durable step can cost with the raw driver, no orchestrator.

    python bench/floor.py [--db sqlite] [--db postgresql://postgres@127.0.0.1:5432/test]

A chain of no-op steps, each made durable the way any orchestrator that stores results
must: one transaction per step that records the finished step's result and starts the
next one (two single-row UPDATEs by primary key, then COMMIT), with the runner handed to
a pre-started pool thread and its JSON-encoded result handed back to the driver thread.
Nothing else: no DAG, no fences, no retries, no locking of an instance row.

SQLite runs with the settings Stepline uses (WAL, ``synchronous=NORMAL``, ``BEGIN
IMMEDIATE``); PostgreSQL with psycopg 3 in its default transaction mode (a BEGIN, the two
UPDATEs and the COMMIT are four round trips).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_TABLE = (
    "CREATE TABLE floor_step (id INTEGER PRIMARY KEY, status VARCHAR(16) NOT NULL,"
    " result_payload TEXT, started_at TIMESTAMP, finished_at TIMESTAMP)"
)
_RECORD = "UPDATE floor_step SET status = 'succeeded', result_payload = {p}, finished_at = {p}"
_RECORD += " WHERE id = {p}"
_START = "UPDATE floor_step SET status = 'running', started_at = {p} WHERE id = {p}"

PG_DEFAULT = os.environ.get("STEPLINE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _noop() -> None:
    return None


class _Pool:
    """One pre-started runner thread: the cheapest hand-off there is (two queues)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            self.done.put(json.dumps(job(), separators=(",", ":")))

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()


def _connect(
    url: str, synchronous: str = "NORMAL"
) -> tuple[Any, str, Callable[[Any], None], Callable[[Any], None]]:
    """A raw DBAPI connection, its parameter marker, and begin/commit functions."""
    if url == "sqlite" or url.startswith("sqlite:"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        path = path or str(Path(tempfile.mkdtemp()) / "floor.db")
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("DROP TABLE IF EXISTS floor_step")
        conn.execute(_TABLE)
        return conn, "?", lambda c: c.execute("BEGIN IMMEDIATE"), lambda c: c.execute("COMMIT")
    import psycopg

    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    conn.execute("DROP TABLE IF EXISTS floor_step")
    conn.execute(_TABLE)
    conn.commit()
    return conn, "%s", lambda c: None, lambda c: c.commit()


def floor(url: str, steps: int = 1000, *, synchronous: str = "NORMAL") -> float:
    """Seconds per durable step of a chain of ``steps`` no-op steps."""
    conn, p, begin, commit = _connect(url, synchronous)
    record, start = _RECORD.format(p=p), _START.format(p=p)
    begin(conn)
    cur = conn.cursor()
    cur.executemany(
        f"INSERT INTO floor_step (id, status) VALUES ({p}, 'pending')",
        [(i,) for i in range(steps)],
    )
    cur.execute(start, (datetime.now(UTC), 0))
    commit(conn)
    pool = _Pool()
    begun = time.perf_counter()
    pool.jobs.put(_noop)
    for i in range(steps):
        payload = pool.done.get()
        now = datetime.now(UTC)
        begin(conn)
        cur.execute(record, (payload, now, i))
        if i + 1 < steps:
            cur.execute(start, (now, i + 1))
        commit(conn)
        if i + 1 < steps:
            pool.jobs.put(_noop)
    elapsed = time.perf_counter() - begun
    pool.close()
    conn.close()
    return elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", action="append", help="sqlite, or a PostgreSQL URL")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sqlite-sync", default="NORMAL", choices=["NORMAL", "FULL"])
    args = parser.parse_args()
    print(f"{'db':<12}{'steps':>6}{'floor ms/step':>16}")
    for url in args.db or ["sqlite", PG_DEFAULT]:
        per_step = statistics.median(
            floor(url, args.steps, synchronous=args.sqlite_sync) for _ in range(args.repeat)
        )
        label = "sqlite" if url.startswith("sqlite") else url.split(":", 1)[0].split("+")[0]
        print(f"{label:<12}{args.steps:>6}{per_step * 1000:>16.3f}")


if __name__ == "__main__":
    main()
