"""DirectDispatcher: runs steps in this process — ``def`` runners in threads,
``async def`` runners as tasks on one event loop thread."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime

from stepline.dispatchers.base import Dispatcher, Report, StepWork
from stepline.engine.execution import ResultLoader, is_async, outcome, run_async, run_sync


class DirectDispatcher(Dispatcher):
    def __init__(self, capacity: int = 32, load: ResultLoader | None = None) -> None:
        self.capacity = capacity
        self._load = load
        self._report: Report | None = None
        self._threads = ThreadPoolExecutor(capacity, thread_name_prefix="stepline-step")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._tasks: dict[tuple[int, int, int], Future[None]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DirectDispatcher(capacity={self.capacity})"

    def start(self, report: Report) -> None:
        self._report = report

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
        report(run_sync(work, self._load))

    async def _run_task(self, work: StepWork, report: Report) -> None:
        try:
            result = await run_async(work, self._load)
        except asyncio.CancelledError:
            return  # abandoned: the orchestrator already recorded why
        report(result)

    def _forget(self, key: tuple[int, int, int]) -> None:
        with self._lock:
            self._tasks.pop(key, None)

    def abandon(self, instance_id: int, row_id: int, attempt: int) -> None:
        with self._lock:
            future = self._tasks.pop((instance_id, row_id, attempt), None)
        if future is not None:
            future.cancel()

    def shutdown(self, wait: bool = True) -> None:
        self._threads.shutdown(wait=wait, cancel_futures=not wait)
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
