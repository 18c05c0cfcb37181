"""The scheduler objects of one Oracle owner: read live, or from the exported JSON file.

Both inputs give the same :class:`Catalog`: rows of ALL_SCHEDULER_JOBS, _JOB_ARGS, _PROGRAMS,
_PROGRAM_ARGS, _CHAINS, _CHAIN_STEPS, _CHAIN_RULES and _SCHEDULES as dictionaries with
lower-case column names. Timestamps are read as text with their offset (python-oracledb
returns TIMESTAMP WITH TIME ZONE as a naive datetime, which would lose the zone), and the
region name separately. ``docs/oracle/export-scheduler.sql`` runs the same queries in
SQL*Plus and writes the JSON file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "QUERIES", "Catalog", "CatalogError", "load_catalog", "read_catalog"]

FORMAT = "stepline-oracle-scheduler/1"

_TS = "TO_CHAR({c}, 'YYYY-MM-DD\"T\"HH24:MI:SSTZH:TZM')"
_TZ = "CASE WHEN {c} IS NOT NULL THEN TO_CHAR(EXTRACT(TIMEZONE_REGION FROM {c})) END"

QUERIES: dict[str, str] = {
    "jobs": (
        "SELECT owner, job_name, job_type, job_action, number_of_arguments, program_owner,"
        " program_name, schedule_owner, schedule_name, schedule_type, repeat_interval,"
        f" {_TS.format(c='start_date')} AS start_date,"
        f" {_TZ.format(c='start_date')} AS start_timezone,"
        f" {_TS.format(c='end_date')} AS end_date,"
        " enabled, auto_drop, max_runs, max_failures, job_class, comments,"
        " TO_CHAR(max_run_duration) AS max_run_duration, state"
        " FROM all_scheduler_jobs WHERE owner = :owner ORDER BY job_name"
    ),
    "job_args": (
        "SELECT owner, job_name, argument_name, argument_position, argument_type, value"
        " FROM all_scheduler_job_args WHERE owner = :owner"
        " ORDER BY job_name, argument_position"
    ),
    "programs": (
        "SELECT owner, program_name, program_type, program_action, number_of_arguments,"
        " enabled, comments FROM all_scheduler_programs WHERE owner = :owner"
        " ORDER BY program_name"
    ),
    "program_args": (
        "SELECT owner, program_name, argument_name, argument_position, argument_type,"
        " default_value, out_argument FROM all_scheduler_program_args WHERE owner = :owner"
        " ORDER BY program_name, argument_position"
    ),
    "chains": (
        "SELECT owner, chain_name, enabled, comments FROM all_scheduler_chains"
        " WHERE owner = :owner ORDER BY chain_name"
    ),
    "chain_steps": (
        "SELECT owner, chain_name, step_name, program_owner, program_name, step_type,"
        " skip, pause FROM all_scheduler_chain_steps WHERE owner = :owner"
        " ORDER BY chain_name, step_name"
    ),
    "chain_rules": (
        "SELECT owner, chain_name, rule_name, condition, action FROM all_scheduler_chain_rules"
        " WHERE owner = :owner ORDER BY chain_name, rule_name"
    ),
    "schedules": (
        "SELECT owner, schedule_name, schedule_type, repeat_interval,"
        f" {_TS.format(c='start_date')} AS start_date,"
        f" {_TZ.format(c='start_date')} AS start_timezone,"
        f" {_TS.format(c='end_date')} AS end_date, comments"
        " FROM all_scheduler_schedules WHERE owner = :owner ORDER BY schedule_name"
    ),
}
_DEFAULT_TIMEZONE = (
    "SELECT value FROM all_scheduler_global_attribute WHERE attribute_name = 'DEFAULT_TIMEZONE'"
)

Row = dict[str, Any]


class CatalogError(ValueError):
    """The input is not a scheduler export this command understands."""


@dataclass
class Catalog:
    """Scheduler objects of one owner, as rows keyed by lower-case column name."""

    owner: str
    jobs: list[Row] = field(default_factory=list)
    job_args: list[Row] = field(default_factory=list)
    programs: list[Row] = field(default_factory=list)
    program_args: list[Row] = field(default_factory=list)
    chains: list[Row] = field(default_factory=list)
    chain_steps: list[Row] = field(default_factory=list)
    chain_rules: list[Row] = field(default_factory=list)
    schedules: list[Row] = field(default_factory=list)
    default_timezone: str | None = None

    def program(self, owner: str | None, name: str) -> Row | None:
        owner, name = _split(owner or self.owner, name)
        return next(
            (p for p in self.programs if p["program_name"] == name and p["owner"] == owner), None
        )

    def schedule(self, owner: str | None, name: str) -> Row | None:
        owner, name = _split(owner or self.owner, name)
        return next(
            (s for s in self.schedules if s["schedule_name"] == name and s["owner"] == owner),
            None,
        )

    def args_of_job(self, name: str) -> list[Row]:
        return [a for a in self.job_args if a["job_name"] == name]

    def args_of_program(self, owner: str, name: str) -> list[Row]:
        return [a for a in self.program_args if a["program_name"] == name and a["owner"] == owner]

    def chain_steps_of(self, owner: str, name: str) -> list[Row]:
        return [s for s in self.chain_steps if s["chain_name"] == name and s["owner"] == owner]

    def chain_rules_of(self, owner: str, name: str) -> list[Row]:
        return [r for r in self.chain_rules if r["chain_name"] == name and r["owner"] == owner]

    def has_chain(self, owner: str, name: str) -> bool:
        return any(c["chain_name"] == name and c["owner"] == owner for c in self.chains)


def read_catalog(connection: Any, owner: str) -> Catalog:
    """Query the ALL_SCHEDULER_* views through a python-oracledb connection.

    Uses only the DB API: ``cursor()``, ``execute(sql, {"owner": ...})``, ``description``,
    ``fetchall()``, ``close()``. Only objects ``owner`` owns are read; the connecting user
    sees those it owns or was granted (ALL_ views).
    """
    owner = owner.upper()
    catalog = Catalog(owner=owner)
    cursor = connection.cursor()
    try:
        for name, sql in QUERIES.items():
            cursor.execute(sql, {"owner": owner})
            columns = [d[0].lower() for d in cursor.description]
            rows = [
                dict(zip(columns, (_text(v) for v in row), strict=True))
                for row in cursor.fetchall()
            ]
            setattr(catalog, name, rows)
        cursor.execute(_DEFAULT_TIMEZONE)
        found = cursor.fetchall()
        catalog.default_timezone = _text(found[0][0]) if found else None
    finally:
        cursor.close()
    return catalog


def load_catalog(path: Path) -> Catalog:
    """Read the JSON file written by ``docs/oracle/export-scheduler.sql``."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{path} is not JSON: {exc}") from None
    return catalog_from_document(document, str(path))


def catalog_from_document(document: Any, source: str = "<json>") -> Catalog:
    if not isinstance(document, Mapping) or document.get("format") != FORMAT:
        raise CatalogError(
            f"{source} is not a scheduler export (expected an object with "
            f'"format": "{FORMAT}", written by docs/oracle/export-scheduler.sql)'
        )
    owner = document.get("owner")
    if not isinstance(owner, str) or not owner:
        raise CatalogError(f'{source}: "owner" must name the schema the jobs belong to')
    catalog = Catalog(owner=owner.upper(), default_timezone=document.get("default_timezone"))
    for name in QUERIES:
        rows = document.get(name) or []
        if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
            raise CatalogError(f'{source}: "{name}" must be a list of objects')
        setattr(catalog, name, [{str(k).lower(): _text(v) for k, v in r.items()} for r in rows])
    for job in catalog.jobs:
        if not job.get("job_name"):
            raise CatalogError(f"{source}: a job has no job_name")
        job.setdefault("owner", catalog.owner)
    return catalog


def _text(value: Any) -> Any:
    read = getattr(value, "read", None)  # a CLOB (job_action, repeat_interval may be long)
    return read() if callable(read) else value


def _split(owner: str, name: str) -> tuple[str, str]:
    name = name.strip().strip('"')
    if "." in name:
        owner, name = name.split(".", 1)
    return owner.strip('"').upper(), name.strip('"').upper()
