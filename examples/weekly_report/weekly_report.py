"""Runners of the weekly farm report (weekly_report.yaml), the seed's Oracle job as a DAG.

    resolve_week ─┬─ collect_stats ───────────────────────────┬─ check ── run_report
                  └─ list_farms ── collect_weather (per farm) ─┘
    alert_admin: runs if anything fails

* ``resolve_week`` fixes the report week once per instance (Monday..Sunday; base_date null →
  the week before today in Asia/Seoul). Its stored result is reused by ``stepline retry``,
  so a retry days later still collects and reports the same week.
* ``collect_stats`` calls the statistics API (URL, key and field mapping from settings) and
  upserts ``TA_STATS_DATA``.
* ``list_farms`` reads ``TA_FARM``; ``collect_weather`` runs once per farm (a mapped step),
  calls Open-Meteo (default, no key) or the KMA short-term forecast, upserts ``TM_WEATHER``.
* ``check`` counts rows in the database: both collections must be complete for the week.
* ``run_report`` calls ``SP_INS_WEEK_MAIN`` (``stepline.sql:call_procedure``), or on SQLite
  :func:`build_report_sqlite`, which runs the same SQL.

Settings are environment variables (or ``.env``) prefixed ``WEEKLY_`` (see
:class:`WeeklySettings`); the database is the Stepline connection ``report``
(``STEPLINE_CONNECTIONS__REPORT=<SQLAlchemy URL>``). Secrets (API keys) are never logged.
"""

from __future__ import annotations

import functools
import json
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from dotenv import dotenv_values
from examples.weekly_report.kma_grid import latlon_to_grid
from pydantic import BaseModel, ConfigDict, SecretStr
from sqlalchemy.dialects import mysql, postgresql, sqlite

from stepline import DoNotRetry, StepContext
from stepline.connections import connections_for
from stepline.http import http_request
from stepline.notify import webhook
from stepline.redact import redact_text
from stepline.sql import call_procedure

__all__ = [
    "WeeklySettings",
    "alert_admin",
    "build_report_sqlite",
    "check",
    "collect_stats",
    "collect_weather",
    "job_log",
    "job_name",
    "list_farms",
    "log_outcomes",
    "report_week",
    "resolve_week",
    "run_report",
    "step_log",
    "upsert",
]

PROCEDURE = "SP_INS_WEEK_MAIN"
PERIODS = ("WEEK",)


class WeeklySettings(BaseModel):
    """The pipeline's settings: ``WEEKLY_*`` environment variables or ``.env`` lines (names
    ignore case; the environment wins), read by :meth:`from_env` and checked by pydantic."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    connection: str = "report"
    timezone: str = "Asia/Seoul"

    stats_url: str | None = None
    stats_key: SecretStr | None = None
    stats_key_param: str = "serviceKey"
    stats_fields: str = "items=items,key=stat_key,value=value"
    """Where the statistics are in the answer: ``items=<dotted path to the list>,
    key=<field naming the statistic>,value=<field holding its value>`` (or the same as JSON)."""
    stats_date_params: str = "startDate,endDate"
    stats_date_format: str = "%Y%m%d"
    stats_min_rows: int = 1

    weather_provider: Literal["open-meteo", "kma"] = "open-meteo"
    open_meteo_url: str = "https://api.open-meteo.com/v1/forecast"
    open_meteo_archive_url: str = "https://archive-api.open-meteo.com/v1/archive"
    kma_url: str = "https://apis.data.go.kr/1360000/VilageFcstInfoService_2.0/getVilageFcst"
    kma_key: SecretStr | None = None
    weather_min_days: int | None = None
    """Days of weather each farm needs for the check; default 7 (Open-Meteo) or 1 (KMA)."""

    http_timeout: float = 10.0
    http_retries: int = 2
    http_backoff: float = 1.0

    @classmethod
    def from_env(cls, env_file: str = ".env") -> WeeklySettings:
        values = {**dotenv_values(env_file), **os.environ}
        prefix = "WEEKLY_"
        return cls.model_validate(
            {
                name[len(prefix) :].lower(): value
                for name, value in values.items()
                if name.upper().startswith(prefix) and value is not None
            }
        )

    def secret_values(self) -> list[str]:
        """The API keys, masked in TS_INS_JOB_LOG messages."""
        return [k.get_secret_value() for k in (self.stats_key, self.kma_key) if k is not None]

    def min_days(self) -> int:
        if self.weather_min_days is not None:
            return self.weather_min_days
        # The KMA short-term forecast covers about three days from its base time.
        return 1 if self.weather_provider == "kma" else 7


# -- tables -------------------------------------------------------------------------------
# Upper-case names unquoted (quote=False): PostgreSQL folds them, Oracle and SQLite ignore
# case, and MariaDB on Linux needs exactly the case the schema files use.

metadata = sa.MetaData()

TA_FARM = sa.Table(
    "TA_FARM",
    metadata,
    sa.Column("farm_id", sa.String(20), primary_key=True),
    sa.Column("farm_name", sa.String(100), nullable=False),
    sa.Column("lat", sa.Numeric(9, 6), nullable=False),
    sa.Column("lon", sa.Numeric(9, 6), nullable=False),
    sa.Column("use_yn", sa.String(1), nullable=False),
    quote=False,
)
TA_STATS_DATA = sa.Table(
    "TA_STATS_DATA",
    metadata,
    sa.Column("period_type", sa.String(10), primary_key=True),
    sa.Column("period_start", sa.Date, primary_key=True),
    sa.Column("stat_key", sa.String(50), primary_key=True),
    sa.Column("stat_value", sa.Numeric(18, 4)),
    sa.Column("collected_at", sa.DateTime),
    quote=False,
)
TM_WEATHER = sa.Table(
    "TM_WEATHER",
    metadata,
    sa.Column("farm_id", sa.String(20), primary_key=True),
    sa.Column("week_start", sa.Date, primary_key=True),
    sa.Column("obs_date", sa.Date, primary_key=True),
    sa.Column("temp_avg", sa.Numeric(5, 2)),
    sa.Column("temp_min", sa.Numeric(5, 2)),
    sa.Column("temp_max", sa.Numeric(5, 2)),
    sa.Column("humidity_avg", sa.Numeric(5, 2)),
    sa.Column("precipitation_mm", sa.Numeric(7, 2)),
    sa.Column("data_source", sa.String(20), nullable=False),
    sa.Column("collected_at", sa.DateTime),
    quote=False,
)
TS_INS_JOB_LOG = sa.Table(
    "TS_INS_JOB_LOG",
    metadata,
    # Identity: generated by the database, so Oracle returns it with RETURNING ... INTO.
    sa.Column(
        "log_id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        sa.Identity(),
        primary_key=True,
    ),
    sa.Column("job_name", sa.String(100), nullable=False),
    sa.Column("instance_id", sa.BigInteger),
    sa.Column("period_type", sa.String(10)),
    sa.Column("period_start", sa.Date),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("ended_at", sa.DateTime),
    sa.Column("rows_written", sa.Integer),
    sa.Column("message", sa.String(4000)),
    quote=False,
)
TR_WEEKLY_FARM_REPORT = sa.Table(
    "TR_WEEKLY_FARM_REPORT",
    metadata,
    sa.Column("period_type", sa.String(10), primary_key=True),
    sa.Column("week_start", sa.Date, primary_key=True),
    sa.Column("farm_id", sa.String(20), primary_key=True),
    sa.Column("item_code", sa.String(60), primary_key=True),
    sa.Column("item_value", sa.Numeric(18, 4)),
    sa.Column("week_end", sa.Date, nullable=False),
    sa.Column("created_at", sa.DateTime),
    quote=False,
)


# -- the report week ------------------------------------------------------------------------


@dataclass(frozen=True)
class Week:
    period: str
    start: date
    end: date

    def to_result(self) -> dict[str, str]:
        return {
            "period": self.period,
            "week_start": self.start.isoformat(),
            "week_end": self.end.isoformat(),
        }

    @classmethod
    def from_result(cls, value: Mapping[str, Any]) -> Week:
        return cls(
            str(value["period"]),
            date.fromisoformat(str(value["week_start"])),
            date.fromisoformat(str(value["week_end"])),
        )


def parse_date(value: Any) -> date | None:
    """A date from ``date``, ``YYYY-MM-DD`` or ``YYYYMMDD``; None/'' → None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    try:
        if re.fullmatch(r"\d{8}", text):
            return datetime.strptime(text, "%Y%m%d").date()
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"base_date {value!r} is not a date (use YYYY-MM-DD)") from None


def report_week(period: Any, base_date: Any, today: date) -> Week:
    """The Monday..Sunday week containing ``base_date``; no base date → the week before today.

    The same rule as SP_INS_WEEK_MAIN's NULL handling, computed here in the batch's time
    zone so that the database server's clock cannot shift the week.
    """
    period = str(period or "WEEK").upper()
    if period not in PERIODS:
        raise ValueError(f"period {period!r} is not supported (only {', '.join(PERIODS)})")
    base = parse_date(base_date) or today - timedelta(days=7)
    start = base - timedelta(days=base.weekday())
    return Week(period, start, start + timedelta(days=6))


def _today(settings: WeeklySettings) -> date:
    return datetime.now(ZoneInfo(settings.timezone)).date()


# -- database helpers -----------------------------------------------------------------------


def upsert(
    conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> int:
    """Insert ``rows`` into ``table``, updating the non-key columns of rows that exist.

    One statement per dialect: ``ON CONFLICT`` (PostgreSQL, SQLite), ``ON DUPLICATE KEY``
    (MariaDB/MySQL), ``MERGE`` (Oracle). Every row must have the same columns. Returns the
    number of rows given.
    """
    if not rows:
        return 0
    columns = [c.name for c in table.columns if c.name in rows[0]]
    updates = [c for c in columns if c not in keys]
    dialect = conn.dialect.name
    statement: Any
    if dialect in ("postgresql", "sqlite"):
        insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
        statement = insert.on_conflict_do_update(
            index_elements=list(keys), set_={c: insert.excluded[c] for c in updates}
        )
    elif dialect in ("mysql", "mariadb"):
        mysql_insert = mysql.insert(table)
        statement = mysql_insert.on_duplicate_key_update(
            {c: mysql_insert.inserted[c] for c in updates}
        )
    elif dialect == "oracle":
        statement = sa.text(oracle_merge_sql(table, keys, columns)).bindparams(
            *[sa.bindparam(c, type_=table.c[c].type) for c in columns]
        )
    else:
        raise ValueError(f"no upsert for a {dialect!r} database")
    conn.execute(statement, [dict(r) for r in rows])
    return len(rows)


def oracle_merge_sql(table: sa.Table, keys: Sequence[str], columns: Sequence[str]) -> str:
    """The MERGE statement that upserts one row of bind values ``:column`` into ``table``."""
    source = ", ".join(f":{c} AS {c}" for c in columns)
    on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    updates = ", ".join(f"t.{c} = s.{c}" for c in columns if c not in keys)
    names = ", ".join(columns)
    values = ", ".join(f"s.{c}" for c in columns)
    matched = f" WHEN MATCHED THEN UPDATE SET {updates}" if updates else ""
    return (
        f"MERGE INTO {table.name} t USING (SELECT {source} FROM dual) s ON ({on})"
        f"{matched} WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})"
    )


class JobLogEntry:
    """The open TS_INS_JOB_LOG row of :func:`job_log`; set ``rows``/``message`` to record,
    and ``week`` when the week became known only inside (``resolve_week``)."""

    def __init__(self, log_id: Any) -> None:
        self.log_id = log_id
        self.rows: int | None = None
        self.message: str | None = None
        self.week: Week | None = None


@contextmanager
def job_log(
    engine: sa.Engine,
    job_name: str,
    *,
    instance_id: int | None = None,
    week: Week | None = None,
    secrets: Sequence[str] = (),
    item: str | None = None,
) -> Iterator[JobLogEntry]:
    """Record a unit of work in TS_INS_JOB_LOG: RUNNING now, SUCCESS or FAILED at the end.

    Each write is its own short transaction, so the RUNNING row is visible while the work
    runs and the FAILED row survives the failure, which is raised again. Error messages are
    stored with ``secrets`` and URL secrets masked, prefixed with ``item`` (a map item's
    name, ``collect_weather[F002]``) when given.
    """
    prefix = f"{item}: " if item else ""
    values = {
        "job_name": job_name,
        "instance_id": instance_id,
        "period_type": week.period if week else None,
        "period_start": week.start if week else None,
    }
    with engine.begin() as conn:
        result = conn.execute(
            TS_INS_JOB_LOG.insert().values(
                **values, status="RUNNING", started_at=_now(), message=f"{prefix}started"
            )
        )
        log_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
    entry = JobLogEntry(log_id)
    row = TS_INS_JOB_LOG.c.log_id == log_id
    try:
        yield entry
    except BaseException as exc:
        text = redact_text(f"{type(exc).__name__}: {exc}", [s for s in secrets if s])
        with engine.begin() as conn:
            conn.execute(
                TS_INS_JOB_LOG.update()
                .where(row)
                .values(
                    status="FAILED", ended_at=_now(), message=(prefix + text)[:4000], **_week(entry)
                )
            )
        raise
    with engine.begin() as conn:
        conn.execute(
            TS_INS_JOB_LOG.update()
            .where(row)
            .values(
                status="SUCCESS",
                ended_at=_now(),
                rows_written=entry.rows,
                message=(prefix + (entry.message or "done"))[:4000],
                **_week(entry),
            )
        )


_ENTRY: ContextVar[JobLogEntry | None] = ContextVar("weekly_report_job_log", default=None)


def logged(runner: Callable[[StepContext], Any]) -> Callable[[StepContext], Any]:
    """Run ``runner`` inside :func:`step_log`: every outcome of the step, a failure before
    any work included, is a TS_INS_JOB_LOG row with the instance id."""

    @functools.wraps(runner)
    def run(ctx: StepContext) -> Any:
        settings = WeeklySettings.from_env()
        with step_log(ctx, settings, secrets=settings.secret_values()) as entry:
            token = _ENTRY.set(entry)
            try:
                return runner(ctx)
            finally:
                _ENTRY.reset(token)

    return run


@contextmanager
def current_entry() -> Iterator[JobLogEntry]:
    """The TS_INS_JOB_LOG row of the step running in this thread (see :func:`logged`)."""
    entry = _ENTRY.get()
    if entry is None:
        raise RuntimeError("current_entry() is for runners decorated with @logged")
    yield entry


def _week(entry: JobLogEntry) -> dict[str, Any]:
    if entry.week is None:
        return {}
    return {"period_type": entry.week.period, "period_start": entry.week.start}


@contextmanager
def step_log(
    ctx: StepContext,
    settings: WeeklySettings,
    *,
    week: Week | None = None,
    secrets: Sequence[str] = (),
) -> Iterator[JobLogEntry]:
    """:func:`job_log` for the step ``ctx`` runs: job ``weekly_report.<step>``, with the
    instance id (and the map item's name), so TS_INS_JOB_LOG has a row per step outcome."""
    item = None
    if ctx.map_index >= 0:
        farm = ctx.item.get("farm_id") if isinstance(ctx.item, Mapping) else None
        item = f"{ctx.step}[{farm if farm is not None else ctx.map_index}]"
    with job_log(
        _engine(ctx, settings),
        job_name(ctx.step),
        instance_id=ctx.instance_id,
        week=week,
        secrets=secrets,
        item=item,
    ) as entry:
        yield entry


def job_name(step: str) -> str:
    """A step's job name in TS_INS_JOB_LOG: ``weekly_report.<step>``."""
    return f"weekly_report.{step}"


def _now() -> datetime:
    # Naive local time, like the procedures' LOCALTIMESTAMP/NOW()/SYSTIMESTAMP columns.
    return datetime.now().replace(microsecond=0)


def _engine(ctx: StepContext, settings: WeeklySettings) -> sa.Engine:
    try:
        return connections_for(ctx).engine(settings.connection)
    except KeyError as exc:
        raise DoNotRetry(str(exc)) from None


def _upstream_week(ctx: StepContext, upstream: str) -> Week:
    value = ctx.results.get(upstream)
    if not isinstance(value, Mapping) or "week_start" not in value:
        raise DoNotRetry(f"step {ctx.step!r} needs the result of {upstream!r} (the report week)")
    return Week.from_result(value)


# -- statistics -----------------------------------------------------------------------------


def parse_field_mapping(text: str) -> dict[str, str]:
    """``items=a.b,key=code,value=amount`` (or JSON) → {"items": "a.b", "key": ..., ...}."""
    text = text.strip()
    mapping: dict[str, str]
    if text.startswith("{"):
        mapping = {str(k): str(v) for k, v in json.loads(text).items()}
    else:
        mapping = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, path = part.partition("=")
            if not sep:
                raise ValueError(f"WEEKLY_STATS_FIELDS entry {part!r} is not name=path")
            mapping[name.strip()] = path.strip()
    missing = {"key", "value"} - set(mapping)
    if missing:
        raise ValueError(f"WEEKLY_STATS_FIELDS lacks {', '.join(sorted(missing))}")
    mapping.setdefault("items", "")
    return mapping


def _at_path(value: Any, path: str) -> Any:
    for part in filter(None, path.split(".")):
        if isinstance(value, list) and part.isdigit():
            value = value[int(part)] if int(part) < len(value) else None
        elif isinstance(value, Mapping):
            value = value.get(part)
        else:
            return None
    return value


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip().replace(",", "")
    if text in ("", "-"):
        return None
    return float(text)


def extract_stats(payload: Any, mapping: Mapping[str, str]) -> dict[str, float]:
    """The statistics in an API answer as {stat_key: value}, per the field mapping.

    Items without a key or a value are skipped; a single item given as an object (as
    data.go.kr APIs do when there is one) counts as a list of one.
    """
    items = _at_path(payload, mapping.get("items", ""))
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list):
        raise ValueError(
            f"the statistics answer has no list at {mapping.get('items') or '<root>'!r} "
            "(set WEEKLY_STATS_FIELDS items=<path>)"
        )
    stats: dict[str, float] = {}
    for item in items:
        key = _at_path(item, mapping["key"])
        value = _number(_at_path(item, mapping["value"]))
        if key is None or str(key).strip() == "" or value is None:
            continue
        name = str(key).strip()
        if len(name) > 50:
            raise ValueError(f"statistic key {name[:60]!r}... is longer than 50 characters")
        stats[name] = value
    return stats


@logged
def resolve_week(ctx: StepContext) -> dict[str, str]:
    """Fix the report week of this instance from params ``period`` and ``base_date``."""
    settings = WeeklySettings.from_env()
    try:
        week = report_week(ctx.params.get("period"), ctx.params.get("base_date"), _today(settings))
    except ValueError as exc:
        raise DoNotRetry(str(exc)) from None
    with current_entry() as entry:
        entry.week = week
        entry.message = f"week {week.start} .. {week.end}"
    ctx.log.info("report week", **week.to_result())
    return week.to_result()


@logged
def collect_stats(ctx: StepContext) -> dict[str, Any]:
    """Fetch the week's statistics and upsert them into TA_STATS_DATA.

    Settings: WEEKLY_STATS_URL (required), WEEKLY_STATS_KEY (sent as the query parameter
    WEEKLY_STATS_KEY_PARAM, default serviceKey), WEEKLY_STATS_FIELDS, WEEKLY_STATS_DATE_PARAMS
    and WEEKLY_STATS_DATE_FORMAT. Returns the week and the number of statistics stored.
    """
    settings = WeeklySettings.from_env()
    week = _upstream_week(ctx, "resolve_week")
    if not settings.stats_url:
        raise DoNotRetry("the statistics API is not configured: set WEEKLY_STATS_URL")
    try:
        mapping = parse_field_mapping(settings.stats_fields)
    except ValueError as exc:
        raise DoNotRetry(str(exc)) from None
    key = settings.stats_key.get_secret_value() if settings.stats_key else None
    start_param, _, end_param = settings.stats_date_params.partition(",")
    params: dict[str, Any] = {start_param.strip(): week.start.strftime(settings.stats_date_format)}
    if end_param.strip():
        params[end_param.strip()] = week.end.strftime(settings.stats_date_format)
    if key:
        params[settings.stats_key_param] = key
    engine = _engine(ctx, settings)
    with current_entry() as entry:
        entry.week = week
        payload = http_request(
            "GET",
            settings.stats_url,
            params=params,
            timeout=settings.http_timeout,
            retries=settings.http_retries,
            backoff=settings.http_backoff,
            secrets=[key] if key else [],
            log=ctx.log,
        )
        stats = extract_stats(payload, mapping)
        if not stats:
            raise ValueError(f"the statistics API returned no statistics for {week.start}")
        collected = _now()
        rows = [
            {
                "period_type": week.period,
                "period_start": week.start,
                "stat_key": name,
                "stat_value": value,
                "collected_at": collected,
            }
            for name, value in sorted(stats.items())
        ]
        with engine.begin() as conn:
            upsert(conn, TA_STATS_DATA, rows, ["period_type", "period_start", "stat_key"])
        entry.rows = len(rows)
        entry.message = f"{len(rows)} statistics for week {week.start}"
    ctx.log.info("statistics stored", rows=len(rows), week_start=week.start.isoformat())
    return {**week.to_result(), "rows": len(rows), "keys": sorted(stats)}


# -- farms and weather ----------------------------------------------------------------------


@logged
def list_farms(ctx: StepContext) -> list[dict[str, Any]]:
    """The active farms of TA_FARM with their coordinates and the report week: the map list.

    Fails when there is no active farm: a report without farms is a setup mistake.
    """
    settings = WeeklySettings.from_env()
    week = _upstream_week(ctx, "resolve_week")
    query = (
        sa.select(TA_FARM.c.farm_id, TA_FARM.c.farm_name, TA_FARM.c.lat, TA_FARM.c.lon)
        .where(TA_FARM.c.use_yn == "Y")
        .order_by(TA_FARM.c.farm_id)
    )
    with _engine(ctx, settings).connect() as conn:
        farms = [
            {
                "farm_id": row.farm_id,
                "name": row.farm_name,
                "lat": float(row.lat),
                "lon": float(row.lon),
                **week.to_result(),
            }
            for row in conn.execute(query)
        ]
    if not farms:
        raise DoNotRetry(
            "TA_FARM has no active farm (use_yn = 'Y'); load farms first, e.g. "
            "python -m examples.weekly_report.setup_db --sample"
        )
    with current_entry() as entry:
        entry.week = week
        entry.rows = len(farms)
        entry.message = f"{len(farms)} active farms"
    ctx.log.info("farms listed", farms=len(farms))
    return farms


def open_meteo_request(
    settings: WeeklySettings, lat: float, lon: float, week: Week, today: date
) -> tuple[str, dict[str, Any]]:
    """(url, params) of the daily weather of one week at one place.

    The forecast endpoint serves the last ~90 days (no delay); older weeks use the archive.
    """
    recent = week.end >= today - timedelta(days=80)
    url = settings.open_meteo_url if recent else settings.open_meteo_archive_url
    return url, {
        "latitude": round(lat, 4),
        "longitude": round(lon, 4),
        "start_date": week.start.isoformat(),
        "end_date": week.end.isoformat(),
        "daily": ",".join(OPEN_METEO_DAILY),
        "timezone": settings.timezone,
    }


OPEN_METEO_DAILY = (
    "temperature_2m_mean",
    "temperature_2m_max",
    "temperature_2m_min",
    "relative_humidity_2m_mean",
    "precipitation_sum",
)


def open_meteo_rows(payload: Any, farm_id: str, week: Week) -> list[dict[str, Any]]:
    """TM_WEATHER rows from an Open-Meteo ``daily`` answer (days without data are skipped)."""
    daily = payload.get("daily") if isinstance(payload, Mapping) else None
    if not isinstance(daily, Mapping) or not isinstance(daily.get("time"), list):
        reason = payload.get("reason") if isinstance(payload, Mapping) else None
        raise ValueError(f"Open-Meteo answer has no daily data ({reason or 'unexpected shape'})")
    days = daily["time"]

    def column(name: str) -> list[Any]:
        values = daily.get(name)
        return values if isinstance(values, list) else [None] * len(days)

    mean, high, low = (
        column(OPEN_METEO_DAILY[0]),
        column(OPEN_METEO_DAILY[1]),
        column("temperature_2m_min"),
    )
    humidity, rain = column("relative_humidity_2m_mean"), column("precipitation_sum")
    rows = []
    collected = _now()
    for i, day in enumerate(days):
        values = [_number(v[i]) if i < len(v) else None for v in (mean, high, low, humidity, rain)]
        t_mean, t_max, t_min, rh, precipitation = values
        if t_mean is None and t_max is not None and t_min is not None:
            t_mean = (t_max + t_min) / 2
        if all(v is None for v in (t_mean, t_max, t_min, rh, precipitation)):
            continue
        rows.append(
            _weather_row(
                farm_id,
                week,
                date.fromisoformat(str(day)),
                t_mean,
                t_min,
                t_max,
                rh,
                precipitation,
                "OPEN-METEO",
                collected,
            )
        )
    return rows


def _weather_row(
    farm_id: str,
    week: Week,
    day: date,
    t_avg: float | None,
    t_min: float | None,
    t_max: float | None,
    humidity: float | None,
    precipitation: float | None,
    source: str,
    collected: datetime,
) -> dict[str, Any]:
    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return {
        "farm_id": farm_id,
        "week_start": week.start,
        "obs_date": day,
        "temp_avg": r(t_avg),
        "temp_min": r(t_min),
        "temp_max": r(t_max),
        "humidity_avg": r(humidity),
        "precipitation_mm": r(precipitation),
        "data_source": source,
        "collected_at": collected,
    }


KMA_BASE_HOURS = (2, 5, 8, 11, 14, 17, 20, 23)


def kma_base_time(now: datetime) -> tuple[str, str]:
    """The latest published short-term forecast at ``now`` (KST): (base_date, base_time).

    Forecasts are issued at 02, 05, ... 23 h and published about ten minutes later.
    """
    ready = now - timedelta(minutes=15)
    hours = [h for h in KMA_BASE_HOURS if h <= ready.hour]
    if hours:
        return ready.strftime("%Y%m%d"), f"{hours[-1]:02d}00"
    previous = ready - timedelta(days=1)
    return previous.strftime("%Y%m%d"), "2300"


def parse_kma_precipitation(text: Any) -> float:
    """Millimetres from a KMA ``PCP`` value: '강수없음' 0, '1mm 미만' 0.5, '30.0~50.0mm' 30."""
    if text is None:
        return 0.0
    value = str(text).strip()
    if not value or value == "강수없음" or value == "0":
        return 0.0
    if "미만" in value:  # "1mm 미만": less than 1 mm
        return 0.5
    match = re.search(r"\d+(?:\.\d+)?", value)
    return float(match.group(0)) if match else 0.0


def kma_rows(payload: Any, farm_id: str, week: Week) -> list[dict[str, Any]]:
    """TM_WEATHER rows (one per forecast day) from a ``getVilageFcst`` JSON answer."""
    header = _at_path(payload, "response.header")
    if not isinstance(header, Mapping):
        raise ValueError("KMA answer has no response.header (is dataType=JSON accepted?)")
    if str(header.get("resultCode")) != "00":
        raise ValueError(f"KMA answered {header.get('resultCode')}: {header.get('resultMsg')}")
    items = _at_path(payload, "response.body.items.item") or []
    if isinstance(items, Mapping):
        items = [items]
    by_day: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        by_day[str(item.get("fcstDate"))][str(item.get("category"))].append(item.get("fcstValue"))
    rows = []
    collected = _now()
    for day, values in sorted(by_day.items()):
        temps = [t for t in (_number(v) for v in values.get("TMP", [])) if t is not None]
        humidity = [h for h in (_number(v) for v in values.get("REH", [])) if h is not None]
        t_min = _number(values["TMN"][0]) if values.get("TMN") else min(temps, default=None)
        t_max = _number(values["TMX"][0]) if values.get("TMX") else max(temps, default=None)
        rain = sum(parse_kma_precipitation(v) for v in values.get("PCP", []))
        rows.append(
            _weather_row(
                farm_id,
                week,
                datetime.strptime(day, "%Y%m%d").date(),
                statistics.fmean(temps) if temps else None,
                t_min,
                t_max,
                statistics.fmean(humidity) if humidity else None,
                rain if values.get("PCP") else None,
                "KMA",
                collected,
            )
        )
    return rows


@logged
def collect_weather(ctx: StepContext) -> dict[str, Any]:
    """Fetch one farm's weather (``ctx.item``, from list_farms) and upsert TM_WEATHER.

    Open-Meteo by default (WEEKLY_OPEN_METEO_URL / WEEKLY_OPEN_METEO_ARCHIVE_URL); with
    WEEKLY_WEATHER_PROVIDER=kma the KMA short-term forecast (WEEKLY_KMA_URL, WEEKLY_KMA_KEY)
    at the farm's grid cell. Returns {"farm_id", "rows", "source"}.
    """
    farm = ctx.item
    if not isinstance(farm, Mapping) or "farm_id" not in farm:
        raise DoNotRetry(
            "collect_weather runs once per farm: declare it with map: {over: list_farms}"
        )
    settings = WeeklySettings.from_env()
    week = Week.from_result(farm)
    lat, lon = float(farm["lat"]), float(farm["lon"])
    secrets: list[str] = []
    if settings.weather_provider == "kma":
        if settings.kma_key is None:
            raise DoNotRetry("WEEKLY_WEATHER_PROVIDER=kma needs WEEKLY_KMA_KEY")
        key = settings.kma_key.get_secret_value()
        secrets.append(key)
        nx, ny = latlon_to_grid(lat, lon)
        base_date, base_time = kma_base_time(datetime.now(ZoneInfo(settings.timezone)))
        url = settings.kma_url
        params: dict[str, Any] = {
            "serviceKey": key,
            "pageNo": 1,
            "numOfRows": 1000,
            "dataType": "JSON",
            "base_date": base_date,
            "base_time": base_time,
            "nx": nx,
            "ny": ny,
        }
    else:
        url, params = open_meteo_request(settings, lat, lon, week, _today(settings))
    payload = http_request(
        "GET",
        url,
        params=params,
        timeout=settings.http_timeout,
        retries=settings.http_retries,
        backoff=settings.http_backoff,
        secrets=secrets,
        log=ctx.log,
    )
    farm_id = str(farm["farm_id"])
    if settings.weather_provider == "kma":
        rows = kma_rows(payload, farm_id, week)
    else:
        rows = open_meteo_rows(payload, farm_id, week)
    if not rows:
        raise ValueError(f"no weather data for farm {farm_id} in week {week.start}")
    with _engine(ctx, settings).begin() as conn:
        upsert(conn, TM_WEATHER, rows, ["farm_id", "week_start", "obs_date"])
    source = "KMA" if settings.weather_provider == "kma" else "OPEN-METEO"
    with current_entry() as entry:
        entry.week = week
        entry.rows = len(rows)
        entry.message = f"{len(rows)} days from {source}"
    return {"farm_id": farm_id, "rows": len(rows), "source": source}


# -- the fan-in check and the report ------------------------------------------------------


@logged
def check(ctx: StepContext) -> dict[str, Any]:
    """Verify in the database that both collections are complete for the week.

    Statistics: at least max(WEEKLY_STATS_MIN_ROWS, rows collect_stats stored) rows in
    TA_STATS_DATA. Weather: every farm that collect_weather ran for has at least
    WEEKLY_WEATHER_MIN_DAYS rows in TM_WEATHER. Fails (DoNotRetry) with every shortfall
    named; returns the counts and the week, which run_report passes to the procedure.
    """
    settings = WeeklySettings.from_env()
    week = _upstream_week(ctx, "collect_stats")
    stats_result = ctx.results["collect_stats"]
    weather_results = ctx.results.get("collect_weather")
    engine = _engine(ctx, settings)
    with current_entry() as entry, engine.connect() as conn:
        entry.week = week
        stats_rows = conn.execute(
            sa.select(sa.func.count())
            .select_from(TA_STATS_DATA)
            .where(
                TA_STATS_DATA.c.period_type == week.period,
                TA_STATS_DATA.c.period_start == week.start,
            )
        ).scalar_one()
        if isinstance(weather_results, list) and weather_results:
            farms = sorted({str(r["farm_id"]) for r in weather_results if isinstance(r, Mapping)})
        else:
            farms = list(
                conn.execute(sa.select(TA_FARM.c.farm_id).where(TA_FARM.c.use_yn == "Y")).scalars()
            )
        counts: dict[str, int] = {
            str(farm_id): int(count)
            for farm_id, count in conn.execute(
                sa.select(TM_WEATHER.c.farm_id, sa.func.count())
                .where(TM_WEATHER.c.week_start == week.start)
                .group_by(TM_WEATHER.c.farm_id)
            )
        }
        expected_stats = max(settings.stats_min_rows, int(stats_result.get("rows", 0)))
        min_days = settings.min_days()
        problems = []
        if stats_rows < expected_stats:
            problems.append(
                f"TA_STATS_DATA has {stats_rows} rows for {week.period} {week.start}, "
                f"expected at least {expected_stats}"
            )
        if not farms:
            problems.append("no farm was collected")
        short = [f"{f} ({counts.get(f, 0)})" for f in farms if counts.get(f, 0) < min_days]
        if short:
            problems.append(
                f"TM_WEATHER has fewer than {min_days} days for week {week.start} for "
                f"{len(short)} farm(s): {', '.join(short[:20])}{' ...' if len(short) > 20 else ''}"
            )
        if problems:
            raise DoNotRetry("collection incomplete: " + "; ".join(problems))
        weather_rows = sum(counts.get(f, 0) for f in farms)
        entry.rows = stats_rows + weather_rows
        entry.message = f"{stats_rows} statistics, {weather_rows} weather rows, {len(farms)} farms"
    return {
        **week.to_result(),
        "stats_rows": stats_rows,
        "farms": len(farms),
        "weather_rows": weather_rows,
    }


REPORT_SQL = (
    "DELETE FROM TR_WEEKLY_FARM_REPORT WHERE period_type = :period AND week_start = :week_start",
    """
    INSERT INTO TR_WEEKLY_FARM_REPORT
        (period_type, week_start, week_end, farm_id, item_code, item_value)
    SELECT :period, :week_start, :week_end, a.farm_id, a.item_code, a.item_value
      FROM (
            SELECT w.farm_id, 'WEATHER_DAYS' AS item_code, COUNT(*) AS item_value
              FROM TM_WEATHER w WHERE w.week_start = :week_start GROUP BY w.farm_id
            UNION ALL
            SELECT w.farm_id, 'TEMP_AVG', ROUND(AVG(w.temp_avg), 2)
              FROM TM_WEATHER w WHERE w.week_start = :week_start GROUP BY w.farm_id
            UNION ALL
            SELECT w.farm_id, 'TEMP_MIN', MIN(w.temp_min)
              FROM TM_WEATHER w WHERE w.week_start = :week_start GROUP BY w.farm_id
            UNION ALL
            SELECT w.farm_id, 'TEMP_MAX', MAX(w.temp_max)
              FROM TM_WEATHER w WHERE w.week_start = :week_start GROUP BY w.farm_id
            UNION ALL
            SELECT w.farm_id, 'HUMIDITY_AVG', ROUND(AVG(w.humidity_avg), 2)
              FROM TM_WEATHER w WHERE w.week_start = :week_start GROUP BY w.farm_id
            UNION ALL
            SELECT w.farm_id, 'PRECIP_SUM', ROUND(SUM(w.precipitation_mm), 2)
              FROM TM_WEATHER w WHERE w.week_start = :week_start GROUP BY w.farm_id
            UNION ALL
            SELECT f.farm_id, 'STAT_' || s.stat_key, s.stat_value
              FROM TA_FARM f
              JOIN TA_STATS_DATA s ON s.period_type = :period AND s.period_start = :week_start
           ) a
      JOIN TA_FARM f ON f.farm_id = a.farm_id AND f.use_yn = 'Y'
    """,
)
"""SP_INS_WEEK_MAIN's two statements, for SQLite (``||`` concatenates there)."""


@logged
def build_report_sqlite(ctx: StepContext) -> dict[str, Any]:
    """SP_INS_WEEK_MAIN for databases without stored procedures (the SQLite demo).

    ``with``: ``period`` and ``week_start`` (any day of the week; empty → the week before
    today), ``connection`` (default WEEKLY_CONNECTION). Runs the procedure's DELETE and
    INSERT ... SELECT in one transaction and logs to TS_INS_JOB_LOG under the procedure's
    name, as the procedure does. Returns {"out": {"rows": n}, ...week}.
    """
    settings = WeeklySettings.from_env()
    name = str(ctx.args.get("connection") or settings.connection)
    try:
        engine = connections_for(ctx).engine(name)
        week = report_week(ctx.args.get("period"), ctx.args.get("week_start"), _today(settings))
    except (KeyError, ValueError) as exc:
        raise DoNotRetry(str(exc)) from None
    binds = {"period": week.period, "week_start": week.start, "week_end": week.end}
    typed: list[sa.BindParameter[Any]] = [
        sa.bindparam("period", type_=sa.String),
        sa.bindparam("week_start", type_=sa.Date),
        sa.bindparam("week_end", type_=sa.Date),
    ]
    log = job_log(engine, PROCEDURE, week=week, instance_id=ctx.instance_id)
    with log as entry, engine.begin() as conn:
        conn.execute(sa.text(REPORT_SQL[0]).bindparams(*typed[:2]), _only(REPORT_SQL[0], binds))
        rows = conn.execute(sa.text(REPORT_SQL[1]).bindparams(*typed), binds).rowcount
        entry.rows = rows
        entry.message = f"week {week.start} .. {week.end}"
    ctx.log.info("report built", rows=rows, week_start=week.start.isoformat())
    return {"procedure": PROCEDURE, "out": {"rows": rows}, **week.to_result()}


def _only(statement: str, binds: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in binds.items() if f":{k}" in statement}


@logged
def run_report(ctx: StepContext) -> Any:
    """``stepline.sql:call_procedure`` (same ``with``), logged as a step, and the
    procedure's own TS_INS_JOB_LOG rows given this instance's id.

    SP_INS_WEEK_MAIN's signature stays (p_period, p_base_date): its rows are written
    without an instance id, so the ones it wrote during this call (after this step's own
    row; ``max_active_instances: 1`` keeps two reports from overlapping) are claimed here.
    """
    settings = WeeklySettings.from_env()
    engine = connections_for(ctx).engine(str(ctx.args.get("connection") or settings.connection))
    with current_entry() as entry:
        try:
            return call_procedure(ctx)
        finally:
            with engine.begin() as conn:
                conn.execute(
                    TS_INS_JOB_LOG.update()
                    .where(
                        TS_INS_JOB_LOG.c.job_name == str(ctx.args.get("procedure", PROCEDURE)),
                        TS_INS_JOB_LOG.c.instance_id.is_(None),
                        TS_INS_JOB_LOG.c.log_id > entry.log_id,
                    )
                    .values(instance_id=ctx.instance_id)
                )


@logged
def alert_admin(ctx: StepContext) -> Any:
    """``stepline.notify:webhook`` (same ``with``), logged as a step."""
    return webhook(ctx)


# -- the final handler: a row for every step outcome ----------------------------------------

NOT_RUN = {
    "skipped": ("SKIPPED", "not run: its trigger rule or condition did not hold"),
    "upstream_failed": ("SKIPPED", "not run: an upstream step failed"),
    "cancelled": ("CANCELLED", "not run: the instance was cancelled"),
    "failed": ("FAILED", "failed before its runner started (stepline show <instance> says why)"),
    "succeeded": ("SUCCESS", "succeeded"),
}
"""TS_INS_JOB_LOG's status (at most 10 characters) and message for a step's outcome, by
Stepline status, for a step that left no row of its own."""


@logged
def log_outcomes(ctx: StepContext) -> dict[str, str]:
    """The batch's final handler (``trigger_rule: all_done``, named by no step): it runs
    once every other step ended, however, and completes TS_INS_JOB_LOG.

    The steps that ran logged themselves (:func:`logged`); every other step (``skipped``,
    ``upstream_failed``, or failed before its runner started, e.g. a ``with`` template that
    could not be resolved) gets one row here: job ``weekly_report.<step>``, the instance id,
    status SKIPPED/CANCELLED/FAILED and a message that starts with Stepline's own status.
    Returns {step: status} of the steps it logged. Idempotent: a second attempt logs only
    what the first left missing.
    """
    settings = WeeklySettings.from_env()
    engine = _engine(ctx, settings)
    resolved = ctx.results.get("resolve_week")
    week = Week.from_result(resolved) if isinstance(resolved, Mapping) else None
    names = {job_name(key): key for key in ctx.upstream}
    with engine.begin() as conn:
        logged_already = set(
            conn.execute(
                sa.select(TS_INS_JOB_LOG.c.job_name)
                .where(
                    TS_INS_JOB_LOG.c.instance_id == ctx.instance_id,
                    TS_INS_JOB_LOG.c.job_name.in_(list(names)),
                )
                .distinct()
            ).scalars()
        )
        missing = {
            key: ctx.upstream[key] for name, key in names.items() if name not in logged_already
        }
        now = _now()
        rows = [_not_run_row(ctx, key, status, week, now) for key, status in missing.items()]
        if rows:
            conn.execute(TS_INS_JOB_LOG.insert(), rows)
    with current_entry() as entry:
        entry.week = week
        entry.rows = len(rows)
        shown = ", ".join(f"{key} ({status})" for key, status in missing.items())
        entry.message = f"logged {len(rows)} step(s) without a row: {shown or 'none'}"
    return missing


def _not_run_row(
    ctx: StepContext, key: str, status: str, week: Week | None, now: datetime
) -> dict[str, Any]:
    logged_status, why = NOT_RUN.get(status, ("FAILED", "ended without a row of its own"))
    return {
        "job_name": job_name(key),
        "instance_id": ctx.instance_id,
        "period_type": week.period if week else None,
        "period_start": week.start if week else None,
        "status": logged_status,
        "started_at": now,
        "ended_at": now,
        "message": f"{status}: {why}",
    }
