"""DirectDispatcher: runs steps in this process — ``def`` runners in threads,
``async def`` runners as tasks on one event loop thread."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime

from stepline.connections import Connections
from stepline.dispatchers.base import Dispatcher, Report, StepWork
from stepline.engine.execution import (
    ResultLoader,
    StatusLoader,
    is_async,
    outcome,
    run_async,
    run_sync,
)


class DirectDispatcher(Dispatcher):
    def __init__(
        self,
        capacity: int = 32,
        load: ResultLoader | None = None,
        *,
        statuses: StatusLoader | None = None,
        connections: Connections | None = None,
    ) -> None:
        """``load`` and ``statuses`` read upstream results and statuses for a runner's
        context (the store's ``results_for`` and ``statuses_for``); ``connections`` are the
        runners' named databases (default: the process-wide ones)."""
        self.capacity = capacity
        self._load = load
        self._statuses = statuses
        self._connections = connections
        self._report: Report | None = None
        self._threads = _DaemonPool(capacity)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._tasks: dict[tuple[int, int, int], Future[None]] = {}
        self._abandoned: set[tuple[int, int, int]] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DirectDispatcher(capacity={self.capacity})"

    def start(self, report: Report) -> None:
        self._report = report
        self._threads.start()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="stepline-async", daemon=True
                )
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def submit(self, work: StepWork) -> None:
        report = self._report
        assert report is not None, "start() the dispatcher before submitting work"
        try:
            use_loop = is_async(work.step.runner)
        except Exception as exc:
            report(outcome(work, datetime.now(UTC), error=exc))
            return
        if use_loop:
            key = (work.instance_id, work.claimed.row_id, work.claimed.attempt)
            future = asyncio.run_coroutine_threadsafe(
                self._run_task(work, report), self._event_loop()
            )
            with self._lock:
                self._tasks[key] = future
            future.add_done_callback(lambda _f: self._forget(key))
        elif work.step.timeout is not None:
            # A step that may hang gets a thread of its own: when it times out, it is
            # abandoned there instead of holding one of the pool's threads for good.
            threading.Thread(
                target=self._run_thread,
                args=(work, report),
                daemon=True,
                name=f"stepline-step-{work.claimed.step_key}",
            ).start()
        else:
            self._threads.submit(self._run_thread, work, report)

    def _run_thread(self, work: StepWork, report: Report) -> None:
        try:
            result = run_sync(
                work, self._load, statuses=self._statuses, connections=self._connections
            )
        except BaseException as exc:  # an attempt must end with an outcome, whatever happens
            result = outcome(work, datetime.now(UTC), error=exc)
        report(result)

    async def _run_task(self, work: StepWork, report: Report) -> None:
        started = datetime.now(UTC)
        key = (work.instance_id, work.claimed.row_id, work.claimed.attempt)
        try:
            result = await run_async(
                work, self._load, statuses=self._statuses, connections=self._connections
            )
        except asyncio.CancelledError as exc:
            with self._lock:
                abandoned = key in self._abandoned
                self._abandoned.discard(key)
            if abandoned:
                return  # the orchestrator already recorded why
            result = outcome(work, started, error=exc)  # the runner cancelled itself
        report(result)

    def _forget(self, key: tuple[int, int, int]) -> None:
        with self._lock:
            self._tasks.pop(key, None)

    def abandon(self, instance_id: int, row_id: int, attempt: int) -> None:
        with self._lock:
            future = self._tasks.pop((instance_id, row_id, attempt), None)
            if future is not None:
                self._abandoned.add((instance_id, row_id, attempt))
        if future is not None:
            future.cancel()

    def shutdown(self, wait: bool = True) -> None:
        self._threads.shutdown(wait=wait)
        loop = self._loop
        if loop is not None:
            if not wait:
                with self._lock:
                    for future in self._tasks.values():
                        future.cancel()
            loop.call_soon_threadsafe(loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=5)
            if not loop.is_running():
                loop.close()


class _DaemonPool:
    """Threads that run ``def`` runners, started as needed up to ``size``.

    Daemon threads, unlike ThreadPoolExecutor's: at exit the process does not wait for a
    runner past the shutdown grace period; the attempt it was running is recovered as lost.
    Starting a thread costs its starter up to a millisecond (it waits until the new thread
    runs), so a spawner thread starts them: a submit is a queue put, and a job submitted
    while its thread is being born waits in the queue for the first free thread.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[object, ...]] | None]
        self._jobs = queue.SimpleQueue()
        self._births: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._count = 0  # threads started or asked for
        self._idle = 0
        self._spawner: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._spawner is None:
                self._spawner = threading.Thread(
                    target=self._spawn, name="stepline-spawn", daemon=True
                )
                self._spawner.start()

    def _spawn(self) -> None:
        while self._births.get():
            thread = threading.Thread(
                target=self._work, name=f"stepline-step-{len(self._threads)}", daemon=True
            )
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        if self._spawner is None:
            self.start()
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                born = False
            else:
                born = self._count < self.size
                self._count += born
        if born:
            self._births.put(True)
        self._jobs.put((fn, args))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            finally:
                with self._lock:
                    self._idle += 1

    def shutdown(self, wait: bool) -> None:
        spawner = self._spawner
        if spawner is not None:
            self._births.put(False)
            spawner.join()
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
