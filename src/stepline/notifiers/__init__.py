"""Notifiers: where batch failures are reported, built from a definition's ``alerts:`` list."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stepline.core.durations import parse_duration
from stepline.core.environment import UnsetVariable, expand_env
from stepline.notifiers.base import Alert, Notifier, NotifyError, notify_all

if TYPE_CHECKING:
    from stepline.notifiers.smtp import SmtpNotifier
    from stepline.notifiers.webhook import WebhookNotifier

__all__ = [
    "Alert",
    "Notifier",
    "NotifyError",
    "SmtpNotifier",
    "WebhookNotifier",
    "notifier_from_config",
    "notify_all",
]


def __getattr__(name: str) -> Any:
    # httpx and smtplib load when a notifier is built, not with the engine that may send.
    if name == "WebhookNotifier":
        from stepline.notifiers.webhook import WebhookNotifier

        return WebhookNotifier
    if name == "SmtpNotifier":
        from stepline.notifiers.smtp import SmtpNotifier

        return SmtpNotifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

_FIELDS = {
    "webhook": frozenset({"type", "url", "timeout", "headers"}),
    "email": frozenset(
        {"type", "host", "port", "from", "to", "username", "password", "starttls", "ssl", "timeout"}
    ),
}
_TYPE_ALIASES = {"webhook": "webhook", "slack": "webhook", "email": "email", "smtp": "email"}


def notifier_from_config(
    config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Notifier:
    """Build a notifier from one ``alerts:`` entry, resolving ``${ENV_NAME}`` references.

    Raises ValueError naming the offending field; secret values are never echoed.
    """
    reader = _ConfigReader(config, os.environ if environ is None else environ)
    kind = reader.text("type")
    if kind not in _TYPE_ALIASES:
        raise ValueError(
            f"alert type {kind!r} is unknown: use 'webhook' (Slack-compatible) or 'email'"
        )
    reader.kind = _TYPE_ALIASES[kind]
    reader.reject_unknown_fields()
    if reader.kind == "webhook":
        from stepline.notifiers.webhook import WebhookNotifier

        return WebhookNotifier(
            reader.text("url"),
            timeout=reader.duration("timeout", default=5.0),
            headers=reader.mapping("headers"),
        )
    from stepline.notifiers.smtp import SmtpNotifier

    use_ssl = reader.boolean("ssl")
    starttls = reader.boolean("starttls")
    return SmtpNotifier(
        reader.text("host"),
        # The conventional port of each security mode, so users seldom need to set one.
        reader.integer("port", default=465 if use_ssl else 587 if starttls else 25),
        sender=reader.text("from"),
        recipients=reader.addresses("to"),
        username=reader.optional_text("username"),
        password=reader.optional_text("password"),
        starttls=starttls,
        use_ssl=use_ssl,
        timeout=reader.duration("timeout", default=10.0),
    )


class _ConfigReader:
    def __init__(self, config: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        if not isinstance(config, Mapping):
            kind = type(config).__name__
            raise ValueError(f"an alert must be a mapping with a 'type' field, got a {kind}")
        self._config = config
        self._environ = environ
        self.kind = "alert"

    def reject_unknown_fields(self) -> None:
        allowed = _FIELDS[self.kind]
        unknown = sorted(str(key) for key in self._config if key not in allowed)
        if unknown:
            raise ValueError(
                f"{self.kind} alert has unknown field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )

    def _raw(self, field: str) -> Any:
        value = self._config.get(field)
        if isinstance(value, str):
            return self._expand(field, value)
        return value

    def _expand(self, field: str, value: str) -> str:
        try:
            return expand_env(value, self._environ)
        except UnsetVariable as exc:
            raise ValueError(f"{self.kind} alert field {field!r} {exc}") from None

    def optional_text(self, field: str) -> str | None:
        value = self._raw(field)
        if value is None:
            return None
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ValueError(f"{self.kind} alert field {field!r} must be a string")
        return str(value)

    def text(self, field: str) -> str:
        value = self.optional_text(field)
        if not value:
            raise ValueError(f"{self.kind} alert is missing required field {field!r}")
        return value

    def integer(self, field: str, default: int) -> int:
        value = self._raw(field)
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        raise ValueError(f"{self.kind} alert field {field!r} must be an integer, got {value!r}")

    def boolean(self, field: str) -> bool:
        value = self._raw(field)
        if value is None or isinstance(value, bool):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"{self.kind} alert field {field!r} must be true or false, got {value!r}")

    def duration(self, field: str, default: float) -> float:
        value = self._raw(field)
        if value is None:
            return default
        try:
            seconds = parse_duration(value).total_seconds()
        except ValueError as exc:
            raise ValueError(f"{self.kind} alert field {field!r}: {exc}") from None
        if seconds <= 0:
            raise ValueError(
                f"{self.kind} alert field {field!r} must be a positive duration such as 5s "
                f"or 1m, got {value!r}"
            )
        return seconds

    def addresses(self, field: str) -> list[str]:
        value = self._config.get(field)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"{self.kind} alert field {field!r} must be a list of addresses")
        # Splitting on commas lets one environment variable hold several addresses.
        expanded = ",".join(self._expand(field, item) for item in value)
        addresses = [address.strip() for address in expanded.split(",") if address.strip()]
        if not addresses:
            raise ValueError(f"{self.kind} alert is missing required field {field!r}")
        return addresses

    def mapping(self, field: str) -> dict[str, str] | None:
        value = self._config.get(field)
        if value is None:
            return None
        if not isinstance(value, Mapping) or not all(
            isinstance(key, str) and isinstance(item, str) for key, item in value.items()
        ):
            raise ValueError(f"{self.kind} alert field {field!r} must map names to strings")
        return {key: self._expand(f"{field}.{key}", item) for key, item in value.items()}
