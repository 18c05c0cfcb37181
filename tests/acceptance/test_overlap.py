"""Guarantee 9 on the command line: ``max_active_instances`` holds for ``stepline run``.

Two ``stepline run`` of a batch limited to one active instance, started together, never
overlap: with ``on_busy: queue`` the second waits and then runs, with ``on_busy: skip`` it
is refused (exit 2) and recorded as a skipped, cancelled instance. A ``serve``-less
database is enough: admission is a locked count in the database, not a process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

RUNNER = """
import sqlite3
import time


def slow(ctx):
    with open("spans.log", "a") as spans:
        spans.write(f"start {ctx.instance_id} {time.time()}\\n")
    # Hold on until the other run has created its instance, so the two surely meet.
    deadline = time.time() + 30
    while time.time() < deadline:
        with sqlite3.connect("stepline.db") as db:
            if db.execute("SELECT count(*) FROM batch_instance").fetchone()[0] >= 2:
                break
        time.sleep(0.05)
    time.sleep(0.5)
    with open("spans.log", "a") as spans:
        spans.write(f"end {ctx.instance_id} {time.time()}\\n")
    return ctx.instance_id
"""


def _definition(on_busy: str) -> str:
    return f"""
name: limited
max_active_instances: 1
on_busy: {on_busy}
steps:
  - key: only
    runner: overlap_steps:slow
"""


def _spans(root: Path) -> dict[int, list[float]]:
    spans: dict[int, list[float]] = {}
    for line in (root / "spans.log").read_text().splitlines():
        _, instance, at = line.split()
        spans.setdefault(int(instance), []).append(float(at))
    return spans


@pytest.mark.parametrize("on_busy", ["queue", "skip"])
def test_two_concurrent_runs_never_overlap(cli, on_busy: str) -> None:
    cli.write("overlap_steps.py", RUNNER)
    cli.write("limited.yaml", _definition(on_busy))
    assert cli("apply", "limited.yaml").code == 0
    first, second = cli.parallel((["run", "limited"], None), (["run", "limited"], None))
    spans = _spans(cli.root)
    if on_busy == "queue":
        assert first.code == 0 and second.code == 0, (first.report, second.report)
        assert len(spans) == 2
        (_, a_end), (b_start, _) = sorted(spans.values())
        assert b_start >= a_end, f"instances overlapped: {spans}"
        waited = first if "waiting:" in first.err else second
        assert "max_active_instances" in waited.err, (first.report, second.report)
    else:
        codes = sorted([first.code, second.code])
        assert codes == [0, 2], (first.report, second.report)
        refused = first if first.code == 2 else second
        assert "skipped" in refused.err and "on_busy is skip" in refused.err, refused.report
        assert len(spans) == 1
        rows = cli.rows("SELECT status, error FROM batch_instance ORDER BY id")
        assert sorted(r[0] for r in rows) == ["cancelled", "succeeded"]
        assert any("on_busy is skip" in (r[1] or "") for r in rows)
