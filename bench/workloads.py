"""No-op runners for the overhead benchmark (imported by name, like any runner)."""

from __future__ import annotations

import time
from typing import Any

from stepline.core.context import StepContext


def noop(ctx: StepContext) -> None:
    return None


def count_results(ctx: StepContext) -> int:
    return len(ctx.results)


def sleep_02(ctx: StepContext) -> float:
    time.sleep(0.2)
    return 0.2


def first(ctx: StepContext) -> Any:
    return ctx.step


def ten_thousand(ctx: StepContext) -> list[int]:
    return list(range(10_000))


def fail_some(ctx: StepContext) -> dict[str, Any]:
    """A map item that fails for one item in a hundred (the dashboard benchmark)."""
    if ctx.item % 100 == 7:
        raise RuntimeError(f"item {ctx.item} failed")
    return {"item": ctx.item, "ok": True}


def numbers(ctx: StepContext) -> list[int]:
    """The list a mapped step fans out over: 0..n-1, n from the step's ``with``."""
    return list(range(int(ctx.args["n"])))
