"""Live progress of one instance, cheap enough for a fan-out of thousands of steps or a map of
tens of thousands of items.

The orchestrator calls the listener on its driver thread, once per step event, so an event
only updates a few counters (under a lock). What is shown is drawn apart from the events:

- on a terminal, a rich ``Live`` display redrawn four times a second by its own thread: the
  table of steps for a small DAG, a summary (counts, running and failed steps, map items)
  for a wide one;
- off a terminal (a pipe, a file, a CI log), plain lines. A small DAG gets a line per step
  change. Map items and the steps of a wide DAG get a summary line at most once a second,
  and a line for each of the first failures (later ones are counted in the summary).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from stepline.core.definition import item_name
from stepline.core.states import StepStatus

if TYPE_CHECKING:
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
"""Failures (and retries) printed one by one off a terminal; later ones are only counted."""
_LISTED = 8
"""Steps named per state in the wide summary; failed items listed per mapped step."""
_FAILED_ITEMS = 10
_NOTABLE = frozenset((StepStatus.FAILED, StepStatus.UPSTREAM_FAILED, StepStatus.QUEUED))
"""A failure, or a retry (an attempt ended and the step is queued again)."""


class _Items:
    """The items of one mapped step, each counted once by its latest state (not attempts)."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.state: dict[int, StepStatus] = {}
        self.label: dict[int, str] = {}
        self.counts: Counter[StepStatus] = Counter()

    def set(self, index: int, status: StepStatus) -> None:
        counts = self.counts
        old = self.state.get(index)
        if old is not None:
            counts[old] -= 1
        counts[status] += 1
        self.state[index] = status

    def count(self, status: StepStatus) -> int:
        return self.counts[status]

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

    def failed(self, key: str, limit: int) -> list[str]:
        if not self.counts[StepStatus.FAILED]:
            return []
        indexes = sorted(i for i, s in self.state.items() if s is StepStatus.FAILED)
        return [item_name(key, self.label[i]) for i in indexes[:limit]]


class Progress:
    """A listener for the orchestrator; call :meth:`close` when the instance is final."""

    def __init__(self, console: Console, steps: Sequence[str]) -> None:
        self.console = console
        self.status: dict[str, StepStatus] = dict.fromkeys(steps, StepStatus.PENDING)
        self.attempt: dict[str, int] = {}
        self.items: dict[str, _Items] = {}
        self.started = time.monotonic()
        self.wide = len(self.status) > WIDE
        self.lines = 0
        """Lines printed off a terminal (the benchmark and tests read it)."""
        self._lock = threading.Lock()
        self._next_line = self.started + LINE_EVERY
        self._shown_failures = 0
        self._live: Live | None = None
        if console.is_terminal:
            self._live = Live(get_renderable=self._render, console=console, refresh_per_second=4)
            self._live.start()

    def __call__(self, event: StepEvent) -> None:
        # Called for every step's start and end (a thousand times for a fan-out of 500):
        # the common case, a wide DAG's step starting or succeeding, only counts.
        key, index, status, attempt = event.step_key, event.map_index, event.status, event.attempt
        if index >= 0 or event.items is not None:
            self._item(event)
            return
        with self._lock:
            self.status[key] = status
            if attempt:
                self.attempt[key] = attempt
            if self._live is not None or (status is StepStatus.QUEUED and not attempt):
                return
            if self.wide and status not in _NOTABLE:
                self._tick()
                return
            retry = f" (attempt {attempt})" if attempt > 1 else ""
            items = self.items.get(key)
            counts = f" ({items.summary()})" if items and status.is_final else ""
            if not self.wide:
                self._print(f"{key:<30} {status.value}{retry}{counts}  [{self.summary()}]")
            elif self._shown_failures < SHOWN_FAILURES:
                self._shown_failures += 1
                self._print(f"{key:<30} {status.value}{retry}{counts}")
            else:
                self._tick()

    def _item(self, event: StepEvent) -> None:
        with self._lock:
            items = self.items.get(event.step_key)
            if items is None:
                items = self.items[event.step_key] = _Items()
            if event.items is not None:
                items.total = event.items
                self.status[event.step_key] = StepStatus.RUNNING
                return
            items.set(event.map_index, event.status)
            if event.status not in _NOTABLE:
                if self._live is None:
                    self._tick()
                return
            # Only failed or retried items are ever named: only their labels are kept.
            label = items.label[event.map_index] = event.label or str(event.map_index)
            if self._live is not None:
                return
            if self._shown_failures < SHOWN_FAILURES:
                self._shown_failures += 1
                name = item_name(event.step_key, label)
                what = (
                    f"failed (attempt {event.attempt})"
                    if event.status is StepStatus.FAILED
                    else f"attempt {event.attempt} failed, will retry"
                )
                self._print(f"{name:<30} {what}  [{items.summary()}]")
            else:
                self._tick()

    def _tick(self) -> None:
        """A summary line, at most once per LINE_EVERY seconds (lock held)."""
        now = time.monotonic()
        if now >= self._next_line:
            self._next_line = now + LINE_EVERY
            self._print(self._summary_line())

    def _summary_line(self) -> str:
        running = [
            f"; {key}: {items.summary()}"
            for key, items in self.items.items()
            if self.status.get(key) is StepStatus.RUNNING
        ]
        return self.summary() + "".join(running)

    def _print(self, text: str) -> None:
        self.lines += 1
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

    # -- the terminal display, drawn by Live's thread ---------------------------------------

    def _render(self) -> RenderableType:
        with self._lock:
            title = f"{self.summary()}  —  {self.elapsed():.1f}s"
            if self.wide:
                return self._wide(title)
            return self._table(title)

    def _table(self, title: str) -> Table:
        table = Table(title=title, expand=False)
        table.add_column("step")
        table.add_column("status")
        table.add_column("attempt", justify="right")
        for key, status in self.status.items():
            style = _STYLE.get(status, "")
            items = self.items.get(key)
            shown = status.value + (f" ({items.summary()})" if items else "")
            table.add_row(key, f"[{style}]{shown}[/]", str(self.attempt.get(key, "")))
            for name in items.failed(key, _FAILED_ITEMS) if items else []:
                table.add_row(f"  {name}", "[red]failed[/]", "")
        return table

    def _wide(self, title: str) -> Group:
        by_status: dict[StepStatus, list[str]] = {}
        for key, status in self.status.items():
            by_status.setdefault(status, []).append(key)
        lines: list[RenderableType] = [
            Text(title, style="bold"),
            Text(", ".join(f"{len(keys)} {s.value}" for s, keys in by_status.items())),
        ]
        for status in (StepStatus.RUNNING, StepStatus.FAILED, StepStatus.UPSTREAM_FAILED):
            keys = by_status.get(status, [])
            if keys:
                more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
                listed = ", ".join(keys[:_LISTED]) + more
                lines.append(Text(f"{status.value}: {listed}", style=_STYLE[status]))
        for key, items in self.items.items():
            lines.append(Text(f"{key}: {items.summary()}"))
            failed = items.failed(key, _FAILED_ITEMS)
            if failed:
                lines.append(Text(f"  failed: {', '.join(failed)}", style="red"))
        return Group(*lines)

    def close(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
