"""Waiting out a database that does not answer: one policy for the driver, the service and
a runner's context, so every wait doubles the same way and gives up after the same time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from stepline.errors import StoreUnavailable

log = structlog.get_logger("stepline.orchestrator")

T = TypeVar("T")


class Backoff:
    """Waits between attempts at a database that does not answer: 50 ms doubling to 5 s,
    for at most ``patience`` seconds in a row, after which the last error is raised."""

    def __init__(self, patience: float | None) -> None:
        self.patience = patience
        self.reset()

    def reset(self) -> None:
        self._delay = 0.05
        self._since: float | None = None

    def wait(self, error: BaseException) -> None:
        now = time.monotonic()
        if self._since is None:
            self._since = now
        if self.patience is not None and now - self._since >= self.patience:
            raise error
        log.warning(
            "database unavailable; retrying", error=short_error(error), in_seconds=self._delay
        )
        time.sleep(self._delay)
        self._delay = min(self._delay * 2, 5.0)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, called again after each StoreUnavailable until patience runs out."""
        while True:
            try:
                return fn()
            except StoreUnavailable as exc:
                self.wait(exc)


def short_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 500 else text[:500] + "..."
