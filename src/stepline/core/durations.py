"""Durations as written in definitions: ``500ms``, ``2s``, ``10m``, ``1h30m``, or seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


_MAX_SECONDS = 366 * 86400.0  # a year: longer is a typo, and timedelta overflows past ~2.7e6 y


def parse_duration(value: object) -> timedelta:
    """Parse a duration; raise ValueError with the offending text and the accepted forms."""
    if isinstance(value, timedelta):
        return _checked(value.total_seconds(), value)
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 10m, 1h30m or seconds")
    if isinstance(value, int | float):
        return _checked(float(value), value)
    text = str(value).strip().replace(" ", "")
    if not text:
        raise ValueError("invalid duration '': use e.g. 30s, 10m, 1h30m or seconds")
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isnan(number):
        return _checked(number, value)
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(
            f"invalid duration {value!r}: use e.g. 500ms, 30s, 10m, 1h30m, 1d "
            "or a number of seconds"
        )
    return _checked(total, value)


def _checked(seconds: float, original: object) -> timedelta:
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {original!r}: must not be negative")
    if seconds > _MAX_SECONDS:
        raise ValueError(f"invalid duration {original!r}: longer than a year")
    return timedelta(seconds=seconds)
