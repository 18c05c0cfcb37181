"""Round trips to PostgreSQL per step, counted from libpq's protocol trace.

    python bench/roundtrips.py [--db postgresql://postgres@127.0.0.1:5432/test] [--show]

Runs a workload (``--only``: chain:N, fan:N or map:N, as in overhead.py) at two sizes in a
scratch database it creates and drops, with every connection's client/server messages
traced (``PQtrace``). A round trip is a run of messages the client sends followed by the
server's answers; the figure per step is the difference between the two sizes divided by
the difference in steps, so the instance's start and end do not count (a chain's figure is
exact; a fan-out's or a map's depends on how outcomes bunch into bursts). ``--show`` prints
the round trips of one transaction in the middle of the larger run, statement by statement.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).parent))
from floor import PG_DEFAULT
from overhead import _parse, run_once

from stepline.stores.sqlalchemy import SqlAlchemyStore

_SENT = re.compile(r'^F\t\d+\t(Query|Parse|Bind)\t "([^"]*)"(?: "([^"]*)")?')


def _rounds(path: Path) -> list[list[str]]:
    """The trace as round trips: each the list of statements the client sent in it."""
    rounds: list[list[str]] = []
    prepared: dict[str, str] = {}
    sending = False
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("F\t"):
            if not sending:
                rounds.append([])
                sending = True
            match = _SENT.match(line)
            if match is None:
                continue
            kind, first, second = match.groups()
            if kind == "Query":
                rounds[-1].append(first)
            elif kind == "Parse":
                prepared[first] = second or ""
                if first:
                    rounds[-1].append(f"(prepare) {second}")
            elif second is not None:  # Bind: portal, then statement name
                rounds[-1].append(prepared.get(second, second))
        elif line.startswith("B\t"):
            sending = False
    return [r for r in rounds if r]


def traced_run(url: str, workload: str, folder: Path) -> list[list[list[str]]]:
    """Run ``workload`` once in a fresh store; the round trips of each connection."""
    store = SqlAlchemyStore(url)
    files: list[tuple[Path, Any]] = []
    traced: dict[int, Any] = {}

    @event.listens_for(store.engine, "connect")
    def _trace(dbapi_conn: Any, _record: Any) -> None:
        path = folder / f"conn-{uuid.uuid4().hex[:8]}.trace"
        handle = open(path, "w")  # noqa: SIM115 (closed after the run)
        files.append((path, handle))
        dbapi_conn.pgconn.trace(handle.fileno())
        dbapi_conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        traced[id(dbapi_conn)] = dbapi_conn

    def _untrace(dbapi_conn: Any) -> None:
        if traced.pop(id(dbapi_conn), None) is not None:
            dbapi_conn.pgconn.untrace()  # flushes libpq's stream

    event.listen(store.engine, "close", lambda c, _r: _untrace(c))
    event.listen(store.engine, "close_detached", _untrace)
    store.initialize()
    run_once(store, _parse(workload).make())
    for conn in list(traced.values()):
        _untrace(conn)
    store.dispose()
    out = []
    for path, handle in files:
        handle.close()
        out.append(_rounds(path))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", default=PG_DEFAULT, help="a PostgreSQL URL (a server)")
    parser.add_argument("--only", default="chain:100", help="chain:N, fan:N or map:N")
    parser.add_argument("--show", action="store_true", help="one transaction's round trips")
    args = parser.parse_args()
    shape, _, size = args.only.partition(":")
    small, large = int(size), int(size) * 2
    admin = sa.create_engine(
        args.db.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
    )
    name = f"stepline_rt_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = args.db.rsplit("/", 1)[0] + "/" + name
    try:
        with tempfile.TemporaryDirectory() as folder:
            counts = []
            for n in (small, large):
                run = traced_run(url, f"{shape}:{n}", Path(folder))
                counts.append(sum(len(c) for c in run))
                if args.show and n == large:
                    busiest = max(run, key=len)
                    middle = len(busiest) // 2
                    for i, sent in enumerate(busiest[middle : middle + 12]):
                        shown = [
                            f"{s[:70]}" + (f" (x{sent.count(s)})" if sent.count(s) > 1 else "")
                            for s in dict.fromkeys(sent)
                        ]
                        print(f"  {i + 1:>2}. " + " | ".join(shown))
        steps = _parse(f"{shape}:{large}").steps - _parse(f"{shape}:{small}").steps
        print(f"{args.only} and {shape}:{large}: {counts[0]} and {counts[1]} round trips")
        print(f"round trips per step: {(counts[1] - counts[0]) / steps:.2f}")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


if __name__ == "__main__":
    main()
