"""``stepline``: run, inspect and operate batches from the shell.

Exit codes: 0 success; 1 the instance failed or was cancelled; 2 invalid input (definition,
unknown batch or instance, refused operation); 3 the database is unavailable.

This module builds the command tree; the commands live in the modules beside it and import
what they need when they run, so ``stepline --help`` (and shell completion) load neither
SQLAlchemy, structlog nor the engine. Settings are read, and logging set
up, when a command is invoked.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from stepline.cli import definitions, inspection, operations, oracle, running, serving
from stepline.cli.common import (
    Db,  # noqa: F401 (re-exported for the tests and any extension)
    load_settings,
    out,
)

app = typer.Typer(
    name="stepline",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    help="Durable DAG batches: every step's result in your own database.",
)
db_app = typer.Typer(no_args_is_help=True, help="Stepline's own tables.")


def _version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out.print(f"stepline {version('stepline')}")
        except PackageNotFoundError:
            out.print("stepline (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version"
        ),
    ] = False,
) -> None:
    """Durable DAG batches: every step's result in your own database."""
    if ctx.resilient_parsing:  # shell completion: nothing runs
        return
    # A command is about to run: an invalid setting ends it before it does anything.
    from stepline.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, settings.secrets)


# In the order `stepline --help` lists them.
command: Callable[..., Any]
for command in (
    running.run,
    serving.serve,
    serving.worker,
    running.retry,
    running.cancel,
    running.recover,
    definitions.apply,
    definitions.validate,
    definitions.batches,
):
    app.command()(command)
app.command("next")(definitions.next_fires)
app.command()(inspection.instances)
app.command()(inspection.show)
app.command("import-oracle")(oracle.import_oracle)
for command in (
    operations.pause,
    operations.resume,
    operations.backfill,
    operations.delete,
    operations.logs,
    operations.purge,
):
    app.command()(command)
db_app.command("upgrade")(definitions.db_upgrade)
app.add_typer(db_app, name="db")


def main() -> None:
    # Start-up makes a few hundred thousand objects (modules, classes, functions) that live
    # as long as the process, and the collector would walk them again at every collection:
    # a tenth of a short command's time. It stays off until the command, its imports done,
    # opens its service (open_service), which freezes them out of it and turns it back on
    # before the database is opened.
    gc.disable()
    # Runner modules are found the way uvicorn and celery find apps: from the current dir.
    sys.path.insert(0, os.getcwd())
    app()
