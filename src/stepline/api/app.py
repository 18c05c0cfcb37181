"""The FastAPI application of ``stepline serve``: the SPEC's HTTP API over a ``Stepline``.

``create_app(service)`` builds it around a service that the caller owns and runs (``serve``
runs the scheduler and the orchestrator's driver thread in the same process).
``create_app_from_env`` is the entry point for ``uvicorn --factory``: an API-only process
that builds its own service from ``STEPLINE_*`` settings; the instances it creates are
queued in the database for a ``stepline serve`` process to run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from stepline.api.dashboard import router as dashboard_router
from stepline.api.errors import install_error_handlers
from stepline.api.health import DatabaseProbe
from stepline.api.metrics import Metrics
from stepline.api.middleware import BodySizeLimit, UnhandledErrors
from stepline.api.routes import database_answers, health_router, router
from stepline.api.security import check_token
from stepline.logs import configure_logging
from stepline.service import Stepline
from stepline.settings import Settings

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app", "create_app_from_env"]

DEFAULT_MAX_BODY_BYTES = 1_048_576

_DESCRIPTION = """\
Run, inspect and change Stepline batches.

Every endpoint except `/healthz` requires `Authorization: Bearer <STEPLINE_API_TOKEN>` when
a token is configured. Errors answer `{"detail": "<what is wrong>"}` with a 4xx status;
secrets (passwords, tokens, API keys in URLs) are masked as `***` in every answer.
"""


def _version() -> str:
    try:
        return version("stepline")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(
    service: Stepline,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    metrics: Metrics | None = None,
) -> FastAPI:
    """The HTTP API over ``service``, which the caller keeps open and eventually closes.

    ``max_body_bytes`` bounds every request body (413 beyond it). ``metrics`` is the
    process's :class:`Metrics` (give the same one to :class:`StepMetrics` and the
    scheduler); a new one is made if omitted. Its instance counts are read from
    ``service.store``. Raises ValueError for a negative limit or a blank API token.
    """
    return _build(service, max_body_bytes, metrics, on_shutdown=None)


def create_app_from_env() -> FastAPI:
    """An API-only app for ``uvicorn stepline.api.app:create_app_from_env --factory``.

    Builds ``Stepline()`` from settings (``STEPLINE_DB``, ``STEPLINE_API_TOKEN``, ``.env``)
    and closes it when the server stops. Nothing runs instances in this process.
    uvicorn does not tell the app which address it listens on, so :func:`check_bind`
    cannot run here; without a token the app still answers only local connections.
    """
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, settings.secrets)
    check_token(settings.api_token.get_secret_value() if settings.api_token is not None else None)
    # PUT validates that runners import, from the current directory as the CLI does.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    service = Stepline(settings)
    return _build(service, DEFAULT_MAX_BODY_BYTES, None, on_shutdown=service.close)


def _build(
    service: Stepline,
    max_body_bytes: int,
    metrics: Metrics | None,
    *,
    on_shutdown: Callable[[], None] | None,
) -> FastAPI:
    if max_body_bytes < 0:
        raise ValueError(f"max_body_bytes must be >= 0, got {max_body_bytes}")
    token = service.settings.api_token
    check_token(token.get_secret_value() if token is not None else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(
        title="Stepline",
        version=_version(),
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.probe = DatabaseProbe(lambda: database_answers(service))
    app.state.metrics = metrics or Metrics()
    app.state.metrics.watch(service.store.engine)
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(router)
    app.include_router(dashboard_router)
    # Added last = outermost: the size limit applies before anything reads the body.
    app.add_middleware(UnhandledErrors, secrets=service.secrets)
    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)
    return app
