"""Errors a user can act on. Every message names the thing that is wrong."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

CLIP = 200


def clip(text: str, limit: int = CLIP) -> str:
    """``text`` cut to ``limit`` characters for an error message, saying how long it was:
    a 100,000-character name echoed whole would bury the message (and fill logs)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def shown(value: object, limit: int = CLIP) -> str:
    """``repr(value)`` for an error message, a long string cut like :func:`clip`."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    return clip(repr(value), limit)


def import_failure(exc: BaseException) -> str:
    """Why importing a user's module failed, for an error message."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({shown(exc.code)})"
    return f"{type(exc).__name__}: {exc}"


class SteplineError(Exception):
    """Base of every error Stepline raises on purpose.

    The message says what is wrong in words every shell can show; ``hint`` may name the
    command that helps, which only the CLI prints (an API answer never suggests a command).
    """

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        self.hint = hint


class InvalidSetting(SteplineError):
    """A setting or option is invalid (e.g. a database URL that names no database):
    refused at start, CLI exit 2."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a definition, located as precisely as we can."""

    message: str
    source: str | None = None
    step: str | None = None

    def __str__(self) -> str:
        where = ": ".join(
            p
            for p in (
                clip(self.source) if self.source else None,
                f"step {shown(self.step)}" if self.step else None,
            )
            if p
        )
        return f"{where}: {self.message}" if where else self.message


class DefinitionError(SteplineError):
    """A batch definition is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class NotFound(SteplineError):
    """A batch, instance or step that the caller named does not exist."""


class Conflict(SteplineError):
    """The request is valid but the stored state does not allow it (e.g. retry of a success)."""


class Paused(Conflict):
    """The batch is paused: it takes no new instance until it is resumed."""


_EXTRAS = {
    "postgresql": ("PostgreSQL", "psycopg", "postgres"),
    "mysql": ("MariaDB/MySQL", "PyMySQL", "mysql"),
    "mariadb": ("MariaDB/MySQL", "PyMySQL", "mysql"),
    "oracle": ("Oracle", "python-oracledb", "oracle"),
}


class MissingDriver(SteplineError):
    """The database driver a URL needs is not installed (the base install has SQLite only)."""

    @classmethod
    def for_backend(cls, backend: str, error: ImportError) -> SteplineError:
        known = _EXTRAS.get(backend)
        if known is None:
            return cls(f"no driver for {backend!r} URLs: {error}")
        database, driver, extra = known
        return cls(
            f"{database} needs the {driver} driver, which is not installed: "
            f"pip install 'stepline[{extra}]'"
        )


class StoreUnavailable(SteplineError):
    """The database cannot be reached, or refused for a passing reason (a deadlock, a
    serialization failure, a timeout); nothing was written by the failed call, and the
    same call may succeed later."""


class StoreRejected(SteplineError):
    """The database refused what was written (a value it cannot hold, a constraint);
    nothing was written, and the same call would fail again."""
