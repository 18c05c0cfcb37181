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


def numbers(ctx: StepContext) -> list[int]:
    """The list a mapped step fans out over: 0..n-1, n from the step's ``with``."""
    return list(range(int(ctx.args["n"])))
