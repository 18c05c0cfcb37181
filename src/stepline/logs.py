"""Structured logging: console or JSON lines on stderr, with secrets redacted."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterable

import structlog

from stepline.engine import outcome_log
from stepline.redact import redact_processor


def configure_logging(
    level: str = "info",
    fmt: str = "console",
    secrets: Callable[[], Iterable[str]] = list,
    *,
    outcome_lines: bool = False,
) -> None:
    """Log on stderr; with ``outcome_lines`` (``serve``) also the engine's line per step
    attempt and per instance."""
    # Settings do not change while the process runs: find the secrets once, not per line,
    # and only when a line is logged (their URLs are parsed by SQLAlchemy, which a command
    # that logs nothing, `stepline run --help` say, need not import).
    known = functools.cache(lambda: list(secrets()))
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    threshold = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    outcome_log.configure(fmt, outcome_lines and threshold <= logging.INFO, sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor(known),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
