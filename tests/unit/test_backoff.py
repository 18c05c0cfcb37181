"""The one policy for waiting out an unavailable database (driver, service, runner context)."""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import pairwise

import pytest

from stepline.engine.backoff import Backoff
from stepline.errors import StoreUnavailable


def flaky(failures: int) -> tuple[list[float], Callable[[], str]]:
    calls: list[float] = []

    def read() -> str:
        calls.append(time.monotonic())
        if len(calls) <= failures:
            raise StoreUnavailable(f"down ({len(calls)})")
        return "rows"

    return calls, read


def test_call_waits_out_passing_errors_with_doubling_delays() -> None:
    calls, read = flaky(3)
    assert Backoff(30).call(read) == "rows"
    gaps = [b - a for a, b in pairwise(calls)]
    assert len(calls) == 4
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2


def test_call_gives_up_with_the_last_error_once_patience_ran_out() -> None:
    calls, read = flaky(1000)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="down"):
        Backoff(0.3).call(read)
    assert 0.3 <= time.monotonic() - started < 5
    assert 3 <= len(calls) < 10


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def read() -> None:
        calls.append(1)
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        Backoff(30).call(read)
    assert calls == [1]
