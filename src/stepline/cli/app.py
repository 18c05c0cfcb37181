"""``stepline``: run, inspect and operate batches from the shell.

Exit codes: 0 success; 1 the instance failed or was cancelled; 2 invalid input (definition,
unknown batch or instance, refused operation); 3 the database is unavailable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stepline.cli.progress import Progress
from stepline.core.definition import BatchDefinition
from stepline.core.loader import DEFINITION_SUFFIXES, definition_files, load_definitions
from stepline.core.params import parse_params
from stepline.core.states import InstanceStatus
from stepline.core.targets import is_python_target, load_python_definitions
from stepline.engine.alerts import alert_problems, step_names
from stepline.engine.orchestrator import StepEvent
from stepline.errors import (
    Conflict,
    DefinitionError,
    InvalidSetting,
    NotFound,
    SteplineError,
    StoreUnavailable,
    shown,
)
from stepline.logs import configure_logging
from stepline.redact import redact_text, redact_value, remembered_secrets, secret_values
from stepline.service import Stepline
from stepline.settings import Settings, SettingsError, load_settings
from stepline.stores.base import StoredDefinition

app = typer.Typer(
    name="stepline",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    help="Durable DAG batches: every step's result in your own database.",
)
db_app = typer.Typer(no_args_is_help=True, help="Stepline's own tables.")
app.add_typer(db_app, name="db")

# Off a terminal (pipes, CI, tests) lines are not folded at 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

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
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version"
        ),
    ] = False,
) -> None:
    """Durable DAG batches: every step's result in your own database."""


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


def main() -> None:
    # Runner modules are found the way uvicorn and celery find apps: from the current dir.
    sys.path.insert(0, os.getcwd())
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format, settings.secrets)
    app()


def _settings() -> Settings:
    """Settings from the environment; an invalid value ends the command with exit 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/]: {escape(problem)}")
        raise SystemExit(2) from None


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except DefinitionError as exc:
        for problem in exc.problems:
            shown_problem = redact_text(str(problem), remembered_secrets())
            err.print(f"[red]error[/]: {escape(shown_problem)}")
        raise typer.Exit(2) from None
    except (NotFound, Conflict, InvalidSetting) as exc:
        _fail(str(exc) + (f"; {exc.hint}" if exc.hint else ""), 2)
    except StoreUnavailable as exc:
        _fail(str(exc), 3)
    except SteplineError as exc:
        _fail(str(exc), 2)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[red]error[/]: {escape(redact_text(message, remembered_secrets()))}")
    raise typer.Exit(code)


def _open(db: str | None, **kwargs: Any) -> Stepline:
    return Stepline(db=db, **kwargs)


def _is_file(target: str) -> bool:
    if target.endswith(DEFINITION_SUFFIXES) or os.sep in target:
        return True
    try:
        return Path(target).is_file()
    except OSError:  # e.g. a name longer than the file system allows: not a file
        return False


def _apply(service: Stepline, target: str) -> list[StoredDefinition]:
    """Apply a file, a directory or a ``package.module:attribute``."""
    if not is_python_target(target):
        _add_import_path(Path(target))
    return service.apply_target(target)


def _definitions(target: str) -> Iterable[tuple[object, BatchDefinition | DefinitionError]]:
    """Each definition a target names, with its definition or its problems."""
    if is_python_target(target):
        try:
            return [(target, d) for d in load_python_definitions(target)]
        except DefinitionError as exc:
            return [(target, exc)]
    path = Path(target)
    _add_import_path(path)
    return load_definitions(path)


def _is_dir(target: str) -> bool:
    try:
        return Path(target).is_dir()
    except OSError:  # a name too long for the file system is no directory
        return False


def _add_import_path(path: Path) -> None:
    """A definition's own directory is importable too, so an example folder is self-contained."""
    try:
        files = definition_files(path) if path.is_dir() else [path]
        folders = [path if path.is_dir() else path.parent, *(f.parent for f in files)]
        resolved = [str(folder.resolve()) for folder in folders]
    except (DefinitionError, OSError):
        return  # not a readable path: loading it reports why
    for folder in resolved:
        if folder not in sys.path:
            sys.path.insert(1, folder)


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    try:
        return parse_params(items or [])
    except ValueError as exc:
        _fail(str(exc), 2)


def _drive(service: Stepline, instance_id: int, progress: Progress) -> None:
    try:
        final = service.run_instance(instance_id, on_wait=lambda text: err.print(escape(text)))
    except KeyboardInterrupt:
        progress.close()
        err.print(
            f"interrupted: instance {instance_id} is left for recovery; "
            "`stepline recover` resumes it"
        )
        raise typer.Exit(130) from None
    progress.close()
    if final.status is InstanceStatus.CANCELLED and (final.error or "").startswith("skipped:"):
        _fail(f"instance {final.id} of {final.batch} was not run: {final.error}", 2)
    colour = "green" if final.status is InstanceStatus.SUCCEEDED else "red"
    out.print(
        f"instance {final.id} of {final.batch} [{colour}]{final.status.value}[/] "
        f"in {progress.elapsed():.2f}s ({progress.summary()})"
    )
    if final.status is not InstanceStatus.SUCCEEDED:
        out.print(f"inspect it with `stepline show {final.id}`")
        raise typer.Exit(1)


class _Forward:
    """Lets the orchestrator exist before the progress display that it reports to."""

    target: Progress | None = None

    def __call__(self, event: StepEvent) -> None:
        if self.target is not None:
            self.target(event)


@app.command()
def run(
    batch: Annotated[
        str,
        typer.Argument(help="A stored batch name, a definition file, or package.module:attribute"),
    ],
    param: Params = None,
    db: Db = None,
) -> None:
    """Run one instance to the end in this process, with live progress."""
    params = _parse_params(param)
    forward = _Forward()
    with _errors(), _open(db, listener=forward) as service:
        if is_python_target(batch):
            stored_list = service.apply_target(batch)
            if len(stored_list) != 1:
                names = ", ".join(s.name for s in stored_list)
                _fail(f"{batch} holds {len(stored_list)} batches ({names}); run one by name", 2)
            name = stored_list[0].name
        elif _is_file(batch):
            path = Path(batch)
            if path.is_dir():
                _fail(f"{batch} is a directory; `stepline run` takes one definition file", 2)
            _add_import_path(path)
            (stored,) = service.apply_path(path)
            name = stored.name
        else:
            name = batch
        instance, _ = service.trigger(name, params, "cli", owned=True)
        definition = service.store.definition_for(instance)
        out.print(
            f"instance {instance.id} of {name} started (version {instance.definition_version})"
        )
        forward.target = Progress(out, [s.key for s in definition.steps])
        _drive(service, instance.id, forward.target)


@app.command()
def serve(
    paths: Annotated[
        list[str] | None,
        typer.Argument(help="Definition files or directories, or package.module:attribute"),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    grace: Annotated[
        float, typer.Option(help="Seconds running steps get to finish on SIGTERM")
    ] = 30.0,
    db: Db = None,
) -> None:
    """The single worker: scheduler + HTTP API + direct dispatcher, recovering crashed runs."""
    import signal
    import threading

    import uvicorn

    from stepline.api.app import create_app
    from stepline.api.metrics import Metrics, StepMetrics, observe_scheduler_lag
    from stepline.api.security import check_bind, check_token
    from stepline.scheduling.scheduler import Scheduler

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, settings.secrets, outcome_lines=True)
    token = settings.api_token
    try:
        # Blank first: a blank token is "configured" for check_bind, yet no client can send it.
        check_token(token.get_secret_value() if token is not None else None)
        check_bind(host, token is not None)
    except ValueError as exc:
        _fail(str(exc), 2)
    metrics = Metrics()
    with _errors(), _open(db, listener=StepMetrics(metrics)) as service:
        for target in paths or []:
            for stored in _apply(service, target):
                out.print(f"{stored.name}: version {stored.version}")
        api = create_app(service, metrics=metrics)
        stop = threading.Event()
        driver = threading.Thread(
            target=service.serve_forever,
            args=(stop,),
            kwargs={"grace_seconds": grace},
            name="stepline-driver",
        )
        scheduler = Scheduler(
            service,
            holder=service.orchestrator.owner,
            lease_seconds=settings.lease_seconds,
            on_lag=lambda seconds: observe_scheduler_lag(metrics, seconds),
        )
        ticker = threading.Thread(target=scheduler.run, args=(stop,), name="stepline-scheduler")
        config = uvicorn.Config(
            api,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        # uvicorn catches SIGTERM/SIGINT and re-raises them once it has stopped; with
        # handlers of our own that re-raise is harmless, and the drain below runs.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        try:
            # Inside the try: whatever fails from here on, the threads stop and we exit.
            driver.start()
            ticker.start()
            if settings.retention:
                from stepline.core.durations import parse_duration

                threading.Thread(
                    target=service.purge_forever,
                    args=(stop, parse_duration(settings.retention)),
                    name="stepline-retention",
                    daemon=True,
                ).start()
            out.print(f"serving on http://{host}:{port} (owner {service.orchestrator.owner})")
            uvicorn.Server(config).run()
        finally:
            stop.set()
            if ticker.is_alive():
                ticker.join()
            if driver.is_alive():
                driver.join()
        out.print("stopped; unfinished instances are left for recovery")


@app.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues",
            "-Q",
            help="Comma-separated queues to take steps from (default: STEPLINE_QUEUE)",
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default: CPU count)")
    ] = None,
    db: Db = None,
) -> None:
    """A Celery worker: claims, runs and records steps and advances the DAG itself."""
    from stepline.core.definition import QUEUE_PATTERN
    from stepline.dispatchers.celery import run_worker
    from stepline.stores.sqlalchemy import SqlAlchemyStore, Timeouts, create_engine

    settings = _settings().model_copy(update={"dispatcher": "celery"})
    names = [q.strip() for q in (queues or settings.queue).split(",") if q.strip()]
    bad = [q for q in names if not QUEUE_PATTERN.match(q)]
    if not names or bad:
        _fail(f"--queues {queues!r}: give queue names of letters, digits, '_', '-', '.', ':'", 2)
    url = db or settings.db
    timeouts = Timeouts(settings.db_connect_timeout, settings.db_statement_timeout)
    with _errors(), _open(db, settings=settings):
        pass  # refuses SQLite or a missing broker; brings the schema up to date
    out.print(f"stepline worker on queues {', '.join(names)}")
    run_worker(
        # The worker retries a failed transaction, so connections need no ping per checkout.
        lambda: SqlAlchemyStore(url, engine=create_engine(url, timeouts, pool_pre_ping=False)),
        settings.broker(),
        queues=names,
        default_queue=settings.queue,
        concurrency=concurrency or os.cpu_count() or 1,
        lease_seconds=settings.lease_seconds,
        visibility_timeout=settings.broker_visibility_timeout,
        max_result_bytes=settings.max_result_bytes,
        loglevel=settings.log_level.upper(),
    )


@app.command()
def retry(instance_id: Annotated[int, typer.Argument(metavar="ID")], db: Db = None) -> None:
    """Re-run what did not succeed in a failed or cancelled instance, reusing stored results."""
    forward = _Forward()
    with _errors(), _open(db, listener=forward) as service:
        instance = service.retry(instance_id)
        results = service.store.step_results(instance_id)
        out.print(f"instance {instance_id} of {instance.batch} retrying")
        progress = Progress(out, [r.step_key for r in results if r.map_index < 0])
        for r in results:
            if r.map_index < 0:
                progress.status[r.step_key] = r.status
        forward.target = progress
        _drive(service, instance_id, progress)


@app.command()
def cancel(instance_id: Annotated[int, typer.Argument(metavar="ID")], db: Db = None) -> None:
    """Stop an instance: no new steps start, pending steps end cancelled."""
    with _errors(), _open(db) as service:
        instance = service.cancel(instance_id)
        state = (
            "cancelled"
            if instance.status is InstanceStatus.CANCELLED
            else "cancellation requested; its owner stops it within a second"
        )
        out.print(f"instance {instance_id}: {state}")


@app.command()
def recover(db: Db = None) -> None:
    """Resume every instance whose owner process died, and run them to the end."""
    with _errors(), _open(db) as service:
        recovered = service.recover()
        if not recovered:
            out.print("nothing to recover")
        for instance in recovered:
            out.print(f"instance {instance.id} of {instance.batch}: {instance.status.value}")


@app.command()
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
    with _errors(), _open(db) as service:
        for stored in _apply(service, target):
            out.print(f"{stored.name}: version {stored.version}")


@app.command()
def validate(
    paths: Annotated[
        list[str], typer.Argument(help="Files or directories, or package.module:attribute")
    ],
) -> None:
    """Check definitions (directories recursively) without touching any database."""
    valid = invalid = 0
    with _errors():
        for target in paths:
            if (
                not is_python_target(target)
                and _is_dir(target)
                and not definition_files(Path(target))
            ):
                _fail(f"{target}: no .yaml, .yml or .json definition under this directory", 2)
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


@app.command()
def batches(as_json: Json = False, tz: Tz = None, db: Db = None) -> None:
    """List stored batches: version, schedule, paused or not, next fire time."""
    from stepline.scheduling.cron import CronSchedule

    zone = _tz_option(tz)
    with _errors(), _open(db) as service:
        table = Table("name", "version", "cron", "timezone", "steps", "next fire", "state")
        rows = []
        now = datetime.now(UTC)
        for stored in service.store.definitions():
            d = stored.definition
            batch_tz = d.timezone or service.settings.timezone
            fire = CronSchedule.parse(d.cron, batch_tz).next_fire_time(now) if d.cron else None
            shown = _when(fire, zone or _zone(batch_tz))
            state = "paused" if stored.paused else "active"
            rows.append(
                {
                    "name": d.name,
                    "version": stored.version,
                    "cron": d.cron,
                    "timezone": batch_tz,
                    "steps": len(d.steps),
                    "paused": stored.paused,
                    "next_fire": shown or None,
                }
            )
            row = (d.name, str(stored.version), d.cron or "", batch_tz, str(len(d.steps)))
            table.add_row(*row, "" if stored.paused else shown, state)
        if as_json:
            _json({"batches": rows})
        else:
            out.print(table)


@app.command("next")
def next_fires(
    batch: str,
    n: Annotated[int, typer.Option("-n", min=1, max=10_000, help="How many fire times")] = 5,
    as_json: Json = False,
    tz: Tz = None,
    db: Db = None,
) -> None:
    """Print the next fire times of a batch, in its timezone (or --tz)."""
    from stepline.scheduling.cron import CronSchedule

    zone = _tz_option(tz)
    with _errors(), _open(db) as service:
        d = service.store.definition(batch).definition
        if not d.cron:
            _fail(f"batch {shown(batch)} has no cron schedule", 2)
        batch_tz = d.timezone or service.settings.timezone
        fires = CronSchedule.parse(d.cron, batch_tz).fire_times(datetime.now(UTC), n)
        lines = [_when(f, zone or _zone(batch_tz)) for f in fires]
        if as_json:
            _json({"batch": batch, "timezone": batch_tz, "fire_times": lines})
            return
        for line in lines:
            out.print(line)


@app.command()
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
    zone = _tz_option(tz)
    with _errors(), _open(db) as service:
        found = service.store.instances(batch, status, limit, before=before)
        zones = _batch_zones(service, zone)
        if as_json:
            rows = [_instance_json(service, i, zones(i.batch)) for i in found]
            _json({"instances": rows}, service.secrets())
            return
        table = Table("id", "batch", "version", "status", "trigger", "created", "duration")
        for i in found:
            table.add_row(
                str(i.id),
                i.batch,
                str(i.definition_version),
                i.status.value,
                i.trigger,
                _when(i.created_at, zones(i.batch)),
                _duration(i.started_at, i.finished_at),
            )
        out.print(table)


@app.command()
def show(
    instance_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: Json = False,
    tz: Tz = None,
    db: Db = None,
) -> None:
    """Show an instance and each step: status, attempt, duration, result or error."""
    zone = _tz_option(tz)
    with _errors(), _open(db) as service:
        i = service.store.instance(instance_id)
        where = _batch_zones(service, zone)(i.batch)
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
                    "started_at": _when(r.started_at, where) or None,
                    "finished_at": _when(r.finished_at, where) or None,
                    "result_payload": r.result_payload,
                    "error": r.error,
                }
                for r in service.store.step_results(instance_id)
            ]
            _json(document, secrets)
            return
        params = redact_value(dict(i.params), secrets)
        out.print(
            f"instance {i.id}  batch {i.batch} v{i.definition_version}  {i.status.value}  "
            f"trigger {i.trigger}  params {escape(str(params))}"
        )
        times = [
            f"{label} {_when(value, where)}"
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


@db_app.command("upgrade")
def db_upgrade(db: Db = None) -> None:
    """Apply migrations to the latest schema."""
    with _errors(), _open(db) as service:
        out.print(f"schema is up to date on {service.store!r}")


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def _tz_option(name: str | None) -> Any:
    if name is None:
        return None
    try:
        return _zone(name)
    except (ValueError, KeyError, OSError):
        _fail(f"--tz {name!r} is not an IANA timezone (e.g. UTC, Asia/Seoul)", 2)


def _when(value: datetime | None, zone: Any) -> str:
    """A time in ``zone`` with its UTC offset, so it is never ambiguous."""
    if value is None:
        return ""
    return value.astimezone(zone).isoformat(timespec="seconds")


def _batch_zones(service: Stepline, forced: Any) -> Any:
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
            cache[batch] = _zone(name or service.settings.timezone)
        return cache[batch]

    return zone_of


def _instance_json(service: Stepline, i: Any, zone: Any) -> dict[str, Any]:
    from stepline.redact import MASK, is_secret_name

    return {
        "id": i.id,
        "batch": i.batch,
        "version": i.definition_version,
        "status": i.status.value,
        "trigger": i.trigger,
        "params": {k: MASK if is_secret_name(k) else v for k, v in i.params.items()},
        "scheduled_for": _when(i.scheduled_for, zone) or None,
        "created_at": _when(i.created_at, zone),
        "started_at": _when(i.started_at, zone) or None,
        "finished_at": _when(i.finished_at, zone) or None,
        "error": i.error,
    }


def _json(value: Any, secrets: list[str] | None = None) -> None:
    import json

    text = json.dumps(value, ensure_ascii=False, default=str)
    if secrets:
        from stepline.redact import redact_text

        text = redact_text(text, secrets)
    typer.echo(text)


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


@app.command("import-oracle")
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

    if (from_json is None) == (url is None):
        _fail("give exactly one of --from-json FILE or --url URL", 2)
    try:
        if from_json is not None:
            catalog = load_catalog(from_json)
            if owner and owner.upper() != catalog.owner:
                _fail(f"{from_json} holds the jobs of {catalog.owner}, not {owner.upper()}", 2)
        else:
            assert url is not None
            catalog = _read_oracle(url, owner, read_catalog)
        result = import_jobs(
            catalog, out_dir, connection=connection, qualify=qualify, jobs=job or (), force=force
        )
    except (CatalogError, TargetExists, ValueError) as exc:
        _fail(str(exc), 2)
    out.print(escape(render(result)))
    if not result.ok:
        raise typer.Exit(2)


def _read_oracle(url: str, owner: str | None, read: Any) -> Any:
    import sqlalchemy as sa

    from stepline.stores.sqlalchemy import create_engine

    try:
        engine = create_engine(url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        _fail(f"--url is not a database URL: {exc}", 2)
    if engine.dialect.name != "oracle":
        _fail(f"--url must be an Oracle URL (oracle://...), not {engine.dialect.name}", 2)
    schema = (owner or engine.url.username or "").upper()
    if not schema:
        _fail("--owner is required when the URL names no user", 2)
    import oracledb

    try:
        raw = engine.raw_connection()
    except (sa.exc.DBAPIError, oracledb.Error) as exc:
        reason = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        where = engine.url.render_as_string(hide_password=True)
        _fail(f"cannot connect to {where}: {' '.join(str(reason).split())}", 3)
    try:
        return read(raw, schema)
    except oracledb.Error as exc:
        _fail(f"cannot read the scheduler views of {schema}: {' '.join(str(exc).split())}", 2)
    finally:
        raw.close()
        engine.dispose()


# Registers the operators' commands (pause, resume, backfill, delete, logs, purge) on `app`.
from stepline.cli import operations  # noqa: E402, F401
