"""What the instance page shows, computed from the store's rows: the DAG with each step's
status, mapped steps' item counts, skip reasons, attempts and (cut) payloads.

Everything secret is masked here, before it is cut or handed to a template.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stepline.api.graph import NodeView, render_svg
from stepline.api.render import masked_json, masked_text
from stepline.core.definition import BatchDefinition, StepDefinition
from stepline.core.states import StepStatus, TriggerRule, decide
from stepline.stores.base import AttemptRecord, InstanceRecord, StepOverview, StepResultRecord

__all__ = ["ITEMS_SHOWN", "PAYLOAD_SHOWN", "InstanceView", "StepView", "build"]

ITEMS_SHOWN = 50  # the first items of a mapped step, plus failed ones up to FAILED_SHOWN
FAILED_SHOWN = 200
PAYLOAD_SHOWN = 20_000  # characters of a pretty-printed result kept in the page
TEXT_SHOWN = 100_000  # characters of an error or log kept in the page
_FAILED_LIKE = frozenset({StepStatus.FAILED, StepStatus.UPSTREAM_FAILED})


@dataclass
class Row:
    """One step result (or map item, or past attempt) as a table row."""

    key: str
    map_index: int
    status: str
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None
    error: str = ""
    payload: str = ""
    payload_cut: bool = False


@dataclass(frozen=True)
class LogView:
    attempt: int
    map_index: int
    truncated: bool
    text: str


@dataclass
class StepView:
    key: str
    runner: str
    row: Row | None
    reason: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    items: list[Row] = field(default_factory=list)
    items_total: int = 0
    items_note: str = ""
    failed_items: list[int] = field(default_factory=list)
    attempts: list[Row] = field(default_factory=list)
    logs: list[LogView] = field(default_factory=list)


@dataclass
class InstanceView:
    svg: str
    steps: list[StepView]
    counts: dict[str, int]
    final: bool


def _cut(text: str, limit: int) -> tuple[str, bool]:
    return (text, False) if len(text) <= limit else (text[:limit] + "\n… (cut)", True)


def _row(record: StepResultRecord | AttemptRecord, secrets: list[str], pretty: bool = True) -> Row:
    row = Row(
        record.step_key,
        record.map_index,
        record.status.value,
        record.attempt,
        record.started_at,
        record.finished_at,
        _cut(masked_text(record.error, secrets), TEXT_SHOWN)[0],
    )
    if isinstance(record, StepResultRecord) and record.result_payload is not None:
        row.payload, row.payload_cut = _cut(
            masked_json(record.result_payload, secrets, indent=2 if pretty else None),
            PAYLOAD_SHOWN,
        )
    return row


def skip_reason(
    step: StepDefinition, upstream: Sequence[StepStatus], status: StepStatus
) -> tuple[str, str]:
    """Why a skipped step was skipped, and by what ('trigger rule' or 'condition')."""
    if status is not StepStatus.SKIPPED:
        return "", ""
    if upstream and decide(step.trigger_rule, upstream) is StepStatus.SKIPPED:
        shown = Counter(s.value for s in upstream)
        states = ", ".join(f"{n} {s}" for s, n in sorted(shown.items()))
        return f"trigger rule {step.trigger_rule.value} (upstream: {states})", "trigger rule"
    if step.condition:
        return f"condition {step.condition!r} was false", "condition"
    if step.trigger_rule is not TriggerRule.ALL_SUCCESS:
        return f"trigger rule {step.trigger_rule.value}", "trigger rule"
    return "skipped", ""


def build(
    instance: InstanceRecord,
    definition: BatchDefinition,
    overview: StepOverview,
    attempts: Sequence[AttemptRecord],
    secrets: list[str],
    *,
    link: str,
    logs: Sequence[Any] = (),
) -> InstanceView:
    """The view of ``instance``; ``link`` is the page's URL (steps link to their anchor)."""
    results = overview.rows
    parents: dict[str, StepResultRecord] = {}
    items: dict[str, list[StepResultRecord]] = {}
    for r in results:
        if r.map_index < 0:
            parents[r.step_key] = r
        else:
            items.setdefault(r.step_key, []).append(r)
    statuses = {k: r.status for k, r in parents.items()}
    predecessors = definition.graph.predecessors
    shown_failures = {
        (r.step_key, r.map_index, r.attempt) for r in results if r.status is StepStatus.FAILED
    }
    history: dict[str, list[Row]] = {}
    for a in attempts:
        if (a.step_key, a.map_index, a.attempt) not in shown_failures:
            history.setdefault(a.step_key, []).append(_row(a, secrets))
    step_logs: dict[str, list[LogView]] = {}
    for entry in logs:
        text, cut = _cut(masked_text(entry.text, secrets), TEXT_SHOWN)
        shown = LogView(entry.attempt, entry.map_index, cut or bool(entry.truncated), text)
        step_logs.setdefault(entry.step_key, []).append(shown)
    views: dict[str, NodeView] = {}
    steps: list[StepView] = []
    for step in definition.steps:
        record = parents.get(step.key)
        status = record.status if record else StepStatus.PENDING
        upstream = [statuses.get(p, StepStatus.PENDING) for p in predecessors.get(step.key, ())]
        reason, skipped_by = skip_reason(step, upstream, status)
        view = StepView(step.key, step.runner, _row(record, secrets) if record else None, reason)
        view.attempts = history.get(step.key, [])
        view.logs = step_logs.get(step.key, [])
        detail = ""
        if step.key in overview.item_counts:
            _items(view, items.get(step.key, []), overview.item_counts[step.key], secrets)
            detail = " ".join(f"{n} {s}" for s, n in sorted(view.counts.items()))
            detail = f"{view.items_total} items: {detail}"
        views[step.key] = NodeView(
            status=status.value,
            detail=detail,
            reason=reason,
            skipped_by=skipped_by,
            link=f"#step-{step.key}",
            title=f"{step.key}: {status.value}" + (f" ({detail})" if detail else ""),
        )
        steps.append(view)
    edges = [(s.key, n) for s in definition.steps for n in s.next_steps]
    svg = render_svg([s.key for s in definition.steps], edges, views)
    counts = dict(Counter(v.status for v in views.values()))
    return InstanceView(svg, steps, counts, instance.status.is_final)


def _items(
    view: StepView,
    records: list[StepResultRecord],
    counts: Mapping[StepStatus, int],
    secrets: list[str],
) -> None:
    """A mapped step's items: counts by status, the first ones and the failed ones."""
    records.sort(key=lambda r: r.map_index)
    view.items_total = sum(counts.values())
    view.counts = {status.value: n for status, n in counts.items()}
    view.failed_items = [r.map_index for r in records if r.status in _FAILED_LIKE]
    view.items = [_row(r, secrets, pretty=False) for r in records]
    if len(records) < view.items_total:
        later = sum(1 for r in records if r.map_index >= ITEMS_SHOWN)
        view.items_note = f"showing the first {ITEMS_SHOWN} and {later} failed"
