"""The long-running processes: ``serve`` (scheduler, HTTP API, direct dispatcher) and
``worker`` (a Celery worker)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from stepline.cli.common import Db, errors, fail, load_settings, open_service, out
from stepline.cli.definitions import apply_target

if TYPE_CHECKING:
    import threading


STOP_MARGIN = 10.0
"""Seconds beyond ``--grace`` that a stopping ``serve`` waits for its threads."""


def _leave_if_stuck(seconds: float) -> threading.Timer:
    """Leave at once if stopping takes longer than ``seconds``: a thread blocked on a
    database that does not answer cannot see the stop flag, and a normal exit would wait
    for it, and for the release of the lease, for ever. What this process holds is in the
    database and is recovered as after a crash."""
    import sys
    import threading

    def leave() -> None:
        import structlog

        structlog.get_logger("stepline.serve").error(
            "stopping without a clean shutdown: the database does not answer; "
            "unfinished instances are left for recovery",
            waited_seconds=seconds,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(seconds, leave)
    timer.daemon = True
    timer.start()
    return timer


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
    from stepline.logs import configure_logging
    from stepline.scheduling.scheduler import Scheduler
    from stepline.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, settings.secrets, outcome_lines=True)
    token = settings.api_token
    try:
        # Blank first: a blank token is "configured" for check_bind, yet no client can send it.
        check_token(token.get_secret_value() if token is not None else None)
        check_bind(host, token is not None)
    except ValueError as exc:
        fail(str(exc), 2)
    metrics = Metrics()
    watchdog: threading.Timer | None = None
    with errors(), open_service(db, listener=StepMetrics(metrics)) as service:
        for target in paths or []:
            for stored in apply_target(service, target):
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
            watchdog = _leave_if_stuck(grace + STOP_MARGIN)
            if ticker.is_alive():
                ticker.join()
            if driver.is_alive():
                driver.join()
    if watchdog is not None:
        watchdog.cancel()  # stopped, its lease released (leaving open_service)
    out.print("stopped; unfinished instances are left for recovery")


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

    settings = load_settings().replace(dispatcher="celery")
    names = [q.strip() for q in (queues or settings.queue).split(",") if q.strip()]
    bad = [q for q in names if not QUEUE_PATTERN.match(q)]
    if not names or bad:
        fail(f"--queues {queues!r}: give queue names of letters, digits, '_', '-', '.', ':'", 2)
    url = db or settings.db
    timeouts = Timeouts(settings.db_connect_timeout, settings.db_statement_timeout)
    with errors(), open_service(db, settings=settings):
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
