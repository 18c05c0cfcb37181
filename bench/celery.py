"""Stepline on Celery against raw Celery, on the same broker, in one run.

    python bench/celery.py [--broker redis://127.0.0.1:6379/12] [--processes 1 2]
        [--pg postgresql+psycopg://postgres@127.0.0.1:5432] [--steps 2000] [--rounds 3]

Fan-out: one root step, ``--steps`` no-op steps, one join step reading nothing; every step
is claimed, picked up, recorded and advanced in PostgreSQL. The worker that runs the root
sends the fan-out several steps to a message (see CeleryDispatcher.parcels); the row
"a message per step" runs the same fan-out with a timeout on each step, which makes each
travel alone, as every step did before. Raw: the same number of no-op Celery tasks
(acks_late, prefetch 1, no result backend, like Stepline's). Both run on a
worker of N prefork processes; both workers are up together (each on a queue of its own)
and the two measures alternate, ``--rounds`` times, so a noisy machine weighs on both
alike; the table shows medians. The clock runs from the first message (for Stepline: the
trigger) until the last task has run (the instance is final).
W3: two parallel 0.2 s steps, a join, a final step, on 2 processes: trigger to final as
the waiting owner sees it, and as stored (``finished_at - created_at``).
Below each row, where the CPU went (Linux ``/proc``; medians, ms of CPU per step): the
worker's main process (Celery's consumer) and its pool processes, the database server, the
broker, and this process (the sender of raw tasks; Stepline's owner). On a machine whose
cores are all busy, throughput follows the sum.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This file is named celery.py: its folder must not shadow the celery package, here or in
# the workers, so the runner modules are copied to a folder of their own.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
RUNNERS = Path(tempfile.mkdtemp(prefix="stepline-bench-"))
for module in ("workloads.py", "raw_celery.py"):
    shutil.copy(HERE / module, RUNNERS / module)
sys.path.insert(0, str(RUNNERS))

import sqlalchemy as sa  # noqa: E402

from stepline.core.definition import batch, step  # noqa: E402
from stepline.service import Stepline  # noqa: E402
from stepline.settings import Settings  # noqa: E402
from stepline.stores.sqlalchemy import SqlAlchemyStore  # noqa: E402

W = "workloads:"


def start_worker(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            args, cwd=RUNNERS, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_until(ready: object, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while not ready():  # type: ignore[operator]
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text(errors="replace")[-3000:])
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Raw:
    """A raw Celery worker of N processes, up for several measures."""

    def __init__(self, broker: str, processes: int, tmp: Path) -> None:
        self.queue = f"raw-{uuid.uuid4().hex[:8]}"
        self.done = tmp / f"raw-{processes}.done"
        self.done.write_bytes(b"")
        env = {
            **os.environ,
            "RAW_CELERY_BROKER": broker,
            "RAW_CELERY_QUEUE": self.queue,
            "RAW_CELERY_DONE": str(self.done),
        }
        self.log = tmp / f"raw-{processes}.log"
        self.worker = start_worker(
            [sys.executable, "-m", "celery", "-A", "raw_celery", "worker", "-c", str(processes),
             "-P", "prefork", "-Q", self.queue, "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-l", "WARNING"],
            env, self.log,
        )  # fmt: skip
        os.environ.update(env)
        import raw_celery

        self.app = raw_celery.app
        self.task = raw_celery.app.tasks["raw.noop"]
        for _ in range(processes):  # warm-up: every process has run a task
            self.task.apply_async(queue=self.queue)
        wait_until(lambda: self.done.stat().st_size >= processes, self.worker, self.log)

    def measure(self, tasks: int) -> float:
        self.done.write_bytes(b"")
        start = time.perf_counter()
        with self.app.producer_or_acquire() as producer:
            for _ in range(tasks):
                self.task.apply_async(producer=producer, queue=self.queue)
        while self.done.stat().st_size < tasks:
            time.sleep(0.005)
        return time.perf_counter() - start

    def stop(self) -> None:
        stop(self.worker)


TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU of these processes (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def pids_of(pattern: str, parent: int | None = None) -> list[int]:
    args = ["pgrep", "-P", str(parent)] if parent is not None else ["pgrep", "-f", pattern]
    found = subprocess.run(args, capture_output=True, text=True, check=False).stdout
    return [int(p) for p in found.split()]


class CpuMeter:
    """CPU per role while one measure runs: the worker's consumer, its pool processes, the
    database server, the broker and this process."""

    def __init__(self, worker: subprocess.Popen[bytes], broker: str) -> None:
        self.roles = {
            "consumer": [worker.pid],
            "pool": pids_of("", parent=worker.pid),
            "database": pids_of("postgres"),
            "broker": pids_of("redis-server" if broker.startswith("redis") else "beam.smp"),
            "bench": [os.getpid()],
        }
        self.samples: dict[str, list[float]] = {role: [] for role in self.roles}

    def measure(self, fn: object, steps: int) -> float:
        before = {role: cpu_seconds(p) for role, p in self.roles.items()}
        wall = fn()  # type: ignore[operator]
        for role, pids in self.roles.items():
            self.samples[role].append((cpu_seconds(pids) - before[role]) * 1000 / steps)
        return float(wall)

    def line(self) -> str:
        parts = [f"{r} {statistics.median(v):.2f}" for r, v in self.samples.items() if v]
        total = sum(statistics.median(v) for v in self.samples.values() if v)
        return f"cpu ms/step: {', '.join(parts)}; total {total:.2f}"


def fresh_database(server: str) -> str:
    name = f"stepline_bench_celery_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return f"{server}/{name}"


def drop_database(server: str, url: str) -> None:
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    admin.dispose()


def stepline_worker(
    settings: Settings, db: str, processes: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    env.update(
        STEPLINE_DB=db,
        STEPLINE_BROKER_URL=settings.broker(),
        STEPLINE_QUEUE=settings.queue,
        STEPLINE_LOG_LEVEL="warning",
        PYTHONPATH=str(RUNNERS),
    )
    stepline = Path(sys.executable).parent / "stepline"
    store = SqlAlchemyStore(db)
    before = {w[0] for w in store.workers()}
    worker = start_worker([str(stepline), "worker", "--concurrency", str(processes)], env, log)
    try:
        wait_until(lambda: len({w[0] for w in store.workers()} - before) >= processes, worker, log)
    finally:
        store.dispose()
    time.sleep(0.5)
    return worker


def fan_out(app: Stepline, steps: int, alone: bool = False) -> tuple[float, int]:
    keys = [f"f{i}" for i in range(steps)]
    timeout = 600 if alone else None  # a step with a timeout goes in a message of its own
    definition = batch(
        f"fan-{uuid.uuid4().hex[:6]}",
        [step("root", W + "noop", keys),
         *(step(k, W + "noop", ["join"], timeout=timeout) for k in keys),
         step("join", W + "noop")],
    )  # fmt: skip
    stored = app.apply(definition)
    instance, _ = app.trigger(stored.name, owned=True)
    start = time.perf_counter()
    final = app.orchestrator.run(instance.id, timeout=600)
    wall = time.perf_counter() - start
    assert final.status == "succeeded", final
    return wall, steps + 2


def fan_steps(app: Stepline, steps: int, alone: bool = False) -> float:
    return fan_out(app, steps, alone)[0]


def w3(app: Stepline, repeat: int) -> tuple[float, float]:
    stored = app.apply(
        batch(
            f"w3-{uuid.uuid4().hex[:6]}",
            [step("a", W + "sleep_02", ["join"]), step("b", W + "sleep_02", ["join"]),
             step("join", W + "noop", ["final"]), step("final", W + "noop")],
        )
    )  # fmt: skip
    seen, stored_walls = [], []
    for _ in range(repeat):
        instance, _ = app.trigger(stored.name, owned=True)
        start = time.perf_counter()
        final = app.orchestrator.run(instance.id, timeout=60)
        seen.append(time.perf_counter() - start)
        assert final.status == "succeeded" and final.finished_at is not None
        stored_walls.append((final.finished_at - final.created_at).total_seconds())
    return statistics.median(seen), statistics.median(stored_walls)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--broker", default=os.environ.get("STEPLINE_BENCH_BROKER", "redis://127.0.0.1:6379/12")
    )
    parser.add_argument(
        "--pg",
        default=os.environ.get(
            "STEPLINE_BENCH_PG_SERVER", "postgresql+psycopg://postgres@127.0.0.1:5432"
        ),
    )
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating measures (median)")
    parser.add_argument("--repeat", type=int, default=5, help="W3 runs (median)")
    args = parser.parse_args()
    tmp = RUNNERS
    db = fresh_database(args.pg)
    store = SqlAlchemyStore(db)
    store.initialize()
    store.dispose()
    print(f"broker {args.broker.split('://')[0]}, PostgreSQL, {args.steps} no-op steps")
    print(
        f"{'processes':>9}  {'raw celery s':>12}  {'tasks/s':>8}  {'stepline s':>10}"
        f"  {'steps/s':>8}  {'ratio':>6}"
    )
    try:
        for processes in args.processes:
            settings = Settings(
                dispatcher="celery", broker_url=args.broker, queue=f"bench-{uuid.uuid4().hex[:8]}"
            )  # type: ignore[arg-type]
            raw = Raw(args.broker, processes, tmp)
            worker = stepline_worker(settings, db, processes, tmp / f"stepline-{processes}.log")
            raw_walls, walls, alone_walls = [], [], []
            raw_cpu, cpu = CpuMeter(raw.worker, args.broker), CpuMeter(worker, args.broker)
            alone_cpu = CpuMeter(worker, args.broker)
            steps = args.steps + 2
            try:
                with Stepline(settings, db=db) as app:
                    fan_out(app, processes * 2)  # warm-up: every process has run a step
                    for _ in range(args.rounds):
                        raw_run = partial(raw.measure, args.steps)
                        raw_walls.append(raw_cpu.measure(raw_run, args.steps))
                        walls.append(cpu.measure(partial(fan_steps, app, args.steps), steps))
                        rows = app.store.step_results(app.store.instances(limit=1)[0].id)
                        assert len(rows) == steps and all(r.status == "succeeded" for r in rows)
                        alone = partial(fan_steps, app, args.steps, True)
                        alone_walls.append(alone_cpu.measure(alone, steps))
                    w3_seen, w3_stored = w3(app, args.repeat) if processes >= 2 else (None, None)
            finally:
                stop(worker)
                raw.stop()
            raw_wall, wall = statistics.median(raw_walls), statistics.median(walls)
            raw_rate, rate = args.steps / raw_wall, steps / wall
            pairs = zip(raw_walls, walls, strict=True)
            ratios = " ".join(f"{(steps / w) / (args.steps / r):.0%}" for r, w in pairs)
            print(
                f"{processes:>9}  {raw_wall:>12.2f}  {raw_rate:>8.0f}  {wall:>10.2f}  {rate:>8.0f}"
                f"  {rate / raw_rate:>6.0%}  (rounds: {ratios})"
            )
            alone_wall = statistics.median(alone_walls)
            alone_rate = steps / alone_wall
            print(
                f"{'':>9}  {'':>12}  {'':>8}  {alone_wall:>10.2f}  {alone_rate:>8.0f}"
                f"  {alone_rate / raw_rate:>6.0%}  (a message per step)"
            )
            print(f"{'':>9}  raw celery {raw_cpu.line()}")
            print(f"{'':>9}  stepline   {cpu.line()}")
            print(f"{'':>9}  a message per step: {alone_cpu.line()}")
            if w3_seen is not None:
                print(
                    f"  W3 on {processes} processes: {w3_seen:.3f} s trigger to final as `run`"
                    f" sees it, {w3_stored:.3f} s as stored (finished_at - created_at),"
                    f" median of {args.repeat}"
                )
    finally:
        drop_database(args.pg, db)


if __name__ == "__main__":
    main()
