"""The progress display of `stepline run`: a line per step change for a small DAG, a
summary at most once a second for a wide one or a map, failures always named."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console

from stepline.cli.progress import SHOWN_FAILURES, Progress
from stepline.core.states import StepStatus
from stepline.engine.orchestrator import StepEvent

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def piped() -> tuple[Console, io.StringIO]:
    sink = io.StringIO()
    return Console(file=sink, force_terminal=False, width=160), sink


def event(key: str, status: StepStatus, map_index: int = -1) -> StepEvent:
    return StepEvent(1, key, map_index, status, 1, NOW)


def test_a_small_dag_gets_a_line_per_step_change() -> None:
    console, sink = piped()
    progress = Progress(console, ["a", "b"])
    for key in ("a", "b"):
        progress(event(key, StepStatus.RUNNING))
        progress(event(key, StepStatus.SUCCEEDED))
    progress.close()
    lines = sink.getvalue().splitlines()
    assert len(lines) == 4
    assert "b" in lines[-1] and "succeeded" in lines[-1] and "2/2 done" in lines[-1]


def test_a_wide_fan_out_is_summarised_not_printed_per_event() -> None:
    console, sink = piped()
    keys = [f"f{i}" for i in range(500)]
    progress = Progress(console, keys)
    for key in keys:
        progress(event(key, StepStatus.RUNNING))
    for key in keys:
        progress(event(key, StepStatus.SUCCEEDED))
    progress.close()
    assert len(sink.getvalue().splitlines()) <= 2  # 1,000 events inside a second
    assert progress.summary() == "500/500 done, 0 running, 0 failed"


def test_failures_of_a_wide_dag_and_of_map_items_are_named() -> None:
    console, sink = piped()
    keys = [f"f{i}" for i in range(100)]
    progress = Progress(console, [*keys, "each"])
    progress(event("f7", StepStatus.FAILED))
    progress(event("each", StepStatus.RUNNING))
    for index in range(SHOWN_FAILURES + 10):
        progress(event("each", StepStatus.FAILED, map_index=index))
    text = sink.getvalue()
    assert "f7" in text and "failed" in text
    assert "each[0] failed" in text
    assert f"each[{SHOWN_FAILURES - 2}] failed" in text
    assert f"each[{SHOWN_FAILURES + 5}]" not in text  # later ones are only counted
    assert progress.items["each"] == [0, SHOWN_FAILURES + 10, SHOWN_FAILURES + 10]


def test_on_a_terminal_the_display_ends_with_the_final_counts() -> None:
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=True, width=120)
    keys = [f"f{i}" for i in range(200)]
    progress = Progress(console, keys)
    for key in keys:
        progress(event(key, StepStatus.SUCCEEDED))
    progress.close()
    assert "200/200 done, 0 running, 0 failed" in sink.getvalue()


def test_a_running_map_is_summarised_with_its_items() -> None:
    console, sink = piped()
    progress = Progress(console, ["list", "each"])
    progress(event("list", StepStatus.SUCCEEDED))
    progress._next_line = 0.0  # the next tick is due: no sleeping in a unit test
    progress(event("each", StepStatus.RUNNING, map_index=0))
    progress(event("each", StepStatus.SUCCEEDED, map_index=0))
    assert progress.status["each"] is StepStatus.RUNNING
    assert "each: 0 items done, 0 failed, 1 running" in sink.getvalue()
