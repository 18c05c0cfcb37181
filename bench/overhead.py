"""Orchestration overhead per step: wall time of W1-W3 on SQLite and PostgreSQL.

    python bench/overhead.py [--db sqlite] [--db postgresql+psycopg://postgres@127.0.0.1/test]
    python bench/overhead.py --serve-logging 2>/dev/null   # with serve's logging (JSON lines)

W1: a chain of 100 no-op steps.  W2: one step fanning out to 500 no-op steps joined by one
step that reads all 500 results.  W3: two parallel 0.2 s steps, a join, a final step.
W4: a map of 10,000 no-op items with concurrency 50 (steps = items).
Overhead per step = (wall - the sleeping a perfect scheduler cannot avoid) / steps.
The instance is created before the clock starts; the clock stops when it is final.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from stepline.core.definition import BatchDefinition, batch, step
from stepline.dispatchers.direct import DirectDispatcher
from stepline.engine.orchestrator import Orchestrator
from stepline.stores.sqlalchemy import SqlAlchemyStore

W = "workloads:"


def w1() -> tuple[BatchDefinition, float]:
    steps = [step(f"s{i}", W + "noop", [f"s{i + 1}"] if i < 99 else []) for i in range(100)]
    return batch("w1-chain", steps), 0.0


def w2() -> tuple[BatchDefinition, float]:
    fan = [f"f{i}" for i in range(500)]
    steps = [step("root", W + "noop", fan)]
    steps += [step(k, W + "noop", ["join"]) for k in fan]
    steps.append(step("join", W + "count_results"))
    return batch("w2-fan", steps), 0.0


def w3() -> tuple[BatchDefinition, float]:
    steps = [
        step("a", W + "sleep_02", ["join"]),
        step("b", W + "sleep_02", ["join"]),
        step("join", W + "noop", ["final"]),
        step("final", W + "noop"),
    ]
    return batch("w3-sleep", steps), 0.2


def w4() -> tuple[BatchDefinition, float]:
    steps = [
        step("list", W + "ten_thousand", ["each"]),
        step("each", W + "noop", map={"over": "list", "concurrency": 50}),
    ]
    return batch("w4-map", steps), 0.0


def fresh_store(url: str) -> SqlAlchemyStore:
    if url == "sqlite":
        path = Path(tempfile.mkdtemp()) / "bench.db"
        url = f"sqlite:///{path}"
    store = SqlAlchemyStore(url)
    if store.dialect != "sqlite":
        from stepline.stores.schema import metadata

        metadata.drop_all(store.engine)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    store.initialize()
    return store


def measure(store: SqlAlchemyStore, make: object, repeat: int) -> tuple[float, float, int]:
    definition, floor = make()  # type: ignore[operator]
    stored = store.apply(definition)
    walls = []
    for _ in range(repeat):
        orchestrator = Orchestrator(store, DirectDispatcher(capacity=64, load=store.results_for))
        instance = orchestrator.start(stored, {})
        start = time.perf_counter()
        final = orchestrator.run(instance.id)
        walls.append(time.perf_counter() - start)
        assert final.status == "succeeded", final
        orchestrator.close()
    wall = statistics.median(walls)
    steps = len(definition.steps) if make is not w4 else 10_000
    return wall, (wall - floor) / steps * 1000, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", action="append", help="sqlite, or a database URL")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", help="run one workload, e.g. W4 (peak MB is then its own)")
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
    dbs = args.db or [
        "sqlite",
        os.environ.get("STEPLINE_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    ]
    print(
        f"{'db':<12}{'workload':<10}{'steps':>6}{'wall s':>10}{'overhead ms/step':>18}"
        f"{'peak MB':>10}"
    )
    for url in dbs:
        store = fresh_store(url)
        label = store.dialect
        for name, make in (("W1", w1), ("W2", w2), ("W3", w3), ("W4", w4)):
            if args.only and name != args.only:
                continue
            wall, per_step, steps = measure(store, make, args.repeat)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{label:<12}{name:<10}{steps:>6}{wall:>10.3f}{per_step:>18.3f}{peak:>10.0f}")
        store.dispose()


if __name__ == "__main__":
    main()
