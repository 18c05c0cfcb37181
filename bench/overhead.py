"""Orchestration overhead per step, on SQLite and PostgreSQL, beside the raw-driver floor.

    python bench/overhead.py [--db sqlite] [--db postgresql://postgres@127.0.0.1/test]
    python bench/overhead.py --scaling          # per-step cost as the DAG grows
    python bench/overhead.py --serve-logging 2>/dev/null   # with serve's logging (JSON lines)
    python bench/overhead.py --only map:50000   # one workload (peak MB is then its own)

W1: a chain of 100 no-op steps.  W2: one step fanning out to 500 no-op steps joined by one
step that reads all 500 results.  W3: two parallel 0.2 s steps, a join, a final step.
W4: a map of 10,000 no-op items with concurrency 50 (steps = items).
``--scaling`` runs chains of 100, 1,000 and 3,000 steps, fan-outs of 500 and 5,000 and maps
of 5,000 and 50,000 items, and prints each one's cost per step as a multiple of the floor
(``bench/floor.py``) and of the smallest size of its shape (1.00 = linear growth).

Overhead per step = (wall - the sleeping a perfect scheduler cannot avoid) / steps.
The instance is created before the clock starts; the clock stops when it is final.
Rounds alternate: each round measures the floor, then every workload once; the figures
are medians over rounds, so a noisy neighbour slows the floor and the engine alike.
``x floor`` is the cost per step as a multiple of the floor's, in wall time and in CPU
time (all of this process's threads; PostgreSQL's own CPU is not in it).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from floor import PG_DEFAULT, floor

from stepline.core.definition import BatchDefinition, batch, step
from stepline.dispatchers.direct import DirectDispatcher
from stepline.engine.orchestrator import Orchestrator
from stepline.stores.sqlalchemy import SqlAlchemyStore

W = "workloads:"


@dataclass(frozen=True)
class Workload:
    name: str
    make: Callable[[], BatchDefinition]
    steps: int
    sleeping: float = 0.0  # seconds no scheduler can avoid


def chain(n: int) -> Workload:
    def make() -> BatchDefinition:
        steps = [step(f"s{i}", W + "noop", [f"s{i + 1}"] if i < n - 1 else []) for i in range(n)]
        return batch(f"chain-{n}", steps)

    return Workload(f"chain:{n}", make, n)


def fan(n: int) -> Workload:
    def make() -> BatchDefinition:
        keys = [f"f{i}" for i in range(n)]
        steps = [step("root", W + "noop", keys)]
        steps += [step(k, W + "noop", ["join"]) for k in keys]
        steps.append(step("join", W + "count_results"))
        return batch(f"fan-{n}", steps)

    return Workload(f"fan:{n}", make, n + 2)


def mapped(n: int) -> Workload:
    def make() -> BatchDefinition:
        steps = [
            step("list", W + "numbers", ["each"], **{"with": {"n": n}}),
            step("each", W + "noop", map={"over": "list", "concurrency": 50}),
        ]
        return batch(f"map-{n}", steps)

    return Workload(f"map:{n}", make, n)


def sleepy() -> Workload:
    def make() -> BatchDefinition:
        steps = [
            step("a", W + "sleep_02", ["join"]),
            step("b", W + "sleep_02", ["join"]),
            step("join", W + "noop", ["final"]),
            step("final", W + "noop"),
        ]
        return batch("w3-sleep", steps)

    return Workload("W3", make, 4, sleeping=0.2)


CLASSIC = {
    "W1": chain(100),
    "W2": fan(500),
    "W3": sleepy(),
    "W4": mapped(10_000),
}
SCALING = [chain(100), chain(1000), chain(3000), fan(500), fan(5000), mapped(5000), mapped(50_000)]


SQLITE_SYNC = "NORMAL"
"""Stepline's setting; ``--sqlite-sync FULL`` measures what fsync at every commit costs."""


def fresh_store(url: str) -> SqlAlchemyStore:
    if url == "sqlite":
        path = Path(tempfile.mkdtemp()) / "bench.db"
        url = f"sqlite:///{path}"
    store = SqlAlchemyStore(url)
    if store.dialect == "sqlite" and SQLITE_SYNC != "NORMAL":
        from sqlalchemy import event

        @event.listens_for(store.engine, "connect")
        def _sync(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA synchronous={SQLITE_SYNC}")

    if store.dialect != "sqlite":
        from stepline.stores.schema import metadata

        metadata.drop_all(store.engine)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS stepline_alembic_version")
    store.initialize()
    return store


def run_once(store: SqlAlchemyStore, definition: BatchDefinition) -> float:
    """Wall seconds of one instance, from its first advance to its final state."""
    return run_timed(store, definition)[0]


def run_timed(store: SqlAlchemyStore, definition: BatchDefinition) -> tuple[float, float]:
    """Wall and CPU seconds (all of this process's threads) of one instance."""
    stored = store.apply(definition)
    orchestrator = Orchestrator(store, DirectDispatcher(capacity=64, load=store.results_for))
    instance = orchestrator.start(stored, {})
    gc.collect()
    cpu = time.process_time()
    start = time.perf_counter()
    final = orchestrator.run(instance.id)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    assert final.status == "succeeded", final
    orchestrator.close()
    return wall, cpu


def label_of(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else url.split(":", 1)[0].split("+")[0]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def classic(urls: list[str], only: str | None, repeat: int) -> None:
    """Each workload's median over ``repeat`` rounds; each round measures the floor too,
    so ``x floor`` compares figures taken side by side (CPU too: this process's threads)."""
    chosen = [w for n, w in CLASSIC.items() if only in (None, n)]
    if only and not chosen:
        chosen = [_parse(only)]
    print(
        f"{'db':<12}{'workload':<12}{'steps':>7}{'wall s':>9}{'ms/step':>9}{'x floor':>9}"
        f"{'cpu ms/step':>13}{'x floor':>9}{'peak MB':>9}"
    )
    for url in urls:
        base, base_cpu, runs = alternate(url, chosen, repeat)
        label = label_of(url)
        print(f"{label:<12}{'floor':<12}{1000:>7}{'':>9}{base:>9.3f}{1:>9.2f}{base_cpu:>13.3f}")
        for w in chosen:
            wall = statistics.median(t[0] for t in runs[w.name])
            cpu = statistics.median(t[1] for t in runs[w.name]) / w.steps * 1000
            per_step = (wall - w.sleeping) / w.steps * 1000
            print(
                f"{label:<12}{w.name:<12}{w.steps:>7}{wall:>9.3f}{per_step:>9.3f}"
                f"{per_step / base:>9.2f}{cpu:>13.3f}{cpu / base_cpu:>9.2f}{peak_mb():>9.0f}"
            )


def alternate(
    url: str, workloads: Sequence[Workload], rounds: int
) -> tuple[float, float, dict[str, list[tuple[float, float]]]]:
    """Rounds of the floor, then each workload once: the floor's median ms per step (wall,
    CPU) and each workload's (wall s, CPU s) per round."""
    store = fresh_store(url)
    definitions = [(w, w.make()) for w in workloads]
    floors: list[tuple[float, float]] = []
    runs: dict[str, list[tuple[float, float]]] = {w.name: [] for w in workloads}
    for _ in range(rounds):
        cpu = time.process_time()
        per_step = floor(url, synchronous=SQLITE_SYNC)
        floors.append((per_step, (time.process_time() - cpu) / 1000))
        for w, definition in definitions:
            runs[w.name].append(run_timed(store, definition))
    store.dispose()
    base = statistics.median(f[0] for f in floors) * 1000
    base_cpu = statistics.median(f[1] for f in floors) * 1000
    return base, base_cpu, runs


def scaling(urls: list[str], rounds: int) -> None:
    """Per-step cost by size, in alternating rounds, beside the floor.

    CPU ms/step (this process, all threads) is printed too: on a busy machine it moves
    less than wall time. PostgreSQL's own CPU is not in it."""
    print(
        f"{'db':<12}{'workload':<12}{'steps':>7}{'wall s':>9}{'ms/step':>9}"
        f"{'x floor':>9}{'x smallest':>12}{'cpu ms/step':>13}"
    )
    for url in urls:
        base, base_cpu, walls = alternate(url, SCALING, rounds)
        label = label_of(url)
        print(
            f"{label:<12}{'floor':<12}{1000:>7}{'':>9}{base:>9.3f}{1:>9.2f}{'':>12}"
            f"{base_cpu:>13.3f}"
        )
        smallest: dict[str, float] = {}
        for w in SCALING:
            wall = statistics.median(t[0] for t in walls[w.name])
            cpu = statistics.median(t[1] for t in walls[w.name]) / w.steps * 1000
            per_step = wall / w.steps * 1000
            shape = w.name.split(":")[0]
            smallest.setdefault(shape, per_step)
            print(
                f"{label:<12}{w.name:<12}{w.steps:>7}{wall:>9.3f}{per_step:>9.3f}"
                f"{per_step / base:>9.2f}{per_step / smallest[shape]:>12.2f}{cpu:>13.3f}"
            )


def _parse(name: str) -> Workload:
    shape, _, size = name.partition(":")
    makers = {"chain": chain, "fan": fan, "map": mapped}
    if shape not in makers or not size.isdigit():
        raise SystemExit(f"--only {name!r}: use W1..W4, chain:N, fan:N or map:N")
    return makers[shape](int(size))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", action="append", help="sqlite, or a database URL")
    parser.add_argument("--repeat", type=int, default=5, help="runs (rounds with --scaling)")
    parser.add_argument("--only", help="one workload: W1..W4, chain:N, fan:N or map:N")
    parser.add_argument("--scaling", action="store_true", help="the per-step cost by size")
    parser.add_argument("--sqlite-sync", default="NORMAL", choices=["NORMAL", "FULL"])
    parser.add_argument(
        "--serve-logging",
        action="store_true",
        help="log as `serve` does (a JSON line per step attempt, on stderr)",
    )
    args = parser.parse_args()
    if args.serve_logging:
        from stepline.logs import configure_logging
        from stepline.settings import Settings

        configure_logging("info", "json", Settings().secrets, outcome_lines=True)
    global SQLITE_SYNC
    SQLITE_SYNC = args.sqlite_sync
    urls = args.db or ["sqlite", os.environ.get("STEPLINE_BENCH_PG", PG_DEFAULT)]
    if args.scaling:
        scaling(urls, args.repeat)
    else:
        classic(urls, args.only, args.repeat)


if __name__ == "__main__":
    main()
