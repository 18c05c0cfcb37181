"""Named business databases: the databases runners work on, apart from Stepline's own.

Configured as ``STEPLINE_CONNECTIONS__<NAME>=<SQLAlchemy URL>`` (or ``.env``), e.g.
``STEPLINE_CONNECTIONS__REPORT=oracle+oracledb://scott:tiger@db:1521/?service_name=ORCL``.
Names are case-insensitive (stored lower-case): ``report``, ``REPORT`` and ``Report`` are one
connection. Each name gets one SQLAlchemy :class:`~sqlalchemy.Engine` (one connection pool),
created on first use, so a process that never touches a database never connects to it.

A runner reaches them through ``ctx.connections`` (a :class:`Connections`); code running
outside the engine uses :func:`default_connections`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from stepline.errors import MissingDriver
from stepline.redact import redact_url
from stepline.settings import Secret, Settings

__all__ = [
    "Connections",
    "UnknownConnection",
    "connections_for",
    "default_connections",
    "reset_default_connections",
]

ENV_PREFIX = "STEPLINE_CONNECTIONS__"


class UnknownConnection(KeyError):
    """A runner named a connection that settings do not configure.

    A KeyError (``name in connections`` semantics), whose text is a readable sentence rather
    than KeyError's quoted repr.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown connection"


class Connections:
    """Named SQLAlchemy engines, created lazily, one per name, shared by all threads.

    Thread-safe: runners of one process run in many threads and may ask for the same name at
    once; exactly one engine is created for it. Engines use ``pool_pre_ping`` so that a
    connection the database (or a firewall) closed during a week of idleness is replaced
    instead of failing the Monday run.

    ``repr`` and error messages show URLs with passwords masked, never the secret.
    """

    def __init__(
        self,
        urls: Mapping[str, str | Secret],
        *,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        """``urls`` maps names to SQLAlchemy URLs; ``engine_options`` go to create_engine.

        Raises ValueError if two names differ only in case (they would be one connection).
        """
        self._urls: dict[str, str] = {}
        for name, url in urls.items():
            key = normalise_name(name)
            if key in self._urls:
                raise ValueError(f"connection {name!r} is configured twice (names ignore case)")
            self._urls[key] = url if isinstance(url, str) else url.get_secret_value()
        self._options = {"pool_pre_ping": True, **(engine_options or {})}
        self._engines: dict[str, sa.Engine] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Connections:
        """The connections ``settings`` (default: ``Settings()``, i.e. the environment) name."""
        return cls((settings or Settings()).connections)

    def names(self) -> list[str]:
        """The configured names, lower-case and sorted."""
        return sorted(self._urls)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalise_name(name) in self._urls

    def __len__(self) -> int:
        return len(self._urls)

    def engine(self, name: str) -> sa.Engine:
        """The engine of connection ``name``, created on first use.

        Raises :class:`UnknownConnection` (a KeyError) naming the configured connections and
        the environment variable that would configure ``name``. Creating an engine does not
        connect; a database that is down fails the first statement, not this call.
        """
        key = normalise_name(name)
        engine = self._engines.get(key)
        if engine is not None:
            return engine
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                if key not in self._urls:
                    raise UnknownConnection(self._unknown_message(name))
                url = sa.make_url(self._urls[key])
                try:
                    engine = sa.create_engine(url, **self._options)
                except ImportError as exc:
                    raise MissingDriver.for_backend(url.get_backend_name(), exc) from None
                self._engines[key] = engine
            return engine

    __getitem__ = engine

    @contextmanager
    def begin(self, name: str) -> Iterator[sa.Connection]:
        """A connection of ``name`` in a transaction: committed on exit, rolled back on error."""
        with self.engine(name).begin() as conn:
            yield conn

    def dialect(self, name: str) -> str:
        """The SQLAlchemy dialect name of ``name`` (``postgresql``, ``mysql``, ``oracle``...)."""
        return self.engine(name).dialect.name

    def secrets(self) -> list[str]:
        """Passwords of the configured URLs, for log redaction."""
        found = []
        for url in self._urls.values():
            try:
                password = sa.make_url(url).password
            except Exception:
                continue
            if password:
                found.append(str(password))
        return found

    def dispose(self) -> None:
        """Close every pool. The object stays usable: the next use creates a new engine."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.dispose()

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={safe_url(url)}" for name, url in sorted(self._urls.items()))
        return f"Connections({shown})"

    def _unknown_message(self, name: str) -> str:
        configured = ", ".join(self.names()) or "none"
        variable = ENV_PREFIX + normalise_name(name).upper()
        return (
            f"connection {name!r} is not configured (configured: {configured}); "
            f"set the environment variable {variable}=<SQLAlchemy URL>, "
            f"e.g. {variable}=postgresql+psycopg://user:password@host:5432/dbname"
        )


def normalise_name(name: str) -> str:
    """Connection names ignore case, like the environment variables that define them."""
    return name.strip().lower()


def safe_url(url: str) -> str:
    """``url`` with its password (and any secret query value) masked, for display."""
    try:
        rendered = sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        # Not a URL SQLAlchemy understands: mask it whole rather than risk showing a secret.
        return "***"
    # Only a query can still hold a secret (e.g. ?password=); redact_url would otherwise
    # normalise the path (sqlite:////abs/path would lose a slash).
    return redact_url(rendered) if "?" in rendered else rendered


_default: Connections | None = None
_default_lock = threading.Lock()


def default_connections() -> Connections:
    """The process-wide connections, built from ``Settings()`` on first use (thread-safe).

    Runners use it when ``ctx.connections`` is None (e.g. when called outside the engine).
    """
    global _default
    current = _default
    if current is not None:
        return current
    with _default_lock:
        if _default is None:
            _default = Connections.from_settings()
        return _default


def connections_for(ctx: Any) -> Connections:
    """A runner's connections: ``ctx.connections``, or :func:`default_connections` if None.

    ``ctx`` is the StepContext; outside the engine (tests, scripts) it may lack them.
    """
    connections: Connections | None = getattr(ctx, "connections", None)
    return connections if connections is not None else default_connections()


def reset_default_connections() -> None:
    """Dispose the process-wide connections; the next use reads settings again (for tests)."""
    global _default
    with _default_lock:
        current, _default = _default, None
    if current is not None:
        current.dispose()
