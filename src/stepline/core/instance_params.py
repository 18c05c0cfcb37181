"""An instance's params: the batch's defaults, templates resolved, then the overrides.

A default param may use ``{{ scheduled_for }}`` (the instance's cron fire time, ISO 8601 in
the batch's timezone) or ``{{ scheduled_date }}`` (its date, ``YYYY-MM-DD``); an instance
with no fire time (a manual run) uses the time it is created. Overrides given with the
trigger are data, never templates.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from stepline.core.definition import BatchDefinition
from stepline.core.templates import TemplateError, has_templates, resolve
from stepline.errors import SteplineError

__all__ = ["PARAM_NAMES", "instance_params"]

PARAM_NAMES = ("scheduled_for", "scheduled_date")


def instance_params(
    definition: BatchDefinition,
    overrides: Mapping[str, Any],
    scheduled_for: datetime | None,
    timezone: str,
) -> dict[str, Any]:
    defaults = {k: v for k, v in definition.params.items() if k not in overrides}
    if defaults and has_templates(defaults):
        when = (scheduled_for or datetime.now(UTC)).astimezone(ZoneInfo(timezone))
        namespace = {"scheduled_for": when.isoformat(), "scheduled_date": when.date().isoformat()}
        try:
            defaults = resolve(defaults, namespace)
        except TemplateError as exc:
            raise SteplineError(f"batch {definition.name!r}: params: {exc}") from None
    return {**defaults, **overrides}
