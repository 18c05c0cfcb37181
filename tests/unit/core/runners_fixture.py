"""Importable runners for the loader tests, standing in for the SPEC's farm_report.steps."""

from __future__ import annotations

from typing import Any

NOT_CALLABLE = 42


def collect_stats(context: Any) -> dict[str, int]:
    return {"rows": 1}


def collect_weather(context: Any) -> dict[str, int]:
    return {"farms": 1}


def check(context: Any) -> bool:
    return True


def run_report(context: Any) -> None:
    return None


def alert_admin(context: Any) -> None:
    return None


class Steps:
    """A class whose static method is reachable as ``runners_fixture:Steps.nested``."""

    @staticmethod
    def nested(context: Any) -> str:
        return "nested"
