"""Per-attempt step logs: what a runner logs, captured where it runs, stored with its outcome.

Two sources end up in an attempt's log: the runner's ``ctx.log`` (a :class:`RunnerLogger`)
and Python ``logging`` records emitted in the runner's thread or task (one handler on the
root logger routes a record to the attempt whose context it was emitted in, through a
context variable, so it works for threads and coroutines alike). The text is capped per
attempt (``STEPLINE_STEP_LOG_LIMIT`` bytes, default 64 KiB; a truncated log says so),
redacted, and travels in the attempt's :class:`~stepline.stores.base.StepOutcome`, so the
store writes it in the transaction that records the outcome: no extra round trip, and a
Celery worker's logs take the same path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import structlog

from stepline.redact import redact_text, remembered_secrets

__all__ = ["DEFAULT_LIMIT", "AttemptLog", "RunnerLogger", "capture", "configure_step_logs"]

DEFAULT_LIMIT = 65_536

_current: ContextVar[AttemptLog | None] = ContextVar("stepline_attempt_log", default=None)
_echo = structlog.get_logger("stepline.runner")


class _Config:
    limit = DEFAULT_LIMIT
    secrets: Callable[[], Iterable[str]] = list
    installed = False
    lock = threading.Lock()


def configure_step_logs(
    limit: int = DEFAULT_LIMIT, secrets: Callable[[], Iterable[str]] = list
) -> None:
    """Set the per-attempt cap in bytes (0 stores no logs) and the process's secrets."""
    _Config.limit = limit
    known = list(secrets())  # settings do not change while the process runs
    _Config.secrets = lambda: known


class AttemptLog:
    """The log of one attempt being written: lines up to the cap, then a count of the rest."""

    __slots__ = ("dropped", "lines", "params", "size")

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.lines: list[str] = []
        self.size = 0
        self.dropped = 0
        self.params = params

    def write(self, line: str) -> None:
        size = len(line.encode("utf-8", "replace")) + 1
        if self.dropped or self.size + size > _Config.limit:
            self.dropped += size
            return
        self.lines.append(line)
        self.size += size

    def text(self) -> tuple[str | None, bool]:
        """The stored form: redacted text (None when nothing was logged), truncated?"""
        if not self.lines and not self.dropped:
            return None, False
        text = "\n".join(self.lines)
        if self.dropped:
            text += (
                f"\n[log truncated: {self.dropped} more bytes were not stored; the cap is "
                f"{_Config.limit} bytes per attempt (STEPLINE_STEP_LOG_LIMIT)]"
            )
        # The instance's secret params are among the remembered ones (execution.py).
        secrets = [*_Config.secrets(), *remembered_secrets()]
        return redact_text(text, secrets), bool(self.dropped)


def capture(params: Mapping[str, Any]) -> AttemptLog | None:
    """Start capturing an attempt (None when logs are off); see :func:`active`."""
    if _Config.limit <= 0:
        return None
    if not _Config.installed:
        _install()
    return AttemptLog(params)


def active(log: AttemptLog | None) -> Any:
    """Make ``log`` the current context's attempt log; returns the token to reset."""
    return _current.set(log)


def release(token: Any) -> None:
    _current.reset(token)


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _render(level: str, event: object, fields: Mapping[str, Any]) -> str:
    extra = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items())
    return f"{_stamp()} {level:<7} {event}" + (f" {extra}" if extra else "")


class RunnerLogger:
    """``ctx.log``: structlog-style calls (``ctx.log.info("loaded", rows=12)``) written to
    the attempt's log and, as before, to the process's log bound to batch, instance, step
    and attempt."""

    __slots__ = ("_bound", "_context", "_fields", "_sink")

    def __init__(
        self,
        sink: AttemptLog | None,
        context: Mapping[str, Any],
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        self._sink = sink
        self._context = context
        self._fields: Mapping[str, Any] = fields or {}
        self._bound: Any = None

    def bind(self, **fields: Any) -> RunnerLogger:
        return RunnerLogger(self._sink, self._context, {**self._fields, **fields})

    def unbind(self, *keys: str) -> RunnerLogger:
        return RunnerLogger(
            self._sink, self._context, {k: v for k, v in self._fields.items() if k not in keys}
        )

    def _log(
        self, level: str, event: object, args: tuple[Any, ...], fields: dict[str, Any]
    ) -> None:
        if args:
            try:
                event = str(event) % args
            except (TypeError, ValueError):
                event = f"{event} {args}"
        exc_info = fields.pop("exc_info", level == "exception")
        if self._sink is not None:
            line = _render(
                "error" if level == "exception" else level, event, {**self._fields, **fields}
            )
            if exc_info:
                import traceback

                line += "\n" + traceback.format_exc().rstrip()
            self._sink.write(line)
        if self._bound is None:
            self._bound = _echo.bind(**self._context)
        getattr(self._bound, level)(
            event, **self._fields, **fields, **({"exc_info": True} if exc_info else {})
        )

    def debug(self, event: object = "", *args: Any, **fields: Any) -> None:
        self._log("debug", event, args, fields)

    def info(self, event: object = "", *args: Any, **fields: Any) -> None:
        self._log("info", event, args, fields)

    msg = info

    def warning(self, event: object = "", *args: Any, **fields: Any) -> None:
        self._log("warning", event, args, fields)

    warn = warning

    def error(self, event: object = "", *args: Any, **fields: Any) -> None:
        self._log("error", event, args, fields)

    def critical(self, event: object = "", *args: Any, **fields: Any) -> None:
        self._log("critical", event, args, fields)

    def exception(self, event: object = "", *args: Any, **fields: Any) -> None:
        self._log("exception", event, args, fields)


class _CaptureHandler(logging.Handler):
    """Routes ``logging`` records to the attempt log of the context they come from."""

    def emit(self, record: logging.LogRecord) -> None:
        log = _current.get()
        if log is None:
            # Not from a runner: behave as if we were not here (Python's last resort
            # prints warnings when no handler is configured).
            root = logging.getLogger()
            if len(root.handlers) == 1 and record.levelno >= logging.lastResort.level:  # type: ignore[union-attr]
                logging.lastResort.handle(record)  # type: ignore[union-attr]
            return
        try:
            line = f"{_stamp()} {record.levelname.lower():<7} {record.name}: {record.getMessage()}"
            if record.exc_info:
                line += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:
            line = f"{_stamp()} unprintable log record from {record.name}"
        log.write(line)


def _install() -> None:
    with _Config.lock:
        if _Config.installed:
            return
        root = logging.getLogger()
        if not root.handlers and root.level > logging.INFO:
            # Nobody configured logging: let runners' info records reach their attempt log.
            root.setLevel(logging.INFO)
        root.addHandler(_CaptureHandler())
        _Config.installed = True
