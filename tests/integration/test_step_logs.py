"""Per-attempt step logs: captured where the runner runs, capped, redacted, stored per attempt."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_engine import name, s

from stepline import batch
from stepline.service import Stepline
from stepline.settings import Settings

TOKEN = "tok-0123456789-secret"


@pytest.fixture
def app(db_url: str) -> Iterator[Stepline]:
    with Stepline(Settings(api_token=TOKEN, step_log_limit=2048), db=db_url) as service:
        yield service


def run(app: Stepline, steps: list[dict[str, object]], **options: object) -> int:
    batch_name = name()
    app.apply(batch(batch_name, steps, **options))
    instance, _ = app.trigger(batch_name)
    app.run_instance(instance.id)
    return instance.id


def test_ctx_log_and_logging_records_are_stored_per_attempt(app: Stepline) -> None:
    instance_id = run(
        app,
        [s("a", runner="chatty", lines=2, fail=True, retry={"attempts": 2}), s("quiet")],
    )
    logs = app.logs(instance_id)
    assert [(r.step_key, r.attempt) for r in logs] == [("a", 1), ("a", 2)]
    first = logs[0].text.splitlines()
    assert "info" in first[0] and "line" in first[0] and "n=0" in first[0]
    assert "n=1" in first[1]
    assert "warning" in first[2] and "chatty.lib: from logging" in first[2]
    assert not logs[0].truncated
    assert app.logs(instance_id, "quiet") == []  # a silent step stores nothing


def test_a_log_over_the_cap_is_cut_and_says_so(app: Stepline) -> None:
    instance_id = run(app, [s("a", runner="chatty", lines=200, width=50)])
    (log,) = app.logs(instance_id)
    assert log.truncated
    assert len(log.text.encode()) < 2048 + 200
    assert (
        log.text.endswith("bytes per attempt (STEPLINE_STEP_LOG_LIMIT)]")
        and "[log truncated:" in log.text
    )


def test_secrets_in_logs_are_masked(app: Stepline) -> None:
    instance_id = run(
        app,
        [s("a", runner="chatty")],
        params={"api_token": "param-secret-value-42"},
    )
    (log,) = app.logs(instance_id)
    assert "param-secret-value-42" not in log.text
    assert "***" in log.text
    instance_id = run(app, [s("a", runner="chatty")], params={"api_token": TOKEN})
    (log,) = app.logs(instance_id)
    assert TOKEN not in log.text


def test_async_runners_each_keep_their_own_lines(app: Stepline) -> None:
    instance_id = run(app, [s("a", runner="achatty"), s("b", runner="achatty")])
    for key in ("a", "b"):
        (log,) = app.logs(instance_id, key)
        lines = log.text.splitlines()
        assert len(lines) == 6, log.text
        assert all(f"step='{key}'" in line or f"of {key}" in line for line in lines)


def test_records_of_other_threads_stay_out(app: Stepline) -> None:
    stop = threading.Event()

    def noise() -> None:
        while not stop.is_set():
            logging.getLogger("elsewhere").warning("not a runner's line")
            stop.wait(0.001)

    thread = threading.Thread(target=noise)
    thread.start()
    try:
        instance_id = run(app, [s("a", runner="chatty", lines=3)])
    finally:
        stop.set()
        thread.join()
    (log,) = app.logs(instance_id)
    assert "elsewhere" not in log.text


def test_a_zero_cap_stores_no_logs(tmp_path: Path) -> None:
    settings = Settings(step_log_limit=0)
    with Stepline(settings, db=f"sqlite:///{tmp_path / 'z.db'}") as app:
        instance_id = run(app, [s("a", runner="chatty")])
        assert app.logs(instance_id) == []


def test_a_log_at_the_default_cap_fits_every_database(db_url: str) -> None:
    with Stepline(db=db_url) as app:
        instance_id = run(app, [s("a", runner="chatty", lines=1000, width=200)])
        (log,) = app.logs(instance_id)
        final = app.store.instance(instance_id)
    assert final.status.value == "succeeded"
    assert log.truncated
    assert 60_000 < len(log.text.encode()) < 65_536 + 200
