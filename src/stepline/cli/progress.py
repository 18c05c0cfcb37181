"""Live progress of one instance: a rich table on a terminal, one line per event otherwise."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from rich.console import Console
from rich.live import Live
from rich.table import Table

from stepline.core.definition import item_name
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


class _Items:
    """The items of one mapped step, each counted once by its latest state (not attempts)."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.state: dict[int, StepStatus] = {}
        self.label: dict[int, str] = {}

    def count(self, status: StepStatus) -> int:
        return sum(1 for s in self.state.values() if s is status)

    def summary(self) -> str:
        total = self.total if self.total is not None else len(self.state)
        parts = [
            f"{n} {status.value}"
            for status in (
                StepStatus.SUCCEEDED,
                StepStatus.FAILED,
                StepStatus.RUNNING,
                StepStatus.QUEUED,
            )
            if (n := self.count(status))
        ]
        return f"{total} item{'' if total == 1 else 's'}: " + (", ".join(parts) or "none done")


class Progress:
    """A listener for the orchestrator; call :meth:`close` when the instance is final."""

    def __init__(self, console: Console, steps: Sequence[str]) -> None:
        self.console = console
        self.status: dict[str, StepStatus] = dict.fromkeys(steps, StepStatus.PENDING)
        self.attempt: dict[str, int] = {}
        self.items: dict[str, _Items] = {}
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._live: Live | None = None
        if console.is_terminal:
            self._live = Live(self._table(), console=console, refresh_per_second=8)
            self._live.start()

    def __call__(self, event: StepEvent) -> None:
        if event.map_index >= 0 or event.items is not None:
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
                items = self.items.get(key)
                counts = f" ({items.summary()})" if items and event.status.is_final else ""
                self.console.print(
                    f"  {self.elapsed():7.2f}s  {key:<30} {event.status.value}{retry}{counts}  "
                    f"[{self.summary()}]",
                    highlight=False,
                )

    def _item(self, event: StepEvent) -> None:
        """Items are summarised per step: a line per item failure and per hundred done."""
        with self._lock:
            items = self.items.setdefault(event.step_key, _Items())
            if event.items is not None:
                items.total = event.items
                self.status[event.step_key] = StepStatus.RUNNING
            else:
                items.state[event.map_index] = event.status
                items.label[event.map_index] = event.label or str(event.map_index)
            finished = items.count(StepStatus.SUCCEEDED) + items.count(StepStatus.FAILED)
            if self._live is not None:
                self._live.update(self._table())
            elif event.map_index >= 0 and (
                event.status in (StepStatus.FAILED, StepStatus.QUEUED)
                or (event.status is StepStatus.SUCCEEDED and finished % 100 == 0)
            ):
                name = item_name(event.step_key, items.label[event.map_index])
                what = {
                    StepStatus.FAILED: f"failed (attempt {event.attempt})",
                    StepStatus.QUEUED: f"attempt {event.attempt} failed, will retry",
                }.get(event.status, "")
                self.console.print(
                    f"  {self.elapsed():7.2f}s  {name:<30} {what}"
                    f"{'  ' if what else ''}[{items.summary()}]",
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
            shown = status.value + (f" ({items.summary()})" if items else "")
            table.add_row(key, f"[{style}]{shown}[/]", str(self.attempt.get(key, "")))
            if items is None:
                continue
            failed = [i for i, s in sorted(items.state.items()) if s is StepStatus.FAILED]
            for index in failed[:10]:
                table.add_row(f"  {item_name(key, items.label[index])}", "[red]failed[/]", "")
        return table

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()
