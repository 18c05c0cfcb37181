"""What a user of the command line waits for: start-up, and `stepline run` against the engine.

    python bench/cli.py [--repeat 5]

- ``python -c pass`` and ``stepline --help``: the start-up every command pays;
- ``stepline run`` of the diamond example, as a whole process, on a new database (tables
  created) and on an existing one;
- W2 (fan-out of 500) and W4 (map of 10,000 items) run by ``stepline run`` with its output
  piped to a file, against the same DAG run in-process by the engine alone (as
  ``bench/overhead.py`` does). Both sides are measured by the instance's own start and
  finish times in the database; the ratio is what the CLI (its progress display) costs.
"""

from __future__ import annotations

import argparse
import os
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

from overhead import fan, mapped, run_once  # noqa: E402

from stepline.stores.sqlalchemy import SqlAlchemyStore  # noqa: E402

# STEPLINE_BENCH_CMD runs another build, e.g. "env PYTHONPATH=old/src python -c '...'".
STEPLINE = shlex.split(os.environ.get("STEPLINE_BENCH_CMD", shutil.which("stepline") or "stepline"))


def timed(command: list[str], cwd: Path, repeat: int) -> float:
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, cwd=cwd, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def instance_seconds(store: SqlAlchemyStore, instance_id: int) -> float:
    instance = store.instance(instance_id)
    assert instance.status == "succeeded", instance
    assert instance.started_at is not None and instance.finished_at is not None
    return (instance.finished_at - instance.started_at).total_seconds()


def diamond(repeat: int) -> tuple[float, float]:
    example = ROOT / "examples" / "diamond" / "farm_readings.yaml"
    fresh, again = [], []
    for _ in range(repeat):
        folder = Path(tempfile.mkdtemp())
        command = [*STEPLINE, "run", str(example), "--db", f"sqlite:///{folder}/d.db"]
        fresh.append(timed(command, ROOT, 1))
        again.append(timed(command, ROOT, 1))
    return statistics.median(fresh), statistics.median(again)


def cli_against_engine(name: str, make: object, repeat: int) -> tuple[float, float, float]:
    """Median instance seconds under `stepline run` (piped), in-process, and the whole
    `stepline run` process."""
    folder = Path(tempfile.mkdtemp())
    definition = make.make()  # type: ignore[attr-defined]
    document = definition.to_document()
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    url = f"sqlite:///{folder}/cli.db"
    cli, engine, whole = [], [], []
    store = SqlAlchemyStore(url)
    store.initialize()
    for n in range(repeat):
        # Alternate: the engine alone, then the CLI, on the same database.
        run_once(store, definition)
        engine.append(instance_seconds(store, 2 * n + 1))
        start = time.perf_counter()
        with (folder / "out.txt").open("w") as sink:
            subprocess.run(
                [*STEPLINE, "run", str(folder / f"{name}.yaml"), "--db", url],
                cwd=BENCH,
                check=True,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        whole.append(time.perf_counter() - start)
        cli.append(instance_seconds(store, 2 * n + 2))
    lines = len((folder / "out.txt").read_text(encoding="utf-8").splitlines())
    store.dispose()
    print(f"  ({name}: the last `stepline run` printed {lines} lines)")
    return statistics.median(cli), statistics.median(engine), statistics.median(whole)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    here = Path(tempfile.mkdtemp())
    python = timed([sys.executable, "-c", "pass"], here, args.repeat)
    helped = timed([*STEPLINE, "--help"], here, args.repeat)
    print(f"{'python -c pass':<34}{python:>8.3f} s")
    print(f"{'stepline --help':<34}{helped:>8.3f} s")
    fresh, again = diamond(args.repeat)
    print(f"{'stepline run diamond (new db)':<34}{fresh:>8.3f} s")
    print(f"{'stepline run diamond (existing db)':<34}{again:>8.3f} s")
    print(f"{'':<10}{'cli s':>9}{'engine s':>10}{'cli/engine':>12}{'process s':>11}")
    for name, make in (("W2", fan(500)), ("W4", mapped(10_000))):
        cli, engine, whole = cli_against_engine(name, make, args.repeat)
        print(f"{name:<10}{cli:>9.3f}{engine:>10.3f}{cli / engine:>12.2f}{whole:>11.3f}")


if __name__ == "__main__":
    main()
