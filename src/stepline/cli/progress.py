"""Live progress of one instance: a rich table on a terminal, one line per event otherwise."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from rich.console import Console
from rich.live import Live
from rich.table import Table

from stepline.core.states import StepStatus
from stepline.engine.orchestrator import StepEvent

_STYLE = {
    StepStatus.SUCCEEDED: "green",
    StepStatus.FAILED: "red",
    StepStatus.UPSTREAM_FAILED: "red",
    StepStatus.RUNNING: "yellow",
    StepStatus.QUEUED: "cyan",
    StepStatus.SKIPPED: "dim",
    StepStatus.CANCELLED: "magenta",
}


class Progress:
    """A listener for the orchestrator; call :meth:`close` when the instance is final."""

    def __init__(self, console: Console, steps: Sequence[str]) -> None:
        self.console = console
        self.status: dict[str, StepStatus] = dict.fromkeys(steps, StepStatus.PENDING)
        self.attempt: dict[str, int] = {}
        self.items: dict[str, list[int]] = {}
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._live: Live | None = None
        if console.is_terminal:
            self._live = Live(self._table(), console=console, refresh_per_second=8)
            self._live.start()

    def __call__(self, event: StepEvent) -> None:
        if event.map_index >= 0:
            self._item(event)
            return
        key = event.step_key
        with self._lock:
            self.status[key] = event.status
            if event.attempt:
                self.attempt[key] = event.attempt
            if self._live is not None:
                self._live.update(self._table())
            elif event.status is not StepStatus.QUEUED or event.attempt:
                retry = f" (attempt {event.attempt})" if event.attempt > 1 else ""
                self.console.print(
                    f"  {self.elapsed():7.2f}s  {key:<30} {event.status.value}{retry}  "
                    f"[{self.summary()}]",
                    highlight=False,
                )

    def _item(self, event: StepEvent) -> None:
        """Map items are summarised per step: a line per failure and per tenth done."""
        with self._lock:
            started, finished, failed = self.items.setdefault(event.step_key, [0, 0, 0])
            if event.status is StepStatus.RUNNING:
                started += 1
            elif event.status.is_final:
                finished += 1
                failed += event.status is not StepStatus.SUCCEEDED
            self.items[event.step_key] = [started, finished, failed]
            if self._live is not None:
                self._live.update(self._table())
            elif event.status is StepStatus.FAILED or (finished and finished % 100 == 0):
                self.console.print(
                    f"  {self.elapsed():7.2f}s  {event.step_key + '[*]':<30} "
                    f"{finished} items done, {failed} failed",
                    highlight=False,
                )

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def summary(self) -> str:
        values = list(self.status.values())
        done = sum(1 for s in values if s.is_final)
        running = sum(1 for s in values if s is StepStatus.RUNNING)
        failed = sum(1 for s in values if s in (StepStatus.FAILED, StepStatus.UPSTREAM_FAILED))
        return f"{done}/{len(values)} done, {running} running, {failed} failed"

    def _table(self) -> Table:
        table = Table(title=f"{self.summary()}  —  {self.elapsed():.1f}s", expand=False)
        table.add_column("step")
        table.add_column("status")
        table.add_column("attempt", justify="right")
        for key, status in self.status.items():
            style = _STYLE.get(status, "")
            items = self.items.get(key)
            shown = status.value + (f" ({items[1]} items done, {items[2]} failed)" if items else "")
            table.add_row(key, f"[{style}]{shown}[/]", str(self.attempt.get(key, "")))
        return table

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()
