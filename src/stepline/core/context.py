"""What a runner receives: the step context of the runner contract (see SPEC)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stepline.core.records import quick_init


class DoNotRetry(Exception):
    """Raise from a runner to fail the step now, whatever its retry policy says.

    Use it for errors another attempt cannot fix: bad input, a rejected credential.
    """


@quick_init
@dataclass(frozen=True)
class StepContext:
    """The single argument of every runner."""

    batch: str
    instance_id: int
    step: str
    attempt: int
    params: Mapping[str, Any]
    results: Mapping[str, Any]
    """Each upstream step's stored result by key (a list of item results if mapped)."""
    args: Mapping[str, Any]
    """The step's ``with`` arguments, templates resolved."""
    log: Any
    """A structlog logger bound to batch, instance, step and attempt."""
    item: Any = None
    """The map item, for a mapped step."""
    map_index: int = -1
    connections: Any = None
    """The named business databases (a ``stepline.connections.Connections``):
    ``ctx.connections["report"]`` is the connection's SQLAlchemy engine. The engine always
    sets it; None only in a context built by hand (``connections_for(ctx)`` then falls back
    to the process-wide connections)."""
    upstream: Mapping[str, str] = field(default_factory=dict)
    """Each upstream step's status by key: ``succeeded``, ``failed``, ``skipped``,
    ``upstream_failed`` or ``cancelled`` (what a handler after a failure needs to know)."""
