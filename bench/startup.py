"""What a user of the command line waits for: start-up, and `stepline run` against the engine.

    python bench/startup.py [--rounds 5]

- ``python -c pass``, ``import typer, rich.console`` (the least a Typer command costs) and
  ``stepline --help``: the start-up every command pays;
- ``stepline run`` of the diamond example, as a whole process, on a new SQLite file (tables
  created) and again on the same file;
- W2 (a fan-out of 500 no-op steps with a join) and W4 (a map of 10,000 items) run by
  ``stepline run`` with its output piped to a file, against the same DAG run in-process by
  the engine alone (as ``bench/overhead.py`` does). The engine's time is the instance's own
  start and finish times in the database; beside it, the same measure of the instance the
  CLI ran, the time the CLI reports ("succeeded in 0.12s") and the whole process, each as a
  ratio to the engine's time. The engine runs in this process, on a store that has run the
  DAG before; ``new/eng`` is the engine alone in a new process (a store, a connection and
  statement caches at their first instance, as the CLI's are), and ``cli/new`` what the CLI
  adds to that.

Rounds alternate the engine and the CLI on the same database; figures are medians.

The subprocesses run as a user's would: without ``PYTHONDONTWRITEBYTECODE`` (removed from
their environment if set, as it is in some development containers), after one warm-up run of
each command so that the ``.pyc`` files of stepline and its dependencies exist. Otherwise
every process would recompile the package's sources, which an installed package never does.
``STEPLINE_BENCH_CMD`` runs another build, e.g.
``env PYTHONPATH=old/src python -c 'from stepline.cli.app import main; main()'``.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from overhead import Workload, fan, mapped, run_once  # noqa: E402

from stepline.stores.sqlalchemy import SqlAlchemyStore  # noqa: E402

STEPLINE = shlex.split(os.environ.get("STEPLINE_BENCH_CMD", shutil.which("stepline") or "stepline"))
# The environment of every subprocess: a user's, whose .pyc files are written and reused.
ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
REPORTED = re.compile(r"^instance \d+ of \S+ succeeded in ([0-9.]+)s", re.M)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``command``; on a loaded machine the CPU time
    moves less than the wall time."""
    start, cpu = time.perf_counter(), children_cpu()
    subprocess.run(command, cwd=cwd, env=ENV, check=True, capture_output=True)
    return time.perf_counter() - start, children_cpu() - cpu


def startup(rounds: int) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds of each start-up command, run in alternation."""
    here = Path(tempfile.mkdtemp())
    example = ROOT / "examples" / "diamond" / "farm_readings.yaml"
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import typer, rich.console": [sys.executable, "-c", "import typer, rich.console"],
        "stepline --help": [*STEPLINE, "--help"],
    }
    walls: dict[str, list[tuple[float, float]]] = {n: [] for n in [*commands, "new", "existing"]}
    # A warm-up run of each command writes the .pyc files the timed rounds then read.
    for command in commands.values():
        timed(command, here)
    warm = [*STEPLINE, "run", str(example), "--db", f"sqlite:///{here}/diamond-warm.db"]
    timed(warm, ROOT)
    for n in range(rounds):
        for name, command in commands.items():
            walls[name].append(timed(command, here))
        run = [*STEPLINE, "run", str(example), "--db", f"sqlite:///{here}/diamond-{n}.db"]
        walls["new"].append(timed(run, ROOT))  # creates the tables
        walls["existing"].append(timed(run, ROOT))
    return {
        name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for name, values in walls.items()
    }


def instance_seconds(store: SqlAlchemyStore, instance_id: int) -> float:
    instance = store.instance(instance_id)
    assert instance.status == "succeeded", instance
    assert instance.started_at is not None and instance.finished_at is not None
    return (instance.finished_at - instance.started_at).total_seconds()


def cli_against_engine(name: str, workload: Workload, rounds: int) -> dict[str, float]:
    """Median seconds: the engine alone, and under `stepline run` (piped) the instance, the
    time the CLI reports and the whole process; and the lines the CLI printed."""
    folder = Path(tempfile.mkdtemp())
    definition = workload.make()
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(definition.to_document()), encoding="utf-8")
    url = f"sqlite:///{folder}/cli.db"
    figures: dict[str, list[float]] = {
        "engine": [], "cli": [], "new": [], "reported": [], "process": []
    }  # fmt: skip
    store = SqlAlchemyStore(url)
    store.initialize()
    lines = 0
    for n in range(rounds):
        # Alternate: the engine alone, then the CLI, on the same database.
        run_once(store, definition)
        figures["engine"].append(instance_seconds(store, 3 * n + 1))
        subprocess.run(
            [sys.executable, __file__, "--engine-once", str(path), url],
            cwd=BENCH,
            env=ENV,
            check=True,
            capture_output=True,
        )
        figures["new"].append(instance_seconds(store, 3 * n + 2))
        start = time.perf_counter()
        done = subprocess.run(
            [*STEPLINE, "run", str(path), "--db", url],
            cwd=BENCH,  # the runners (workloads.py) are imported from here
            # The engine side runs DirectDispatcher(capacity=64) (bench/overhead.py).
            env={**ENV, "STEPLINE_CAPACITY": "64"},
            check=True,
            capture_output=True,
            text=True,
        )
        figures["process"].append(time.perf_counter() - start)
        figures["cli"].append(instance_seconds(store, 3 * n + 3))
        reported = REPORTED.search(done.stdout)
        assert reported is not None, done.stdout[-2000:]
        figures["reported"].append(float(reported.group(1)))
        lines = len(done.stdout.splitlines())
    store.dispose()
    medians = {key: statistics.median(values) for key, values in figures.items()}
    medians["lines"] = lines
    return medians


def engine_once(path: str, url: str) -> None:
    """One instance of the definition file ``path``, run by the engine alone in this process."""
    from stepline.core.loader import parse_definition, read_document

    store = SqlAlchemyStore(url)
    run_once(store, parse_definition(read_document(Path(path))))
    store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--engine-once", nargs=2, metavar=("DEFINITION", "URL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.engine_once:
        engine_once(*args.engine_once)
        return
    print(f"{' '.join(STEPLINE)}; medians of {args.rounds} alternating rounds")
    walls = startup(args.rounds)
    for label, key in (
        ("python -c pass", "python -c pass"),
        ("import typer, rich.console", "import typer, rich.console"),
        ("stepline --help", "stepline --help"),
        ("stepline run diamond (new db)", "new"),
        ("stepline run diamond (existing db)", "existing"),
    ):
        wall, cpu = walls[key]
        print(f"{label:<36}{wall:>8.3f} s wall{cpu:>8.3f} s CPU")
    print()
    header = (
        "", "engine s", "cli s", "cli/eng", "new/eng", "cli/new", "reported/eng", "process s",
        "proc/eng", "lines",
    )  # fmt: skip
    print(f"{header[0]:<6}" + "".join(f"{h:>13}" for h in header[1:]))
    for name, workload in (("W2", fan(500)), ("W4", mapped(10_000))):
        f = cli_against_engine(name, workload, args.rounds)
        engine = f["engine"]
        row = (
            f"{engine:.3f}",
            f"{f['cli']:.3f}",
            f"{f['cli'] / engine:.2f}",
            f"{f['new'] / engine:.2f}",
            f"{f['cli'] / f['new']:.2f}",
            f"{f['reported'] / engine:.2f}",
            f"{f['process']:.3f}",
            f"{f['process'] / engine:.2f}",
            f"{f['lines']:.0f}",
        )
        print(f"{name:<6}" + "".join(f"{v:>13}" for v in row))


if __name__ == "__main__":
    main()
