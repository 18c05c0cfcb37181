"""The engine's own story of a run: one structured line per step attempt and per instance.

The driver thread only queues the facts (a tuple per outcome); a daemon thread renders and
writes the lines, so logging costs the per-step path a queue put, not a trip through the
log processors and a write to stderr. :func:`flush` waits until every queued line is out
(the orchestrator calls it when it closes).
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

from stepline.core.states import InstanceStatus, StepStatus
from stepline.stores.base import StepOutcome

__all__ = ["attempts_ended", "configure", "enabled", "flush", "instance_ended"]

log = structlog.get_logger("stepline.orchestrator")

_Item = tuple[str, dict[str, Any]] | list[tuple[str, dict[str, Any]]] | threading.Event
_queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
_started = False
_lock = threading.Lock()


class _Output:
    """Set by :func:`configure` (``configure_logging`` does): render lines here and write a
    group of them at once; unset, each line goes through structlog's configuration."""

    enabled = False
    fmt: str | None = None
    stream: TextIO | None = None


def configure(fmt: str, enabled: bool, stream: TextIO | None) -> None:
    """Write the lines in ``fmt`` (``json`` or ``console``) on ``stream`` (None: through
    structlog) if ``enabled``. Off by default: ``serve`` turns them on, while ``stepline
    run`` shows its progress instead. Batch and step names, statuses, numbers and error
    class names are all these lines hold, so they need no redaction."""
    _Output.enabled, _Output.fmt, _Output.stream = enabled, fmt, stream


def _render(event: str, fields: dict[str, Any], stamp: str) -> str:
    if _Output.fmt == "json":
        return json.dumps({**fields, "event": event, "level": "info", "timestamp": stamp})
    pairs = " ".join(f"{k}={v}" for k, v in sorted(fields.items()))
    return f"{stamp} [info     ] {event:<30} {pairs}"


def _writer() -> None:
    while True:
        item = _queue.get()
        if isinstance(item, threading.Event):
            item.set()
            continue
        lines = item if isinstance(item, list) else [item]
        with contextlib.suppress(Exception):  # a log line must never stop the writer
            stream = _Output.stream
            if stream is None:
                for event, fields in lines:
                    log.info(event, **fields)
            else:
                # One time for a group: its lines were recorded in one transaction.
                stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                stream.write("".join(_render(e, f, stamp) + "\n" for e, f in lines))
                stream.flush()


def _put(item: _Item) -> None:
    global _started
    if not _Output.enabled:
        return
    if not _started:
        with _lock:
            if not _started:
                threading.Thread(target=_writer, name="stepline-log", daemon=True).start()
                _started = True
    _queue.put(item)


def error_class(error: str | None) -> str | None:
    """``ValueError`` of ``"ValueError: bad input\\n<traceback>"``."""
    if not error:
        return None
    head = error.split("\n", 1)[0]
    return head.split(":", 1)[0] if ":" in head else head


def enabled() -> bool:
    """Whether the lines are written at all (callers skip building them when not)."""
    return _Output.enabled


def attempts_ended(
    batch: str, instance_id: int, recorded: Iterable[tuple[StepOutcome, StepStatus]]
) -> None:
    """Queue a line per recorded attempt (status ``retrying`` when it will run again)."""
    if not _Output.enabled:
        return
    lines = []
    for o, status in recorded:
        fields: dict[str, Any] = {
            "batch": batch,
            "instance_id": instance_id,
            "step": o.step_key,
            "attempt": o.attempt,
            "status": "retrying" if status is StepStatus.QUEUED else status.value,
            "duration": round(max(0.0, (o.finished_at - o.started_at).total_seconds()), 3),
            "error_class": error_class(o.error),
        }
        if o.map_index >= 0:
            fields["map_index"] = o.map_index
        lines.append(("step attempt ended", fields))
    if lines:
        _put(lines)


def instance_ended(batch: str, instance_id: int, status: InstanceStatus, duration: float) -> None:
    _put(
        (
            "instance ended",
            {
                "batch": batch,
                "instance_id": instance_id,
                "status": status.value,
                "duration": round(duration, 3),
            },
        )
    )


def flush(timeout: float = 5.0) -> None:
    """Return once the lines queued so far are written (or after ``timeout``)."""
    if not _started:
        return
    done = threading.Event()
    _queue.put(done)
    done.wait(timeout)
