"""Acceptance: ``serve`` with ``STEPLINE_RETENTION`` purges 100,000 old instances on
PostgreSQL in bounded time while it keeps running a cron batch every second.

The old instances are made with bulk SQL (the engine would take far longer): each has a
step result and a log, a thousand of them a cron fire time. Unfinished old instances and
recent ones must stay; the purged fire times must stay taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from test_serve import Serve, _engine, _env, _instances
from test_serve import root as root
from test_serve import spawn as spawn

from databases import create_database, drop_database
from stepline import batch, step
from stepline.service import Stepline

OLD = 100_000
PURGE_BOUND = 300.0  # seconds; it takes far less on an idle machine (see the report line)


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    url, handle = create_database("postgresql", tmp_path)
    yield url
    drop_database("postgresql", handle)


def _fill(url: str) -> int:
    with Stepline(db=url) as service:
        stored = service.apply(batch("archive", [step("a", "json:dumps")]))
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO batch_instance (definition_id, definition_version, status, params,"
                " trigger, scheduled_for, cancel_requested, created_at, started_at, finished_at)"
                " SELECT :d, 1, CASE WHEN g <= 10 THEN 'running' ELSE 'succeeded' END, '{}',"
                " 'cron', CASE WHEN g <= 1000 THEN timestamp '2026-01-01' + g * interval '1 hour'"
                " END, false, now() - interval '100 days', now() - interval '100 days',"
                " CASE WHEN g <= 10 THEN NULL"
                " WHEN g > :old - 10 THEN now() - interval '1 day'"
                " ELSE now() - interval '100 days' END"
                " FROM generate_series(1, :old) AS g"
            ),
            {"d": stored.id, "old": OLD},
        )
        conn.execute(
            sa.text(
                "INSERT INTO batch_fire_time (definition_id, scheduled_for)"
                " SELECT definition_id, scheduled_for FROM batch_instance"
                " WHERE scheduled_for IS NOT NULL"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO batch_step_result (batch_instance_id, step_key, map_index, status,"
                " attempt, first_attempt, created_at, upstream_pending)"
                " SELECT id, 'a', -1, 'succeeded', 1, 1, created_at, 0 FROM batch_instance"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO batch_step_log (step_result_id, attempt, text, truncated, created_at)"
                " SELECT id, 1, 'a line of log', false, created_at FROM batch_step_result"
            )
        )
    engine.dispose()
    return stored.id


def _count(url: str, sql: str) -> int:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql(sql).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.slow
def test_serve_purges_100k_old_instances_while_it_runs_a_cron_batch(
    pg_url: str, root: Path, spawn: Callable[..., Serve]
) -> None:
    definition_id = _fill(pg_url)
    assert _count(pg_url, "SELECT count(*) FROM batch_instance") == OLD
    serve = spawn("s1", "cron", env=_env(root, STEPLINE_DB=pg_url, STEPLINE_RETENTION="90d"))
    serve.wait_ready()
    start = time.monotonic()
    slowest_health = 0.0
    while (
        _count(pg_url, f"SELECT count(*) FROM batch_instance WHERE definition_id = {definition_id}")
        > 20
    ):
        elapsed = time.monotonic() - start
        assert elapsed < PURGE_BOUND, f"purge not done in {PURGE_BOUND} s\n{serve}"
        asked = time.monotonic()
        assert httpx.get(f"{serve.url}/healthz", timeout=10).status_code == 200
        slowest_health = max(slowest_health, time.monotonic() - asked)
        time.sleep(0.5)
    took = time.monotonic() - start
    time.sleep(2)  # the ticker keeps running after the purge too
    serve.stop()
    print(f"\npurged {OLD - 20} instances in {took:.1f} s; slowest /healthz {slowest_health:.2f} s")
    # what must stay: the ten unfinished and the ten recent ones
    left = _count(
        pg_url,
        f"SELECT count(*) FROM batch_instance WHERE definition_id = {definition_id}"
        " AND (status = 'running' OR finished_at > now() - interval '2 days')",
    )
    assert left == 20
    assert _count(pg_url, "SELECT count(*) FROM batch_step_log") >= 20
    assert (
        _count(
            pg_url, f"SELECT count(*) FROM batch_fire_time WHERE definition_id = {definition_id}"
        )
        == 1000
    )
    ticks = [i for i in _instances(pg_url, "ticker") if i["status"] == "succeeded"]
    assert len(ticks) >= took / 2, f"the cron batch stalled during the purge\n{serve}"
    purged = serve.events("purged instances")
    assert sum(e["count"] for e in purged) == OLD - 20
    # serve's log tells the story of each run: a line per attempt and per instance
    attempts = [e for e in serve.events("step attempt ended") if e["batch"] == "ticker"]
    ended = [e for e in serve.events("instance ended") if e["batch"] == "ticker"]
    assert len(attempts) >= len(ticks) and len(ended) >= len(ticks)
    assert {"instance_id", "step", "attempt", "status", "duration", "error_class"} <= set(
        attempts[0]
    )
    assert attempts[0]["step"] == "tick" and attempts[0]["status"] == "succeeded"
