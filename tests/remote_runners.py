"""Runners for tests whose steps may run in other processes (Celery workers).

Calls are counted in files (one line per call, appended) under the directory named by
``STEPLINE_TEST_CALLS``, so the test process sees what any worker process ran.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from stepline import DoNotRetry, StepContext


def _dir() -> Path:
    return Path(os.environ["STEPLINE_TEST_CALLS"])


def record(batch: str, key: str) -> int:
    """Append one call of ``key`` and return how many calls of it there were so far."""
    path = _dir() / batch
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{key} {os.getpid()}\n")
    return calls(batch, key)


def calls(batch: str, key: str) -> int:
    path = _dir() / batch
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.split(" ")[0] == key)


def pids(batch: str, key: str) -> list[int]:
    path = _dir() / batch
    if not path.exists():
        return []
    return [
        int(p) for k, p in (line.split(" ") for line in path.read_text().splitlines()) if k == key
    ]


def work(ctx: StepContext) -> Any:
    """Count the call, then sleep, fail the first N calls, exit the process, or return."""
    n = record(ctx.batch, ctx.step)
    args = ctx.args
    if args.get("sleep"):
        time.sleep(float(args["sleep"]))
    if n <= int(args.get("exit_times", 0)):
        os._exit(3)  # a runner that kills its worker process
    if n <= int(args.get("fail_times", 0)):
        raise RuntimeError(f"planned failure {n} of {ctx.step}")
    if args.get("fatal"):
        raise DoNotRetry(f"{ctx.step} cannot succeed")
    return args.get("value", {"step": ctx.step, "upstream": sorted(ctx.results)})


async def awork(ctx: StepContext) -> Any:
    record(ctx.batch, ctx.step)
    await asyncio.sleep(float(ctx.args.get("sleep", 0)))
    return {"step": ctx.step, "async": True}


def fan_in(ctx: StepContext) -> dict[str, Any]:
    record(ctx.batch, ctx.step)
    return {"seen": sorted(ctx.results), "values": dict(ctx.results)}


def hang(ctx: StepContext) -> None:
    record(ctx.batch, ctx.step)
    time.sleep(float(ctx.args.get("seconds", 30)))


async def ahang(ctx: StepContext) -> None:
    record(ctx.batch, ctx.step)
    await asyncio.sleep(float(ctx.args.get("seconds", 30)))


def item_work(ctx: StepContext) -> Any:
    """A map item: counted per item; items in ``fail_items`` fail on their first call."""
    n = record(ctx.batch, f"{ctx.step}[{ctx.map_index}]")
    record(ctx.batch, ctx.step)
    if ctx.args.get("sleep"):
        time.sleep(float(ctx.args["sleep"]))
    if ctx.item in ctx.args.get("fail_items", []) and n == 1:
        raise RuntimeError(f"item {ctx.item} failed")
    return {"item": ctx.item, "double": ctx.item * 2 if isinstance(ctx.item, int) else None}


def noop(ctx: StepContext) -> None:
    return None


def talk(ctx: StepContext) -> dict[str, str]:
    """Log through ctx.log and Python logging; return what ctx.upstream says."""
    import logging

    record(ctx.batch, ctx.step)
    ctx.log.info("fetching https://api.example/stats?token=hunter2-secret")
    logging.getLogger("farm.client").warning("slow answer from %s", "weather")
    return dict(ctx.upstream)
