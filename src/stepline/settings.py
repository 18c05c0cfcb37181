"""Settings from ``STEPLINE_*`` environment variables or ``.env``.

A value Stepline does not understand is refused when the settings are read (the CLI exits
with code 2 naming the setting and its valid values), never ignored.

Every command reads them, so this module imports nothing heavy: the table of settings below
is the whole schema. Names are case-insensitive (``stepline_db`` is ``STEPLINE_DB``), an
environment variable wins over ``.env``, and values given to ``Settings(...)`` win over both.
``STEPLINE_CONNECTIONS__<NAME>`` (or ``STEPLINE_CONNECTIONS`` holding a JSON object) names a
business database.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from stepline.errors import InvalidSetting

# The dispatchers this release can run steps with; a new one is one more name here.
DISPATCHERS = ("direct", "celery")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("console", "json")
PREFIX = "stepline_"
NESTED = "__"


class Secret:
    """A value kept out of ``repr``, ``str`` and tracebacks; ``get_secret_value()`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SettingsError(InvalidSetting):
    """One or more ``STEPLINE_*`` settings have a value Stepline cannot use."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _one_of(what: str, valid: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        normalized = value.strip().lower()
        if normalized not in valid:
            raise ValueError(f"unknown {what} {value!r}; valid values: {', '.join(valid)}")
        return normalized

    return check


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError("must be an IANA time zone name such as UTC or Asia/Seoul") from None
    return value


def _duration(value: str) -> str:
    from stepline.core.durations import parse_duration

    if parse_duration(value).total_seconds() <= 0:
        raise ValueError("must be a positive duration such as 90d")
    return value


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its type (``str``, ``int``, ``float``, ``secret`` or ``connections``),
    default, bounds and meaning (the table of docs/settings.md says the same)."""

    kind: str
    default: Any
    description: str
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    check: Callable[[str], str] | None = None
    optional: bool = False
    echoed: bool = False  # safe to repeat in an error message (others may hold passwords)

    def parse(self, value: Any) -> Any:
        """The value as the setting holds it; ValueError naming what is wrong."""
        if value is None:
            if self.optional:
                return None
            raise ValueError("a value is required")
        if self.kind == "secret":
            return Secret(_text(value))
        if self.kind == "connections":
            return _connections(value)
        if self.kind in ("int", "float"):
            return self._number(value)
        text = _text(value)
        return self.check(text) if self.check else text

    def _number(self, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"must be a number, not {type(value).__name__}")
        try:
            number = float(value)
        except ValueError:
            kind = "a whole number" if self.kind == "int" else "a number"
            raise ValueError(f"must be {kind}") from None
        if not math.isfinite(number):
            raise ValueError("must be a finite number")
        if self.kind == "int":
            if not number.is_integer():
                raise ValueError("must be a whole number")
            number = int(value) if isinstance(value, int) else int(number)  # 5, "5", "5.0"
        if self.gt is not None and not number > self.gt:
            raise ValueError(f"must be greater than {_bound(self.gt)}")
        if self.ge is not None and not number >= self.ge:
            raise ValueError(f"must be at least {_bound(self.ge)}")
        if self.le is not None and not number <= self.le:
            raise ValueError(f"must be at most {_bound(self.le)}")
        return number


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _text(value: Any) -> str:
    if hasattr(value, "get_secret_value"):  # a Secret, or pydantic's SecretStr
        value = value.get_secret_value()
    if not isinstance(value, str):
        raise ValueError(f"must be text, not {type(value).__name__}")
    return value


def _connections(value: Any) -> dict[str, Secret]:
    """Connections from a mapping of names to URLs, a JSON object's text, or a list of them
    merged in order (the layers ``_read`` found in ``.env`` and the environment)."""
    merged: dict[str, Any] = {}
    for layer in value if isinstance(value, list) else [value]:
        if isinstance(layer, str):
            try:
                layer = json.loads(layer)
            except ValueError:
                raise ValueError(
                    "must be a JSON object of names and URLs; or set STEPLINE_CONNECTIONS__<NAME>"
                ) from None
        if not isinstance(layer, Mapping):
            raise ValueError("must map names to database URLs")
        merged.update(layer)
    return {str(name): Secret(_text(url)) for name, url in merged.items()}


FIELDS: dict[str, Setting] = {
    "db": Setting("str", "sqlite:///stepline.db", "Stepline's own database URL"),
    "api_token": Setting("secret", None, "Bearer token of the HTTP API", optional=True),
    "dispatcher": Setting(
        "str", "direct", " or ".join(DISPATCHERS), check=_one_of("dispatcher", DISPATCHERS)
    ),
    "broker_url": Setting("secret", None, "Celery broker URL", optional=True),
    "queue": Setting("str", "stepline", "Celery queue of steps that name no queue"),
    "broker_visibility_timeout": Setting(
        "float",
        3600.0,
        "Redis broker: seconds before an unacknowledged step is resent",
        gt=0,
        echoed=True,
    ),
    "timezone": Setting(
        "str", "UTC", "Default timezone of cron schedules", check=_timezone, echoed=True
    ),
    "capacity": Setting("int", 32, "Steps one process runs at once", ge=1, echoed=True),
    "lease_seconds": Setting(
        "float", 30.0, "Owner lease, timed by the database", gt=0, echoed=True
    ),
    "max_result_bytes": Setting(
        "int",
        16 * 1024 * 1024,
        "Largest step result stored, in bytes of JSON; a larger one fails the step",
        ge=1024,
        echoed=True,
    ),
    "log_format": Setting(
        "str", "console", "console or json", check=_one_of("log format", LOG_FORMATS)
    ),
    "log_level": Setting(
        "str",
        "info",
        "debug, info, warning, error or critical",
        check=_one_of("log level", LOG_LEVELS),
    ),
    "step_log_limit": Setting(
        "int",
        65_536,
        "Bytes of log stored per step attempt (up to 4 MiB); 0 stores none",
        ge=0,
        le=4_194_304,
        echoed=True,
    ),
    "retention": Setting(
        "str",
        None,
        "serve purges finished instances older than this (e.g. 90d); unset: keep all",
        check=_duration,
        optional=True,
        echoed=True,
    ),
    "connections": Setting(
        "connections", {}, "Named business databases: STEPLINE_CONNECTIONS__NAME"
    ),
    "db_connect_timeout": Setting(
        "float",
        10.0,
        "Seconds to wait for a connection to Stepline's database",
        gt=0,
        echoed=True,
    ),
    "db_statement_timeout": Setting(
        "float",
        30.0,
        "Seconds one statement on Stepline's database may take (0: no limit); "
        "migrations are exempt",
        ge=0,
        echoed=True,
    ),
    "secret_names": Setting(
        "str",
        "",
        "Comma-separated extra name endings that mark a param or field secret "
        "(besides password, token, secret, api_key, ...)",
    ),
}


class Settings:
    """The settings of this process.

    ``Settings()`` reads the environment and ``.env`` (``_env_file``; ``None`` reads no file);
    keyword arguments, named as the attributes, win over both. Raises SettingsError naming
    every setting whose value is wrong, and TypeError for a name that is not a setting.
    """

    __slots__ = tuple(FIELDS)

    db: str
    api_token: Secret | None
    dispatcher: str
    broker_url: Secret | None
    queue: str
    broker_visibility_timeout: float
    timezone: str
    capacity: int
    lease_seconds: float
    max_result_bytes: int
    log_format: str
    log_level: str
    step_log_limit: int
    retention: str | None
    connections: dict[str, Secret]
    db_connect_timeout: float
    db_statement_timeout: float
    secret_names: str

    def __init__(
        self,
        _env_file: str | os.PathLike[str] | None = ".env",
        *,
        _environ: Mapping[str, str] | None = None,
        **values: Any,
    ) -> None:
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise TypeError(f"unknown setting {', '.join(unknown)}")
        read = _read(os.environ if _environ is None else _environ, _env_file)
        problems: list[str] = []
        for name, setting in FIELDS.items():
            from_user = name in values
            value = values[name] if from_user else read.get(name, setting.default)
            try:
                object.__setattr__(self, name, setting.parse(value))
            except (ValueError, OverflowError) as exc:
                echo = setting.echoed and isinstance(value, str | int | float)
                shown = f" (got {value!r})" if echo and repr(value) not in str(exc) else ""
                problems.append(f"invalid setting STEPLINE_{name.upper()}: {exc}{shown}")
        if problems:
            raise SettingsError(problems)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"settings are read-only; use replace({name}=...)")

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS if name != "db")
        return f"Settings({shown})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and all(
            getattr(self, name) == getattr(other, name) for name in FIELDS
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Callable[..., Settings], tuple[dict[str, Any]]]:
        """Copied and pickled by value (``__setattr__`` refuses the default way)."""
        return _rebuilt, ({name: getattr(self, name) for name in FIELDS},)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, checked as any setting is; the environment is not read."""
        return _rebuilt({name: getattr(self, name) for name in FIELDS} | changes)

    def secret_name_list(self) -> list[str]:
        return [n.strip() for n in self.secret_names.split(",") if n.strip()]

    def broker(self) -> str:
        """The broker URL of the celery dispatcher; ValueError naming the fix if unset."""
        if self.broker_url is None or not self.broker_url.get_secret_value():
            raise ValueError(
                "the celery dispatcher needs a broker: set STEPLINE_BROKER_URL to "
                "redis://host:6379/0 or amqp://user:password@host:5672//"
            )
        return self.broker_url.get_secret_value()

    def secrets(self) -> list[str]:
        """Every configured secret value, for redaction of logs and error messages: the API
        token, the broker URL, the connection URLs, and their passwords and query tokens."""
        from stepline.redact import url_secrets

        values = [s.get_secret_value() for s in (self.api_token, self.broker_url) if s]
        values += [c.get_secret_value() for c in self.connections.values()]
        for url in [self.db, *values]:
            values.extend(_url_passwords(url))
            if "://" in url:
                values.extend(url_secrets(url))
        return list(dict.fromkeys(v for v in values if v))


def _rebuilt(values: dict[str, Any]) -> Settings:
    return Settings(None, _environ={}, **values)


def _read(environ: Mapping[str, str], env_file: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The raw values of the settings: ``.env``'s, then the environment's over them. Names
    ignore case; other names are ignored. Connections are layers merged by name in that
    order: each source's ``STEPLINE_CONNECTIONS`` (a JSON object), then its
    ``STEPLINE_CONNECTIONS__X`` (connection ``x``)."""
    found: dict[str, Any] = {}
    layers: list[Any] = []
    sources: list[Mapping[str, str | None]] = []
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        sources.append(dotenv_values(env_file))
    sources.append(environ)
    nested = "connections" + NESTED
    for source in sources:
        named: dict[str, str] = {}
        for key, value in source.items():
            name = key.lower()
            if value is None or not name.startswith(PREFIX):
                continue
            name = name[len(PREFIX) :]
            if name.startswith(nested):
                named[name[len(nested) :]] = value
            elif name == "connections":
                layers.append(value)
            elif name in FIELDS:
                found[name] = value
        if named:
            layers.append(named)
    if layers:
        found["connections"] = layers
    return found


def _url_passwords(url: str) -> list[str]:
    """The password of a SQLAlchemy URL (which urlsplit may not parse, e.g. oracle DSNs)."""
    from sqlalchemy import make_url

    try:
        password = make_url(url).password
    except Exception:
        return []
    return [str(password)] if password else []
