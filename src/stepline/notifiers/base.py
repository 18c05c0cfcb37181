"""The notifier port: where the failure of an instance is reported."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from stepline.errors import SteplineError
from stepline.redact import redact_text

__all__ = ["Alert", "Notifier", "NotifyError", "notify_all"]

_MAX_ERROR_CHARS = 1000


class NotifyError(SteplineError):
    """An alert could not be delivered; the message is safe to log."""


@dataclass(frozen=True)
class Alert:
    batch: str
    instance_id: int
    status: str
    failed_steps: tuple[str, ...]
    error: str | None
    inspect_hint: str
    link: str | None = None

    def headline(self) -> str:
        return f"[stepline] {self.batch} instance {self.instance_id} {self.status}"

    def text(self) -> str:
        lines = [self.headline()]
        if self.failed_steps:
            lines.append(f"Failed steps: {', '.join(self.failed_steps)}")
        if self.error:
            lines.append(f"Error: {_truncate(redact_text(self.error, ()), _MAX_ERROR_CHARS)}")
        lines.append(f"Inspect: {self.inspect_hint}")
        if self.link:
            lines.append(f"Link: {self.link}")
        return "\n".join(lines)


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit].rstrip()}… ({len(text) - limit} more characters)"


class Notifier(ABC):
    @abstractmethod
    def send(self, alert: Alert) -> None:
        """Deliver ``alert`` to this notifier's destination, once.

        Raises :class:`NotifyError` when the alert cannot be delivered (destination down,
        refused, timed out or answering an error); its message names the destination only in
        redacted form and is safe to log and show. Other exceptions are bugs, but callers
        must survive them too: use :func:`notify_all`, which never raises.

        Returns within the notifier's configured timeout: no network operation waits longer
        than it, and a send makes a small fixed number of them (at most one retry, and only
        when the connection was refused), so a dead or hanging destination cannot hold up the
        instance for long. Delivery is at most once; there is no queue or later redelivery.

        Never logs, raises or ``repr``s a secret (passwords, tokens, the secret parts of URLs
        and headers): ``repr(notifier)`` is the safe description used in logs.
        """


class _Logger(Protocol):
    def info(self, event: str, /, **kw: Any) -> Any: ...

    def warning(self, event: str, /, **kw: Any) -> Any: ...


def notify_all(
    notifiers: Sequence[Notifier], alert: Alert, log: _Logger | None = None
) -> list[str]:
    """Send ``alert`` to every notifier; return one message per failure and never raise."""
    logger: _Logger = log if log is not None else structlog.get_logger("stepline.notifiers")
    errors: list[str] = []
    for notifier in notifiers:
        description = _describe(notifier)
        try:
            notifier.send(alert)
        except Exception as exc:
            # Caught whatever it is: an alert failure must never fail the instance.
            if isinstance(exc, NotifyError):
                reason = str(exc)
            else:
                # Foreign exceptions make no secrecy promise, so mask any URLs they carry.
                reason = redact_text(f"{type(exc).__name__}: {exc}", ())
            message = f"{description}: {reason}"
            errors.append(message)
            # No exc_info: rich tracebacks render frame locals, which hold the secrets.
            logger.warning(
                "alert_failed",
                notifier=description,
                error=reason,
                batch=alert.batch,
                instance_id=alert.instance_id,
            )
        else:
            logger.info(
                "alert_sent", notifier=description, batch=alert.batch, instance_id=alert.instance_id
            )
    return errors


def _describe(notifier: Notifier) -> str:
    try:
        return repr(notifier)
    except Exception:
        return type(notifier).__name__
