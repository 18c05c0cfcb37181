"""``${NAME}`` references to environment variables, as written in definitions.

A definition names a secret (a webhook URL, an API key, a password) without holding it:
``url: "${WEEKLY_ALERT_WEBHOOK_URL}"`` is read from the environment of the process that
uses it. Every place that resolves or recognises such a reference uses this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class UnsetVariable(ValueError):
    """A ``${NAME}`` reference whose environment variable is not set."""

    def __init__(self, name: str) -> None:
        super().__init__(f"references ${{{name}}}, but the environment variable {name} is not set")
        self.name = name


def expand_env(
    text: str,
    environ: Mapping[str, str] | None = None,
    *,
    on_value: Callable[[str], object] | None = None,
) -> str:
    """``text`` with every ``${NAME}`` replaced by the variable's value.

    ``environ`` defaults to ``os.environ``; ``on_value`` sees each value substituted (to
    mask it later). Raises UnsetVariable for the first variable that is not set.
    """
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise UnsetVariable(name)
        value = env[name]
        if on_value is not None:
            on_value(value)
        return value

    return ENV_REFERENCE.sub(substitute, text)


def has_env_references(text: str) -> bool:
    return ENV_REFERENCE.search(text) is not None


def strip_env_references(text: str) -> str:
    """``text`` without its ``${NAME}`` references (what is literally written around them)."""
    return ENV_REFERENCE.sub("", text)
