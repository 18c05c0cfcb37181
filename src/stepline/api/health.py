"""``/healthz``'s database check: an answer within a deadline, whatever the database does.

A stalled server (the connection open, nothing answering) can hold a query for as long as
the driver's timeouts allow, or for ever on an established PostgreSQL connection (libpq has
no read timeout). The check therefore runs in a thread of its own and the request waits for
it at most ``deadline`` seconds. At most one check is in flight: while one hangs, later
requests wait on the same one instead of piling up threads and pool connections.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

__all__ = ["DatabaseProbe"]

log = structlog.get_logger("stepline.api")


class _Check:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.answered = False


class DatabaseProbe:
    """Runs ``check`` (True when the database answered) with a deadline, one at a time."""

    def __init__(self, check: Callable[[], bool], deadline: float = 1.5) -> None:
        self._check = check
        self.deadline = deadline
        self._lock = threading.Lock()
        self._current: _Check | None = None

    def answers(self) -> bool:
        """Whether the database answered within ``deadline`` seconds: a new check's answer,
        or the answer of the one already in flight."""
        with self._lock:
            current = self._current
            if current is None:
                current = self._current = _Check()
                threading.Thread(
                    target=self._run, args=(current,), name="stepline-health", daemon=True
                ).start()
        current.done.wait(self.deadline)
        return current.done.is_set() and current.answered

    def _run(self, current: _Check) -> None:
        try:
            current.answered = self._check()
        except Exception as exc:  # a probe must never take the server down
            log.warning("health check failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._current = None
            current.done.set()
