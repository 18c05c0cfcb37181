"""Live progress of one instance, cheap enough for a fan-out of thousands of steps.

The orchestrator calls the listener on its driver thread, once per step event, so an event
only updates a few counters. What is shown is drawn apart from the events:

- on a terminal, a rich ``Live`` display redrawn four times a second by its own thread:
  the table of steps for a small DAG, a summary (counts, running and failed steps, map
  items) for a wide one;
- off a terminal (a pipe, a file, a CI log), plain lines: one per step change for a small
  DAG; for a wide DAG or a map, a summary line at most once a second, and a line for each
  of the first failures.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

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
WIDE = 30
"""DAGs with more steps than this are shown as a summary, not step by step."""
LINE_EVERY = 1.0
"""Seconds between summary lines off a terminal."""
SHOWN_FAILURES = 20
"""Failures printed one by one off a terminal; later ones are counted in the summary."""
_LISTED = 8


class Progress:
    """A listener for the orchestrator; call :meth:`close` when the instance is final."""

    def __init__(self, console: Console, steps: Sequence[str]) -> None:
        self.console = console
        self.status: dict[str, StepStatus] = dict.fromkeys(steps, StepStatus.PENDING)
        self.attempt: dict[str, int] = {}
        self.items: dict[str, list[int]] = {}
        """Per mapped step: items started, finished, failed."""
        self.started = time.monotonic()
        self.wide = len(self.status) > WIDE
        self._lock = threading.Lock()
        self._next_line = self.started + LINE_EVERY
        self._failures = 0
        self._live: Live | None = None
        if console.is_terminal:
            self._live = Live(
                get_renderable=self._render,
                console=console,
                refresh_per_second=4,
            )
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
                return
            if event.status is StepStatus.QUEUED and not event.attempt:
                return
            failed = event.status in (StepStatus.FAILED, StepStatus.UPSTREAM_FAILED)
            if not self.wide:
                retry = f" (attempt {event.attempt})" if event.attempt > 1 else ""
                self._print(f"{key:<30} {event.status.value}{retry}  [{self.summary()}]")
            elif failed and self._failures < SHOWN_FAILURES:
                self._failures += 1
                self._print(f"{key:<30} {event.status.value}")
            else:
                self._tick()

    def _item(self, event: StepEvent) -> None:
        with self._lock:
            if not self.status.get(event.step_key, StepStatus.SUCCEEDED).is_final:
                self.status[event.step_key] = StepStatus.RUNNING  # its items are running
            counts = self.items.setdefault(event.step_key, [0, 0, 0])
            if event.status is StepStatus.RUNNING:
                counts[0] += 1
            elif event.status.is_final:
                counts[1] += 1
                counts[2] += event.status is not StepStatus.SUCCEEDED
            if self._live is not None:
                return
            if event.status is StepStatus.FAILED and self._failures < SHOWN_FAILURES:
                self._failures += 1
                self._print(f"{event.step_key}[{event.map_index}] failed")
            else:
                self._tick()

    def _tick(self) -> None:
        """A summary line, at most once per LINE_EVERY seconds (lock held)."""
        now = time.monotonic()
        if now >= self._next_line:
            self._next_line = now + LINE_EVERY
            self._print(self.summary() + self._items_summary())

    def _print(self, text: str) -> None:
        self.console.print(f"  {self.elapsed():7.2f}s  {text}", highlight=False, markup=False)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def summary(self) -> str:
        counts = Counter(self.status.values())
        done = sum(n for s, n in counts.items() if s.is_final)
        failed = counts[StepStatus.FAILED] + counts[StepStatus.UPSTREAM_FAILED]
        return (
            f"{done}/{len(self.status)} done, {counts[StepStatus.RUNNING]} running, {failed} failed"
        )

    def _items_summary(self) -> str:
        parts = [
            f"; {key}: {finished} items done, {failed} failed, {started - finished} running"
            for key, (started, finished, failed) in self.items.items()
            if not self.status.get(key, StepStatus.SUCCEEDED).is_final
        ]
        return "".join(parts)

    # -- the terminal display, drawn by Live's thread ---------------------------------------

    def _render(self) -> RenderableType:
        with self._lock:
            status = dict(self.status)
            attempt = dict(self.attempt)
            items = {k: list(v) for k, v in self.items.items()}
            title = f"{self.summary()}  —  {self.elapsed():.1f}s"
        if not self.wide:
            return self._table(title, status, attempt, items)
        lines: list[RenderableType] = [Text(title, style="bold")]
        by_status: dict[StepStatus, list[str]] = {}
        for key, s in status.items():
            by_status.setdefault(s, []).append(key)
        counts = ", ".join(f"{len(keys)} {s.value}" for s, keys in by_status.items())
        lines.append(Text(counts))
        for s in (StepStatus.RUNNING, StepStatus.FAILED, StepStatus.UPSTREAM_FAILED):
            keys = by_status.get(s, [])
            if keys:
                more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
                shown = ", ".join(keys[:_LISTED]) + more
                lines.append(Text(f"{s.value}: {shown}", style=_STYLE[s]))
        for key, (_, finished, failed) in items.items():
            lines.append(Text(f"{key}: {finished} items done, {failed} failed"))
        return Group(*lines)

    @staticmethod
    def _table(
        title: str,
        status: dict[str, StepStatus],
        attempt: dict[str, int],
        items: dict[str, list[int]],
    ) -> Table:
        table = Table(title=title, expand=False)
        table.add_column("step")
        table.add_column("status")
        table.add_column("attempt", justify="right")
        for key, s in status.items():
            style = _STYLE.get(s, "")
            counts = items.get(key)
            shown = s.value + (f" ({counts[1]} items done, {counts[2]} failed)" if counts else "")
            table.add_row(key, f"[{style}]{shown}[/]", str(attempt.get(key, "")))
        return table

    def close(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
