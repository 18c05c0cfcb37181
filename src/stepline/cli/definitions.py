"""Definitions: ``apply``, ``validate``, ``batches``, ``next``, ``db upgrade``, and how a
command finds the definitions a target names (a file, a directory, ``package.module:attr``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from stepline.cli.common import (
    Db,
    Json,
    Tz,
    err,
    errors,
    fail,
    open_service,
    out,
    print_json,
    started,
    tz_option,
    when,
    zone,
)
from stepline.errors import DefinitionError, shown

if TYPE_CHECKING:
    from stepline.core.definition import BatchDefinition
    from stepline.service import Stepline
    from stepline.stores.base import StoredDefinition


def is_file(target: str) -> bool:
    from stepline.core.loader import DEFINITION_SUFFIXES

    if target.endswith(DEFINITION_SUFFIXES) or os.sep in target:
        return True
    try:
        return Path(target).is_file()
    except OSError:  # e.g. a name longer than the file system allows: not a file
        return False


def is_dir(target: str) -> bool:
    try:
        return Path(target).is_dir()
    except OSError:  # a name too long for the file system is no directory
        return False


def add_import_path(path: Path) -> None:
    """A definition's own directory is importable too, so an example folder is self-contained."""
    from stepline.core.loader import definition_files

    try:
        files = definition_files(path) if path.is_dir() else [path]
        folders = [path if path.is_dir() else path.parent, *(f.parent for f in files)]
        resolved = [str(folder.resolve()) for folder in folders]
    except (DefinitionError, OSError):
        return  # not a readable path: loading it reports why
    for folder in resolved:
        if folder not in sys.path:
            sys.path.insert(1, folder)


def apply_target(service: Stepline, target: str) -> list[StoredDefinition]:
    """Apply a file, a directory or a ``package.module:attribute``."""
    from stepline.core.targets import is_python_target

    if not is_python_target(target):
        add_import_path(Path(target))
    return service.apply_target(target)


def _definitions(target: str) -> Iterable[tuple[object, BatchDefinition | DefinitionError]]:
    """Each definition a target names, with its definition or its problems."""
    from stepline.core.loader import load_definitions
    from stepline.core.targets import is_python_target, load_python_definitions

    if is_python_target(target):
        try:
            return [(target, d) for d in load_python_definitions(target)]
        except DefinitionError as exc:
            return [(target, exc)]
    path = Path(target)
    add_import_path(path)
    return load_definitions(path)


def apply(
    target: Annotated[
        str,
        typer.Argument(
            metavar="PATH", help="A definition file or directory, or package.module:attribute"
        ),
    ],
    db: Db = None,
) -> None:
    """Validate and store definitions as the batches' current versions."""
    with errors(), open_service(db) as service:
        for stored in apply_target(service, target):
            out.print(f"{stored.name}: version {stored.version}")


def validate(
    paths: Annotated[
        list[str], typer.Argument(help="Files or directories, or package.module:attribute")
    ],
) -> None:
    """Check definitions (directories recursively) without touching any database."""
    from stepline.core.definition import BatchDefinition
    from stepline.core.loader import definition_files
    from stepline.core.targets import is_python_target
    from stepline.engine.alerts import alert_problems

    started()
    valid = invalid = 0
    with errors():
        for target in paths:
            if (
                not is_python_target(target)
                and is_dir(target)
                and not definition_files(Path(target))
            ):
                fail(f"{target}: no .yaml, .yml or .json definition under this directory", 2)
            for file, result in _definitions(target):
                problems = (
                    list(result.problems)
                    if isinstance(result, DefinitionError)
                    else alert_problems(result, str(file))
                )
                if problems:
                    invalid += 1
                    for problem in problems:
                        err.print(f"[red]error[/]: {escape(str(problem))}")
                else:
                    assert isinstance(result, BatchDefinition)
                    valid += 1
                    out.print(f"{file}: ok ({result.name}, {len(result.steps)} steps)")
    summary = f"{valid} definition{'' if valid == 1 else 's'} valid"
    if invalid:
        out.print(f"{summary}, {invalid} invalid")
        raise typer.Exit(2)
    out.print(summary)


def batches(as_json: Json = False, tz: Tz = None, db: Db = None) -> None:
    """List stored batches: version, schedule, paused or not, next fire time."""
    from rich.table import Table

    from stepline.scheduling.cron import CronSchedule

    forced = tz_option(tz)
    with errors(), open_service(db) as service:
        table = Table("name", "version", "cron", "timezone", "steps", "next fire", "state")
        rows = []
        now = datetime.now(UTC)
        for stored in service.store.definitions():
            d = stored.definition
            batch_tz = d.timezone or service.settings.timezone
            fire = CronSchedule.parse(d.cron, batch_tz).next_fire_time(now) if d.cron else None
            shown_fire = when(fire, forced or zone(batch_tz))
            state = "paused" if stored.paused else "active"
            rows.append(
                {
                    "name": d.name,
                    "version": stored.version,
                    "cron": d.cron,
                    "timezone": batch_tz,
                    "steps": len(d.steps),
                    "paused": stored.paused,
                    "next_fire": shown_fire or None,
                }
            )
            row = (d.name, str(stored.version), d.cron or "", batch_tz, str(len(d.steps)))
            table.add_row(*row, "" if stored.paused else shown_fire, state)
        if as_json:
            print_json({"batches": rows})
        else:
            out.print(table)


def next_fires(
    batch: str,
    n: Annotated[int, typer.Option("-n", min=1, max=10_000, help="How many fire times")] = 5,
    as_json: Json = False,
    tz: Tz = None,
    db: Db = None,
) -> None:
    """Print the next fire times of a batch, in its timezone (or --tz)."""
    from stepline.scheduling.cron import CronSchedule

    forced = tz_option(tz)
    with errors(), open_service(db) as service:
        d = service.store.definition(batch).definition
        if not d.cron:
            fail(f"batch {shown(batch)} has no cron schedule", 2)
        batch_tz = d.timezone or service.settings.timezone
        fires = CronSchedule.parse(d.cron, batch_tz).fire_times(datetime.now(UTC), n)
        lines = [when(f, forced or zone(batch_tz)) for f in fires]
        if as_json:
            print_json({"batch": batch, "timezone": batch_tz, "fire_times": lines})
            return
        for line in lines:
            out.print(line)


def db_upgrade(db: Db = None) -> None:
    """Apply migrations to the latest schema."""
    with errors(), open_service(db) as service:
        out.print(f"schema is up to date on {service.store!r}")
