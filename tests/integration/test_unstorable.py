"""Guarantee 8, part one: a result the store cannot keep fails its step with a clear error.

The step ends ``failed`` (never retried: the runner would return the same value), the
instance ends, nothing is left ``running``, and ``recover`` has nothing to do afterwards —
on every database. Each case used to hang ``run`` or crash ``run`` and ``recover``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from test_engine import calls, run, s

from databases import SERVERS, require_service
from stepline import InstanceStatus, StepStatus
from stepline.service import Stepline
from stepline.settings import Settings


@pytest.fixture
def app(db_url: str) -> Iterator[Stepline]:
    with Stepline(Settings(max_result_bytes=256 * 1024), db=db_url) as service:
        yield service


RETRY = {"attempts": 3, "backoff": "10ms"}


def _assert_failed_cleanly(app: Stepline, final: object, rows: dict, fragment: str) -> None:
    assert final.status is InstanceStatus.FAILED  # type: ignore[attr-defined]
    bad = rows["bad"]
    assert bad.status is StepStatus.FAILED
    assert bad.attempt == 1, "an unstorable result is not retried"
    assert fragment in (bad.error or ""), bad.error
    assert rows["after"].status is StepStatus.UPSTREAM_FAILED
    assert all(r.status.is_final for r in app.store.step_results(final.id))  # type: ignore[attr-defined]
    attempts = app.store.attempts(final.id)  # type: ignore[attr-defined]
    # recover finds nothing: the failure is final, not an orphan run again and again.
    assert app.recover() == []
    assert app.store.step_results(final.id)[0].attempt == 1  # type: ignore[attr-defined]
    assert app.store.attempts(final.id) == attempts  # type: ignore[attr-defined]


@pytest.mark.parametrize("runner", ["unstorable", "aunstorable"])
@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("deep", "nested too deeply"),
        ("surrogate", "not valid Unicode"),
        ("exit", "SystemExit"),
    ],
)
def test_an_unstorable_result_fails_the_step_and_ends_the_instance(
    app: Stepline, runner: str, kind: str, fragment: str
) -> None:
    final, rows = run(
        app,
        [s("bad", ["after"], runner=runner, kind=kind, retry=RETRY), s("after")],
    )
    if kind == "exit":
        # A runner that exits is an ordinary failure: retried like any other.
        assert final.status is InstanceStatus.FAILED
        assert rows["bad"].attempt == 3 and calls(final, "bad") == 3
        assert "SystemExit" in (rows["bad"].error or "")
        assert app.recover() == []
        return
    assert calls(final, "bad") == 1
    _assert_failed_cleanly(app, final, rows, fragment)


def test_a_result_larger_than_the_limit_fails_the_step(app: Stepline) -> None:
    final, rows = run(
        app,
        [
            s("bad", ["after"], runner="unstorable", kind="big", bytes=300_000, retry=RETRY),
            s("after"),
        ],
    )
    _assert_failed_cleanly(app, final, rows, "store keeps at most")


def test_a_nul_character_is_stored_where_the_database_can_and_fails_cleanly_elsewhere(
    app: Stepline,
) -> None:
    final, rows = run(
        app, [s("bad", ["after"], runner="unstorable", kind="nul", retry=RETRY), s("after")]
    )
    if app.store.dialect == "postgresql":
        # jsonb cannot hold \u0000: the database refuses it, and the attempt says so.
        _assert_failed_cleanly(app, final, rows, "could not be stored")
    else:
        assert final.status is InstanceStatus.SUCCEEDED
        assert rows["bad"].result_payload == "a\x00b"


def test_a_result_over_mariadb_max_allowed_packet_fails_the_step(db_url: str) -> None:
    if not db_url.startswith("mysql"):
        pytest.skip("MariaDB's max_allowed_packet only")
    with Stepline(db=db_url) as app:  # the default limit: the database's packet decides
        limit = app.orchestrator.max_result_bytes
        assert limit is not None and limit < 20_000_000
        final, rows = run(
            app,
            [s("bad", ["after"], runner="unstorable", kind="big", bytes=20_000_000), s("after")],
        )
        _assert_failed_cleanly(app, final, rows, "store keeps at most")


@pytest.mark.parametrize("retry", [None, RETRY])
def test_an_exception_that_cannot_be_shown_fails_its_step(app: Stepline, retry: object) -> None:
    """Its ``str()`` raises: the runner's thread used to die while describing it, so the
    attempt never reported and the instance never ended."""
    options = {} if retry is None else {"retry": retry}
    final, rows = run(
        app, [s("bad", ["after"], runner="raises_unprintable", **options), s("after")]
    )
    assert final.status is InstanceStatus.FAILED
    assert rows["bad"].attempt == (1 if retry is None else 3)
    assert "_Unprintable: <the error's message could not be shown>" in (rows["bad"].error or "")
    assert rows["after"].status is StepStatus.UPSTREAM_FAILED


def test_an_error_message_with_nul_and_surrogates_is_stored(app: Stepline) -> None:
    final, rows = run(app, [s("bad", ["after"], runner="raises_odd_text"), s("after")])
    assert final.status is InstanceStatus.FAILED
    assert rows["bad"].status is StepStatus.FAILED
    assert "odd \\x00 text" in (rows["bad"].error or "")


def test_a_log_the_database_cannot_hold_fails_the_step_and_ends_the_instance() -> None:
    """A MariaDB database created with latin1 (MariaDB's default before 11.6) cannot hold
    Korean text or ✓ in a step's log. The attempt fails without its log, once: the failure
    recorded in its place used to keep the log, was refused again, and the instance never
    ended (``run`` stopped with the refusal; ``serve`` retried it for ever)."""
    admin = sa.create_engine(f"{SERVERS['mariadb']}/", isolation_level="AUTOCOMMIT")
    name = f"stepline_latin1_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET latin1")
    except sa.exc.OperationalError as exc:
        admin.dispose()
        require_service("mariadb", str(exc.orig).splitlines()[0])
    try:
        with Stepline(db=f"{SERVERS['mariadb']}/{name}") as app:
            final, rows = run(
                app,
                [
                    s("bad", ["after"], runner="logs_text", text="농장 F001 ✓", retry=RETRY),
                    s("after"),
                ],
            )
            assert calls(final, "bad") == 1
            _assert_failed_cleanly(app, final, rows, "could not be stored")
            assert "Incorrect string value" in (rows["bad"].error or "")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()
