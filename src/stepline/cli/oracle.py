"""``import-oracle``: DBMS_SCHEDULER jobs into batch files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from stepline.cli.common import fail, out, started


def import_oracle(
    from_json: Annotated[
        Path | None,
        typer.Option("--from-json", help="JSON written by docs/oracle/export-scheduler.sql"),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Read live: oracle://user:password@host:1521/?service_name=X"),
    ] = None,
    owner: Annotated[
        str | None, typer.Option("--owner", help="Schema owning the jobs (default: the user)")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the batches")] = Path("."),
    connection: Annotated[
        str, typer.Option("--connection", help="Stepline connection name the steps use")
    ] = "oracle",
    job: Annotated[
        list[str] | None, typer.Option("--job", help="Only this job (repeatable)")
    ] = None,
    qualify: Annotated[
        bool, typer.Option("--qualify", help="Prefix procedures with the owner")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files")] = False,
) -> None:
    """Convert DBMS_SCHEDULER jobs (programs, chains, schedules) into batch YAML files.

    Prints, per job, what was mapped or dropped, the next 10 fire times by our cron and by
    dateutil.rrule side by side, and the DBMS_SCHEDULER.DISABLE statement to run once the
    batch is live. Exit 0: every job converted and the fire times agree; 2: some job was
    refused or disagrees (the others are still written), or the input is invalid.
    """
    from stepline.oracle.catalog import CatalogError, load_catalog, read_catalog
    from stepline.oracle.report import TargetExists, import_jobs, render

    started()
    if (from_json is None) == (url is None):
        fail("give exactly one of --from-json FILE or --url URL", 2)
    try:
        if from_json is not None:
            catalog = load_catalog(from_json)
            if owner and owner.upper() != catalog.owner:
                fail(f"{from_json} holds the jobs of {catalog.owner}, not {owner.upper()}", 2)
        else:
            assert url is not None
            catalog = _read_oracle(url, owner, read_catalog)
        result = import_jobs(
            catalog, out_dir, connection=connection, qualify=qualify, jobs=job or (), force=force
        )
    except (CatalogError, TargetExists, ValueError) as exc:
        fail(str(exc), 2)
    out.print(escape(render(result)))
    if not result.ok:
        raise typer.Exit(2)


def _read_oracle(url: str, owner: str | None, read: Any) -> Any:
    import sqlalchemy as sa

    from stepline.stores.sqlalchemy import create_engine

    try:
        engine = create_engine(url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        fail(f"--url is not a database URL: {exc}", 2)
    if engine.dialect.name != "oracle":
        fail(f"--url must be an Oracle URL (oracle://...), not {engine.dialect.name}", 2)
    schema = (owner or engine.url.username or "").upper()
    if not schema:
        fail("--owner is required when the URL names no user", 2)
    import oracledb

    try:
        raw = engine.raw_connection()
    except (sa.exc.DBAPIError, oracledb.Error) as exc:
        reason = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        where = engine.url.render_as_string(hide_password=True)
        fail(f"cannot connect to {where}: {' '.join(str(reason).split())}", 3)
    try:
        return read(raw, schema)
    except oracledb.Error as exc:
        fail(f"cannot read the scheduler views of {schema}: {' '.join(str(exc).split())}", 2)
    finally:
        raw.close()
        engine.dispose()
