"""RetryPolicy.delay_before: exponential backoff, capped, with "equal jitter"."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stepline.core.definition import RetryPolicy

NO_JITTER = RetryPolicy(
    attempts=10, backoff=timedelta(seconds=2), max_backoff=timedelta(minutes=1), jitter=False
)


def never_called() -> float:
    raise AssertionError("rng must not be used when jitter is off")


@pytest.mark.parametrize(
    ("attempt", "seconds"),
    [
        pytest.param(1, 2.0, id="first-attempt-never-waits-less-than-backoff"),
        pytest.param(2, 2.0, id="first-retry-waits-backoff"),
        pytest.param(3, 4.0, id="doubles"),
        pytest.param(4, 8.0, id="doubles-again"),
        pytest.param(5, 16.0, id="16s"),
        pytest.param(6, 32.0, id="32s"),
        pytest.param(7, 60.0, id="64s-capped-at-max-backoff"),
        pytest.param(8, 60.0, id="stays-capped"),
        pytest.param(30, 60.0, id="far-attempt-capped"),
        pytest.param(
            2000,
            60.0,
            id="huge-attempt-capped",
        ),
    ],
)
def test_delay_without_jitter_is_exact_exponential_with_cap(attempt: int, seconds: float) -> None:
    assert NO_JITTER.delay_before(attempt, rng=never_called) == seconds


@pytest.mark.parametrize(
    ("backoff", "max_backoff", "attempt", "seconds"),
    [
        pytest.param(timedelta(milliseconds=500), timedelta(minutes=5), 4, 2.0, id="sub-second"),
        pytest.param(timedelta(seconds=10), timedelta(seconds=5), 2, 5.0, id="cap-below-backoff"),
        pytest.param(timedelta(0), timedelta(minutes=5), 6, 0.0, id="zero-backoff"),
    ],
)
def test_delay_without_jitter_other_policies(
    backoff: timedelta, max_backoff: timedelta, attempt: int, seconds: float
) -> None:
    policy = RetryPolicy(backoff=backoff, max_backoff=max_backoff, jitter=False)
    assert policy.delay_before(attempt) == seconds


JITTERED = RetryPolicy(attempts=10, backoff=timedelta(seconds=2), max_backoff=timedelta(minutes=1))


@pytest.mark.parametrize(
    ("attempt", "draw", "seconds"),
    [
        pytest.param(2, 0.0, 1.0, id="lowest-draw-is-half"),
        pytest.param(2, 0.5, 1.5, id="middle-draw"),
        pytest.param(2, 1.0, 2.0, id="highest-draw-is-full"),
        pytest.param(4, 0.25, 5.0, id="half-of-8-plus-quarter-of-4"),
        pytest.param(9, 0.0, 30.0, id="capped-then-halved"),
        pytest.param(9, 1.0, 60.0, id="capped-full"),
    ],
)
def test_jittered_delay_with_fixed_rng(attempt: int, draw: float, seconds: float) -> None:
    assert JITTERED.delay_before(attempt, rng=lambda: draw) == pytest.approx(seconds)


@pytest.mark.parametrize("attempt", range(2, 12))
def test_jittered_delay_stays_between_half_and_full_delay(attempt: int) -> None:
    full = NO_JITTER.delay_before(attempt)
    draws = iter([0.0, 0.1, 0.37, 0.5, 0.9, 0.999999])
    delays = [JITTERED.delay_before(attempt, rng=lambda: next(draws)) for _ in range(6)]
    assert all(full / 2 <= d <= full for d in delays)
    assert delays == sorted(delays)
    assert delays[0] == pytest.approx(full / 2)


def test_jitter_uses_the_rng_once_per_call() -> None:
    calls: list[int] = []

    def rng() -> float:
        calls.append(1)
        return 0.5

    JITTERED.delay_before(3, rng=rng)
    assert len(calls) == 1


def test_defaults_are_one_attempt_and_jitter_on() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.jitter) == (1, True)
    assert policy.backoff == timedelta(seconds=1)
    assert policy.max_backoff == timedelta(minutes=5)
