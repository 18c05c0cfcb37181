"""Instance params given as text (``stepline run --param k=v``), read into JSON values.

A value is read as YAML, a superset of JSON: ``5`` is a number, ``true`` a boolean, ``null``
nothing, ``[a, b]`` a list, ``"5"`` the text 5. What YAML reads as a date or a timestamp
becomes its ISO 8601 text (``2024-06-05``, ``2024-06-05T10:00:00+09:00``), because params
are stored as JSON. Anything JSON cannot hold (``.nan``, ``!!binary``, a set, a mapping
with non-text keys) is refused; text that is not YAML at all is kept as it was typed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import yaml

JsonValue = None | bool | int | float | str | list[Any] | dict[str, Any]


def parse_param(item: str) -> tuple[str, JsonValue]:
    """``key=value`` as (key, JSON value); raise ValueError saying what is wrong."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--param {item!r} must be key=value")
    return key, parse_param_value(key, text)


def parse_params(items: Iterable[str]) -> dict[str, JsonValue]:
    return dict(parse_param(item) for item in items)


def parse_param_value(key: str, text: str) -> JsonValue:
    if not text:
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    try:
        return _json(value)
    except ValueError as exc:
        raise ValueError(
            f"--param {key}={text}: {exc}; params are JSON: quote the value to pass it as "
            f"text (--param '{key}=\"{text}\"')"
        ) from None


def _json(value: object) -> JsonValue:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a JSON number")
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list):
        return [_json(item) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("a mapping's keys must be text")
        return {k: _json(v) for k, v in value.items()}
    raise ValueError(f"a YAML {type(value).__name__} has no JSON form")
