"""Operators' commands: pause, resume, backfill, delete, logs, purge."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from stepline.cli.common import Db, InstanceId, Json, errors, fail, open_service, out
from stepline.core.states import InstanceStatus

if TYPE_CHECKING:
    from stepline.stores.base import StepLogRecord


def pause(batch: str, db: Db = None) -> None:
    """Pause a batch: no cron instance and no trigger until it is resumed."""
    with errors(), open_service(db) as service:
        service.pause(batch)
        out.print(f"{batch}: paused (instances already queued or running go on)")


def resume(batch: str, db: Db = None) -> None:
    """Resume a paused batch; its misfire policy decides about fire times that passed."""
    with errors(), open_service(db) as service:
        stored = service.resume(batch)
        policy = stored.definition.extra.get("misfire", "once")
        out.print(f"{batch}: resumed (misfire policy {policy} decides about missed fire times)")


def _day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is not a date (YYYY-MM-DD)", 2)


def backfill(
    batch: str,
    start: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD (batch timezone)")],
    end: Annotated[str, typer.Option("--to", help="Last day, YYYY-MM-DD, included")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List, create nothing")] = False,
    as_json: Json = False,
    db: Db = None,
) -> None:
    """Create the instances of the cron fire times in a date range (idempotent); `serve`
    runs them oldest first under max_active_instances."""
    from stepline.scheduling.backfill import BackfillError
    from stepline.scheduling.backfill import backfill as run_backfill

    first, last = _day(start, "--from"), _day(end, "--to")
    with errors(), open_service(db) as service:
        try:
            entries = run_backfill(service, batch, first, last, dry_run=dry_run)
        except BackfillError as exc:
            fail(str(exc), 2)
        stored = service.store.definition(batch)
        tz = stored.definition.timezone or service.settings.timezone
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(tz)
        if as_json:
            rows = [
                {
                    "scheduled_for": e.scheduled_for.astimezone(zone).isoformat(),
                    "instance_id": e.instance_id,
                    "state": e.state,
                }
                for e in entries
            ]
            out.print_json(json.dumps({"batch": batch, "fire_times": rows}))
            return
        for e in entries:
            instance = f"instance {e.instance_id}" if e.instance_id is not None else ""
            out.print(f"{e.scheduled_for.astimezone(zone).isoformat()}  {e.state:12}  {instance}")
        counts: dict[str, int] = {}
        for e in entries:
            counts[e.state] = counts.get(e.state, 0) + 1
        summary = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no fire times"
        out.print(f"{batch}: {len(entries)} fire times in {first}..{last} ({tz}): {summary}")


def delete(
    batch: str,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete its instances, results and logs")
    ] = False,
    db: Db = None,
) -> None:
    """Delete a batch (refused while instances run). Its history stays readable unless
    --purge; applying it again brings it back."""
    with errors(), open_service(db) as service:
        deleted = service.delete(batch, purge=purge)
        if purge:
            out.print(f"{batch}: deleted with its history ({deleted} instances)")
        else:
            out.print(f"{batch}: deleted; its instances stay readable (--purge removes them)")


def _print_log(record: StepLogRecord) -> None:
    key = record.step_key if record.map_index < 0 else f"{record.step_key}[{record.map_index}]"
    when = record.created_at.astimezone(UTC).isoformat(timespec="seconds")
    out.print(f"── {escape(key)} attempt {record.attempt} (ended {when})", soft_wrap=True)
    out.print(escape(record.text.rstrip("\n")), soft_wrap=True)


def _log_json(record: StepLogRecord) -> str:
    return json.dumps(
        {
            "step": record.step_key,
            "map_index": record.map_index,
            "attempt": record.attempt,
            "truncated": record.truncated,
            "created_at": record.created_at.isoformat(),
            "text": record.text,
        },
        ensure_ascii=False,
    )


def logs(
    instance_id: InstanceId,
    step: Annotated[str | None, typer.Argument(help="Only this step's logs")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the instance ends")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    db: Db = None,
) -> None:
    """Show what the runners logged, per attempt (stored when each attempt ends)."""
    with errors(), open_service(db) as service:
        after = 0
        while True:
            final = service.store.instance(instance_id).status.is_final
            for record in service.logs(instance_id, step, after_id=after):
                after = record.id
                if as_json:
                    typer.echo(_log_json(record))
                else:
                    _print_log(record)
            if not follow or final:
                return
            time.sleep(1.0)


def purge(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age of finished instances to delete, e.g. 90d")
    ],
    status: Annotated[
        list[InstanceStatus] | None,
        typer.Option(help="Only instances in this final status (repeatable)"),
    ] = None,
    batch: Annotated[str | None, typer.Option(help="Only this batch's instances")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, delete nothing")] = False,
    db: Db = None,
) -> None:
    """Delete finished instances with their steps, attempts and logs, in short transactions.

    Never an unfinished instance; fire times are kept, so none runs twice.
    """
    from stepline.core.durations import parse_duration
    from stepline.stores.base import PurgeFilter

    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        fail(f"--older-than: {exc}", 2)
    statuses = tuple(status or [s for s in InstanceStatus if s.is_final])
    unfinished = [s.value for s in statuses if not s.is_final]
    if unfinished:
        fail(f"--status {', '.join(unfinished)}: only finished instances are purged", 2)
    with errors(), open_service(db) as service:
        which = PurgeFilter(datetime.now(UTC) - age, statuses, batch)
        if dry_run:
            count = service.store.count_purgeable(which)
            out.print(f"would delete {count} instances finished before {which.before.isoformat()}")
            return
        count = service.purge(which)
        out.print(f"deleted {count} instances finished before {which.before.isoformat()}")
