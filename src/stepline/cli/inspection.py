"""Looking at instances: ``instances`` and ``show``."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from stepline.cli.common import (
    Db,
    InstanceId,
    Json,
    Tz,
    batch_zones,
    errors,
    open_service,
    out,
    print_json,
    tz_option,
    when,
)
from stepline.core.states import InstanceStatus

if TYPE_CHECKING:
    from stepline.service import Stepline


def instances(
    batch: Annotated[str | None, typer.Argument()] = None,
    status: Annotated[InstanceStatus | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many")] = 50,
    before: Annotated[
        int | None, typer.Option(min=1, help="Only instances older than this id (paging)")
    ] = None,
    as_json: Json = False,
    tz: Tz = None,
    db: Db = None,
) -> None:
    """List instances, newest first; times in each batch's timezone (or --tz)."""
    from rich.table import Table

    forced = tz_option(tz)
    with errors(), open_service(db) as service:
        found = service.store.instances(batch, status, limit, before=before)
        zones = batch_zones(service, forced)
        if as_json:
            rows = [_instance_json(service, i, zones(i.batch)) for i in found]
            print_json({"instances": rows}, service.secrets())
            return
        table = Table("id", "batch", "version", "status", "trigger", "created", "duration")
        for i in found:
            table.add_row(
                str(i.id),
                i.batch,
                str(i.definition_version),
                i.status.value,
                i.trigger,
                when(i.created_at, zones(i.batch)),
                _duration(i.started_at, i.finished_at),
            )
        out.print(table)


def show(
    instance_id: InstanceId,
    as_json: Json = False,
    tz: Tz = None,
    db: Db = None,
) -> None:
    """Show an instance and each step: status, attempt, duration, result or error."""
    from rich.table import Table

    from stepline.engine.alerts import step_names
    from stepline.redact import redact_text, redact_value, secret_values

    forced = tz_option(tz)
    with errors(), open_service(db) as service:
        i = service.store.instance(instance_id)
        where = batch_zones(service, forced)(i.batch)
        # A runner may copy a secret param anywhere: mask its value wherever it shows.
        secrets = [*service.secrets(), *secret_values(i.params)]
        if as_json:
            document = _instance_json(service, i, where)
            document["steps"] = [
                {
                    "key": r.step_key,
                    "map_index": r.map_index,
                    "status": r.status.value,
                    "attempt": r.attempt,
                    "started_at": when(r.started_at, where) or None,
                    "finished_at": when(r.finished_at, where) or None,
                    "result_payload": r.result_payload,
                    "error": r.error,
                }
                for r in service.store.step_results(instance_id)
            ]
            print_json(document, secrets)
            return
        params = redact_value(dict(i.params), secrets)
        out.print(
            f"instance {i.id}  batch {i.batch} v{i.definition_version}  {i.status.value}  "
            f"trigger {i.trigger}  params {escape(str(params))}"
        )
        times = [
            f"{label} {when(value, where)}"
            for label, value in (
                ("scheduled for", i.scheduled_for),
                ("created", i.created_at),
                ("started", i.started_at),
                ("finished", i.finished_at),
            )
            if value is not None
        ]
        out.print("  ".join(times))
        if i.error:
            out.print(f"error: {escape(redact_text(i.error, secrets))}")
        table = Table("step", "status", "attempt", "duration", "result / error")
        rows = service.store.step_results(instance_id)
        for r, key in zip(rows, step_names(service.store, i, rows), strict=True):
            detail = (
                _short(_first_line(redact_text(r.error, secrets)))
                if r.error
                else _short(redact_value(r.result_payload, secrets))
            )
            table.add_row(
                key, r.status.value, str(r.attempt), _duration(r.started_at, r.finished_at), detail
            )
        out.print(table)
        attempts = service.store.attempts(instance_id)
        if attempts:
            history = Table("step", "attempt", "status", "error", title="earlier attempts")
            for a in attempts:
                key = a.step_key if a.map_index < 0 else f"{a.step_key}[{a.map_index}]"
                first = _first_line(redact_text(a.error, secrets)) if a.error else ""
                history.add_row(key, str(a.attempt), a.status.value, _short(first))
            out.print(history)


def _instance_json(service: Stepline, i: Any, zone: Any) -> dict[str, Any]:
    from stepline.redact import MASK, is_secret_name

    return {
        "id": i.id,
        "batch": i.batch,
        "version": i.definition_version,
        "status": i.status.value,
        "trigger": i.trigger,
        "params": {k: MASK if is_secret_name(k) else v for k, v in i.params.items()},
        "scheduled_for": when(i.scheduled_for, zone) or None,
        "created_at": when(i.created_at, zone),
        "started_at": when(i.started_at, zone) or None,
        "finished_at": when(i.finished_at, zone) or None,
        "error": i.error,
    }


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return f"{(end - start).total_seconds():.3f}s"


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _short(value: object, width: int = 60) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return escape(text if len(text) <= width else text[: width - 1] + "…")
