"""What every command shares: the consoles, the common options, errors and exit codes, and
how times and values are shown.

Kept light on purpose: ``stepline --help`` imports this module and the command modules,
so SQLAlchemy, structlog and the engine are imported inside the functions that use them,
when a command runs.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from stepline.errors import (
    Conflict,
    DefinitionError,
    InvalidSetting,
    NotFound,
    SteplineError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from stepline.service import Stepline
    from stepline.settings import Settings

# Off a terminal (pipes, CI, tests) lines are not folded at 80 columns. No emoji codes: a
# message quoting `jobs:cool` or a batch named `:fire:` prints them as typed.
out = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, emoji=False, width=None if sys.stderr.isatty() else 160)

InstanceId = Annotated[int, typer.Argument(metavar="ID", max=2**63 - 1)]
"""An instance id argument: a larger number is refused as a usage error (exit 2)."""

Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="STEPLINE_DB",
        show_envvar=True,
        help="Database URL (default: sqlite:///stepline.db)",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
Tz = Annotated[
    str | None,
    typer.Option("--tz", help="Show times in this IANA timezone (default: the batch's)"),
]
Params = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        help=(
            "k=v, repeatable. v is read as YAML and stored as JSON: 5, true, null, [a, b]; "
            "a date or timestamp becomes ISO text (2024-06-05); quote to keep text ('k=\"5\"')"
        ),
    ),
]


def load_settings() -> Settings:
    """Settings from the environment; an invalid value ends the command with exit 2."""
    from stepline.settings import Settings, SettingsError

    try:
        return Settings()
    except SettingsError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/]: {escape(problem)}")
        raise SystemExit(2) from None


def _redacted(text: str) -> str:
    from stepline.redact import redact_text, remembered_secrets

    return redact_text(text, remembered_secrets())


@contextmanager
def errors() -> Iterator[None]:
    """Stepline's errors as a message on stderr and the exit code of the module docstring
    of :mod:`stepline.cli.app`."""
    try:
        yield
    except DefinitionError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/]: {escape(_redacted(str(problem)))}")
        raise typer.Exit(2) from None
    except (NotFound, Conflict, InvalidSetting) as exc:
        fail(str(exc) + (f"; {exc.hint}" if exc.hint else ""), 2)
    except StoreUnavailable as exc:
        fail(str(exc), 3)
    except SteplineError as exc:
        fail(str(exc), 2)


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[red]error[/]: {escape(_redacted(message))}")
    raise typer.Exit(code)


def open_service(db: str | None, **kwargs: Any) -> Stepline:
    from stepline.service import Stepline

    started()  # before the database is opened: a migration runs with the collector on
    return Stepline(db=db, **kwargs)


def started() -> None:
    """The command has imported what it works with (see ``main``): what exists now lives as
    long as the process, so it is frozen out of the garbage collector, turned back on."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def tz_option(name: str | None) -> Any:
    if name is None:
        return None
    try:
        return zone(name)
    except (ValueError, KeyError, OSError):
        fail(f"--tz {name!r} is not an IANA timezone (e.g. UTC, Asia/Seoul)", 2)


def when(value: datetime | None, where: Any) -> str:
    """A time in zone ``where`` with its UTC offset, so it is never ambiguous."""
    if value is None:
        return ""
    return value.astimezone(where).isoformat(timespec="seconds")


def batch_zones(service: Stepline, forced: Any) -> Callable[[str], Any]:
    """batch name -> the zone to show its times in (``--tz`` wins)."""
    cache: dict[str, Any] = {}

    def zone_of(batch: str) -> Any:
        if forced is not None:
            return forced
        if batch not in cache:
            try:
                name = service.store.definition(batch).definition.timezone
            except NotFound:  # a deleted batch
                name = None
            cache[batch] = zone(name or service.settings.timezone)
        return cache[batch]

    return zone_of


def print_json(value: Any, secrets: list[str] | None = None) -> None:
    import json

    text = json.dumps(value, ensure_ascii=False, default=str)
    if secrets:
        from stepline.redact import redact_text

        text = redact_text(text, secrets)
    typer.echo(text)
