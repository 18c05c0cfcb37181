"""``stepline``: run, inspect and operate batches from the shell.

Exit codes: 0 success; 1 the instance failed or was cancelled; 2 invalid input (definition,
unknown batch or instance, refused operation); 3 the database is unavailable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from stepline.core.states import InstanceStatus
from stepline.errors import (
    Conflict,
    DefinitionError,
    InvalidSetting,
    NotFound,
    StoreUnavailable,
    shown,
)

# Start-up is paid on every command, `--help` included: SQLAlchemy, pydantic-settings,
# structlog, httpx and rich's tables load where a command needs them, not here
# (tests/unit/test_cli_startup.py keeps it so).
if TYPE_CHECKING:
    from rich.console import Console

    from stepline.cli.progress import Progress
    from stepline.engine.orchestrator import StepEvent
    from stepline.service import Stepline
    from stepline.settings import Settings

app = typer.Typer(
    name="stepline",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Durable DAG batches: every step's result in your own database.",
)
db_app = typer.Typer(no_args_is_help=True, help="Stepline's own tables.")
app.add_typer(db_app, name="db")


class _LazyConsole:
    """A rich Console made on first use (importing rich costs start-up time)."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def get(self) -> Console:
        """The Console itself (rich's Live needs the object, not attribute access)."""
        if self._console is None:
            from rich.console import Console

            stream = sys.stderr if self._stderr else sys.stdout
            # Off a terminal (pipes, CI, tests) lines are not folded at 80 columns.
            self._console = Console(
                stderr=self._stderr, highlight=False, width=None if stream.isatty() else 160
            )
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


def _real(console: Console) -> Console:
    """The Console behind ``out``/``err`` (rich's Live needs the object itself)."""
    return console.get() if isinstance(console, _LazyConsole) else console


out: Console = _LazyConsole(stderr=False)  # type: ignore[assignment]
err: Console = _LazyConsole(stderr=True)  # type: ignore[assignment]


def escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def Table(*headers: str, **options: Any) -> Any:  # a rich Table, imported when drawn
    from rich.table import Table

    return Table(*headers, **options)


Db = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: STEPLINE_DB or sqlite:///stepline.db)"),
]
Params = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="k=v, repeatable; v is read as YAML (5, true, [a, b])"),
]


def main() -> None:
    # Runner modules are found the way uvicorn and celery find apps: from the current dir.
    sys.path.insert(0, os.getcwd())
    if sys.argv[1:] and "--help" not in sys.argv[1:]:  # help runs no command
        from stepline.logs import configure_logging

        settings = _settings()
        configure_logging(settings.log_level, settings.log_format, settings.secrets)
    app()


def _settings() -> Settings:
    """Settings from the environment; an invalid value ends the command with exit 2."""
    from pydantic import ValidationError

    from stepline.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "STEPLINE_" + "__".join(str(p) for p in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            err.print(f"[red]error[/]: invalid setting {name}: {escape(message)}")
        raise SystemExit(2) from None


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except DefinitionError as exc:
        from stepline.redact import redact_text, remembered_secrets

        for problem in exc.problems:
            shown_problem = redact_text(str(problem), remembered_secrets())
            err.print(f"[red]error[/]: {escape(shown_problem)}")
        raise typer.Exit(2) from None
    except (NotFound, Conflict, InvalidSetting) as exc:
        _fail(str(exc), 2)
    except StoreUnavailable as exc:
        _fail(str(exc), 3)


def _fail(message: str, code: int) -> NoReturn:
    from stepline.redact import redact_text, remembered_secrets

    err.print(f"[red]error[/]: {escape(redact_text(message, remembered_secrets()))}")
    raise typer.Exit(code)


def _open(db: str | None, **kwargs: Any) -> Stepline:
    from stepline.service import Stepline

    return Stepline(db=db, **kwargs)


def _is_file(target: str) -> bool:
    from stepline.core.loader import DEFINITION_SUFFIXES

    if target.endswith(DEFINITION_SUFFIXES) or os.sep in target:
        return True
    try:
        return Path(target).is_file()
    except OSError:  # e.g. a name longer than the file system allows: not a file
        return False


def _add_import_path(path: Path) -> None:
    """A definition's own directory is importable too, so an example folder is self-contained."""
    try:
        folder = str((path if path.is_dir() else path.parent).resolve())
    except OSError:
        return  # not a readable path: loading it reports why
    if folder not in sys.path:
        sys.path.insert(1, folder)


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    import yaml

    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--param {item!r} must be key=value", 2)
        try:
            params[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            params[key] = value
    return params


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
    batch: Annotated[str, typer.Argument(help="A stored batch name, or a definition file")],
    param: Params = None,
    db: Db = None,
) -> None:
    """Run one instance to the end in this process, with live progress."""
    from stepline.cli.progress import Progress

    params = _parse_params(param)
    forward = _Forward()
    with _errors(), _open(db, listener=forward) as service:
        if _is_file(batch):
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
        forward.target = Progress(_real(out), [s.key for s in definition.steps])
        _drive(service, instance.id, forward.target)


@app.command()
def serve(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Definition files or directories to apply")
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
    from stepline.settings import Settings

    settings = Settings()
    token = settings.api_token
    try:
        # Blank first: a blank token is "configured" for check_bind, yet no client can send it.
        check_token(token.get_secret_value() if token is not None else None)
        check_bind(host, token is not None)
    except ValueError as exc:
        _fail(str(exc), 2)
    metrics = Metrics()
    with _errors(), _open(db, listener=StepMetrics(metrics)) as service:
        for path in paths or []:
            _add_import_path(path)
            for stored in service.apply_path(path):
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
    from stepline.cli.progress import Progress

    forward = _Forward()
    with _errors(), _open(db, listener=forward) as service:
        instance = service.retry(instance_id)
        results = service.store.step_results(instance_id)
        out.print(f"instance {instance_id} of {instance.batch} retrying")
        progress = Progress(_real(out), [r.step_key for r in results if r.map_index < 0])
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
    path: Annotated[Path, typer.Argument(help="A definition file or directory")], db: Db = None
) -> None:
    """Validate and store definitions as the batches' current versions."""
    _add_import_path(path)
    with _errors(), _open(db) as service:
        for stored in service.apply_path(path):
            out.print(f"{stored.name}: version {stored.version}")


@app.command()
def validate(paths: Annotated[list[Path], typer.Argument(help="Files or directories")]) -> None:
    """Check definitions without touching any database; print every problem."""
    from stepline.core.definition import BatchDefinition
    from stepline.core.loader import load_definitions
    from stepline.engine.alerts import alert_problems

    bad = 0
    with _errors():
        for path in paths:
            _add_import_path(path)
            for file, result in load_definitions(path):
                problems = (
                    list(result.problems)
                    if isinstance(result, DefinitionError)
                    else alert_problems(result, str(file))
                )
                if problems:
                    bad += 1
                    for problem in problems:
                        err.print(f"[red]error[/]: {escape(str(problem))}")
                else:
                    assert isinstance(result, BatchDefinition)
                    out.print(f"{file}: ok ({result.name}, {len(result.steps)} steps)")
    if bad:
        raise typer.Exit(2)


@app.command()
def batches(db: Db = None) -> None:
    """List stored batches with their current version and next fire time."""
    from stepline.scheduling.cron import CronSchedule

    with _errors(), _open(db) as service:
        table = Table("name", "version", "cron", "timezone", "steps", "next fire")
        now = datetime.now(UTC)
        for stored in service.store.definitions():
            d = stored.definition
            tz = d.timezone or service.settings.timezone
            nxt = ""
            if d.cron:
                fire = CronSchedule.parse(d.cron, tz).next_fire_time(now)
                nxt = fire.astimezone(_zone(tz)).isoformat()
            table.add_row(d.name, str(stored.version), d.cron or "", tz, str(len(d.steps)), nxt)
        out.print(table)


@app.command("next")
def next_fires(
    batch: str,
    n: Annotated[int, typer.Option("-n", help="How many fire times")] = 5,
    db: Db = None,
) -> None:
    """Print the next fire times of a batch, in its timezone."""
    from stepline.scheduling.cron import CronSchedule

    with _errors(), _open(db) as service:
        d = service.store.definition(batch).definition
        if not d.cron:
            _fail(f"batch {shown(batch)} has no cron schedule", 2)
        tz = d.timezone or service.settings.timezone
        for fire in CronSchedule.parse(d.cron, tz).fire_times(datetime.now(UTC), n):
            out.print(fire.astimezone(_zone(tz)).isoformat())


@app.command()
def instances(
    batch: Annotated[str | None, typer.Argument()] = None,
    status: Annotated[InstanceStatus | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option()] = 50,
    db: Db = None,
) -> None:
    """List instances, newest first."""
    with _errors(), _open(db) as service:
        table = Table("id", "batch", "version", "status", "trigger", "created", "duration")
        for i in service.store.instances(batch, status, limit):
            table.add_row(
                str(i.id),
                i.batch,
                str(i.definition_version),
                i.status.value,
                i.trigger,
                i.created_at.isoformat(timespec="seconds"),
                _duration(i.started_at, i.finished_at),
            )
        out.print(table)


@app.command()
def show(instance_id: Annotated[int, typer.Argument(metavar="ID")], db: Db = None) -> None:
    """Show an instance and each step: status, attempt, duration, result or error."""
    from stepline.redact import redact_text, redact_value, secret_values

    with _errors(), _open(db) as service:
        i = service.store.instance(instance_id)
        # A runner may copy a secret param anywhere: mask its value wherever it shows.
        secrets = [*service.secrets(), *secret_values(i.params)]
        params = redact_value(dict(i.params), secrets)
        out.print(
            f"instance {i.id}  batch {i.batch} v{i.definition_version}  {i.status.value}  "
            f"trigger {i.trigger}  params {escape(str(params))}"
        )
        if i.error:
            out.print(f"error: {escape(redact_text(i.error, secrets))}")
        table = Table("step", "status", "attempt", "duration", "result / error")
        for r in service.store.step_results(instance_id):
            key = r.step_key if r.map_index < 0 else f"{r.step_key}[{r.map_index}]"
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
