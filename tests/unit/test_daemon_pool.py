"""The direct dispatcher's threads: as many as the runners need at once, up to its capacity,
and no more for a burst of short steps."""

from __future__ import annotations

import threading
import time

from stepline.dispatchers.direct import _DaemonPool


def test_runners_that_wait_get_a_thread_each_up_to_the_size() -> None:
    pool = _DaemonPool(4)
    release = threading.Event()
    running: list[int] = []
    lock = threading.Lock()

    def wait(n: int) -> None:
        with lock:
            running.append(n)
        release.wait(10)

    try:
        for n in range(6):
            pool.submit(wait, n)
        deadline = time.monotonic() + 10
        while len(running) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert len(running) == 4, "four runners at once, not fewer, not more"
        release.set()
        while len(running) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(running) == list(range(6))
        assert len(pool._threads) == 4
    finally:
        release.set()
        pool.shutdown(wait=True)


def test_a_burst_of_short_runners_does_not_start_a_thread_for_each() -> None:
    pool = _DaemonPool(64)
    done = threading.Semaphore(0)
    try:
        for _ in range(500):
            pool.submit(done.release)
        for _ in range(500):
            assert done.acquire(timeout=10)
        deadline = time.monotonic() + 10
        while not pool._births.empty() and time.monotonic() < deadline:
            time.sleep(0.01)  # every thread asked for is started or passed over
        time.sleep(0.1)
        # The threads alive drain the queue faster than the spawner starts new ones: one
        # is asked for with each job that finds no idle thread, and is not started once
        # its job has been taken. (Measured: one or two threads for 500 steps of W2.)
        assert len(pool._threads) < 64
    finally:
        pool.shutdown(wait=True)
