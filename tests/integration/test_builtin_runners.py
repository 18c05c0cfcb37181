"""The built-in runners against real servers: stepline.sql on PostgreSQL and MariaDB,
stepline.http against a local HTTP server (pytest-httpserver) and a silent socket."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from pytest_httpserver import HTTPServer
from structlog.testing import capture_logs
from werkzeug import Request, Response

from databases import create_database, drop_database
from stepline import DoNotRetry, StepContext
from stepline.connections import Connections, reset_default_connections
from stepline.http import HttpError, request
from stepline.sql import DatabaseError, call_function, call_procedure, execute, run_block

SECRET = "SECRET-5erv1ce-KEY-42"


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    return ("127.0.0.1", 0)


def ctx(args: dict[str, Any], connections: Connections | None = None) -> StepContext:
    return StepContext(
        batch="builtin",
        instance_id=1,
        step="step",
        attempt=1,
        params={},
        results={},
        args=args,
        log=structlog.get_logger("test"),
        connections=connections,
    )


# -- stepline.sql ---------------------------------------------------------------------------

PROCEDURES = {
    "postgresql": [
        "CREATE TABLE calls (id SERIAL PRIMARY KEY, name VARCHAR(20), at DATE)",
        """CREATE PROCEDURE bump(p_name VARCHAR, p_at DATE, INOUT p_n INTEGER, OUT p_msg TEXT)
           LANGUAGE plpgsql AS $$
           BEGIN
               INSERT INTO calls (name, at) VALUES (p_name, p_at);
               p_n := p_n + 1;
               p_msg := 'hello ' || p_name || ' on ' || p_at;
           END $$""",
        """CREATE PROCEDURE committing(p_name VARCHAR) LANGUAGE plpgsql AS $$
           BEGIN
               INSERT INTO calls (name) VALUES (p_name || '-1');
               COMMIT;
               INSERT INTO calls (name) VALUES (p_name || '-2');
           END $$""",
        """CREATE PROCEDURE failing(p_name VARCHAR) LANGUAGE plpgsql AS $$
           BEGIN
               INSERT INTO calls (name) VALUES (p_name);
               RAISE EXCEPTION 'refused %', p_name;
           END $$""",
        """CREATE FUNCTION count_calls(p_prefix VARCHAR) RETURNS INTEGER LANGUAGE sql AS $$
           SELECT count(*)::int FROM calls WHERE name LIKE p_prefix || '%' $$""",
        """CREATE FUNCTION calls_cursor(p_prefix VARCHAR) RETURNS refcursor
           LANGUAGE plpgsql AS $$
           DECLARE c refcursor;
           BEGIN
               OPEN c FOR SELECT id, name FROM calls WHERE name LIKE p_prefix || '%' ORDER BY id;
               RETURN c;
           END $$""",
    ],
    "mariadb": [
        "CREATE TABLE calls (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20), at DATE)",
        """CREATE PROCEDURE bump(IN p_name VARCHAR(20), IN p_at DATE, INOUT p_n INT,
                                 OUT p_msg VARCHAR(100))
           BEGIN
               INSERT INTO calls (name, at) VALUES (p_name, p_at);
               SET p_n = p_n + 1;
               SET p_msg = CONCAT('hello ', p_name, ' on ', p_at);
           END""",
        """CREATE PROCEDURE committing(IN p_name VARCHAR(20))
           BEGIN
               INSERT INTO calls (name) VALUES (CONCAT(p_name, '-1'));
               COMMIT;
               INSERT INTO calls (name) VALUES (CONCAT(p_name, '-2'));
           END""",
        """CREATE PROCEDURE failing(IN p_name VARCHAR(20))
           BEGIN
               INSERT INTO calls (name) VALUES (p_name);
               SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused';
           END""",
        """CREATE FUNCTION count_calls(p_prefix VARCHAR(20)) RETURNS INT READS SQL DATA
           RETURN (SELECT count(*) FROM calls WHERE name LIKE CONCAT(p_prefix, '%'))""",
    ],
}


@pytest.fixture(params=["postgresql", "mariadb"])
def business(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Connections]:
    """A fresh business database with a table and three tiny procedures, as ``biz``."""
    backend: str = request.param
    url, handle = create_database(backend, tmp_path)
    connections = Connections({"BIZ": url})
    with connections.engine("biz").connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for statement in PROCEDURES[backend]:
            conn.exec_driver_sql(statement, execution_options={"no_parameters": True})
    yield connections
    connections.dispose()
    drop_database(backend, handle)


def names_in(connections: Connections) -> list[str]:
    with connections.engine("biz").connect() as conn:
        return list(conn.execute(sa.text("SELECT name FROM calls ORDER BY id")).scalars())


def test_execute_runs_a_statement_and_returns_rowcount_or_json_safe_rows(
    business: Connections,
) -> None:
    inserted = execute(
        ctx(
            {
                "connection": "biz",
                "sql": "INSERT INTO calls (name, at) VALUES (:name, :at)",
                "params": [
                    {"name": "a", "at": date(2024, 6, 3)},
                    {"name": "b", "at": date(2024, 6, 4)},
                ],
            },
            business,
        )
    )
    assert inserted["rowcount"] in (2, -1)  # executemany rowcount is driver-dependent
    updated = execute(
        ctx(
            {
                "connection": "BIZ",
                "sql": "UPDATE calls SET name = :new WHERE name = :old",
                "params": {"new": "c", "old": "b"},
            },
            business,
        )
    )
    assert updated == {"rowcount": 1}
    rows = execute(
        ctx(
            {
                "connection": "biz",
                "sql": "SELECT name, at, CAST(1.5 AS DECIMAL(5, 2)) AS price FROM calls "
                "WHERE name LIKE 'a%' OR name = :n ORDER BY name",
                "params": {"n": "c"},
            },
            business,
        )
    )
    assert rows == {
        "rows": [
            {"name": "a", "at": "2024-06-03", "price": 1.5},
            {"name": "c", "at": "2024-06-04", "price": 1.5},
        ]
    }
    json.dumps(rows)  # stored as a step result: must be JSON as it is


def test_execute_refuses_a_result_larger_than_max_rows(business: Connections) -> None:
    with pytest.raises(DoNotRetry, match="more than max_rows=1"):
        execute(
            ctx(
                {
                    "connection": "biz",
                    "sql": "SELECT 1 AS x UNION ALL SELECT 2 AS x",
                    "max_rows": 1,
                },
                business,
            )
        )


def test_call_procedure_returns_out_and_inout_values_and_commits(business: Connections) -> None:
    result = call_procedure(
        ctx(
            {
                "connection": "biz",
                "procedure": "bump",
                "args": [
                    "farm",
                    {"value": "20240603", "type": "date"},
                    {"inout": "n", "value": 41, "type": "integer"},
                ],
                "out": ["msg"],
            },
            business,
        )
    )
    assert result == {"procedure": "bump", "out": {"n": 42, "msg": "hello farm on 2024-06-03"}}
    assert names_in(business) == ["farm"]  # committed: visible from another connection


def test_call_procedure_lets_the_procedure_commit_itself(business: Connections) -> None:
    result = call_procedure(
        ctx({"connection": "biz", "procedure": "committing", "args": ["x"]}, business)
    )
    assert result == {"procedure": "committing", "out": {}}
    assert names_in(business) == ["x-1", "x-2"]


def test_a_failing_procedure_raises_a_retryable_error_and_commits_nothing(
    business: Connections,
) -> None:
    with pytest.raises(DatabaseError, match="refused") as caught:
        call_procedure(ctx({"connection": "biz", "procedure": "failing", "args": ["y"]}, business))
    assert not isinstance(caught.value, DoNotRetry)
    # the database's own code leads the message: SQLSTATE on PostgreSQL, errno on MariaDB
    code = {"postgresql": "P0001", "mysql": "1644"}[business.dialect("biz")]
    assert caught.value.code == code
    assert str(caught.value).startswith(f"{code}: ")
    assert isinstance(caught.value.__cause__, sa.exc.DBAPIError)
    assert names_in(business) == []


def test_a_block_runs_and_commits(business: Connections) -> None:
    dialect = business.dialect("biz")
    body = {
        "postgresql": "BEGIN INSERT INTO calls (name) VALUES ('b1'); "
        "INSERT INTO calls (name) VALUES ('b2'); END",
        "mysql": "BEGIN INSERT INTO calls (name) VALUES ('b1'); "
        "INSERT INTO calls (name) VALUES ('b2'); END",
    }[dialect]
    assert run_block(ctx({"connection": "biz", "block": body}, business)) == {"out": {}}
    assert names_in(business) == ["b1", "b2"]
    broken = body.replace("calls", "no_such_table", 1)
    with pytest.raises(DatabaseError) as caught:
        run_block(ctx({"connection": "biz", "block": broken}, business))
    assert caught.value.code == {"postgresql": "42P01", "mysql": "1146"}[dialect]
    assert names_in(business) == ["b1", "b2"]
    with pytest.raises(DoNotRetry, match="Oracle only"):
        run_block(ctx({"connection": "biz", "block": body, "params": {"a": 1}}, business))


def test_a_function_returns_its_value_or_its_cursor_rows(business: Connections) -> None:
    call_procedure(ctx({"connection": "biz", "procedure": "committing", "args": ["f"]}, business))
    args = {"connection": "biz", "function": "count_calls", "args": ["f-"]}
    assert call_function(ctx(args, business)) == {"function": "count_calls", "value": 2}
    cursor = {"connection": "biz", "function": "calls_cursor", "args": ["f-"], "returns": "cursor"}
    if business.dialect("biz") == "mysql":
        with pytest.raises(DoNotRetry, match="cannot return a cursor"):
            call_function(ctx(cursor, business))
        return
    result = call_function(ctx(cursor, business))
    assert [r["name"] for r in result["rows"]] == ["f-1", "f-2"]
    with pytest.raises(DoNotRetry, match="more than max_rows=1"):
        call_function(ctx({**cursor, "max_rows": 1}, business))
    with pytest.raises(DoNotRetry, match="IN arguments only"):
        call_function(ctx({**args, "args": [{"out": "x"}]}, business))


def test_configuration_mistakes_fail_at_once(business: Connections) -> None:
    with pytest.raises(DoNotRetry, match=r"'report' is not configured \(configured: biz\)"):
        call_procedure(ctx({"connection": "report", "procedure": "bump"}, business))
    with pytest.raises(DoNotRetry, match="not a plain identifier"):
        call_procedure(ctx({"connection": "biz", "procedure": "bump; DROP TABLE calls"}, business))
    assert names_in(business) == []


def test_runners_fall_back_to_connections_from_the_environment(
    business: Connections, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = business.engine("biz").url.render_as_string(hide_password=False)
    monkeypatch.setenv("STEPLINE_CONNECTIONS__ENVBIZ", url)
    reset_default_connections()
    try:
        result = execute(ctx({"connection": "envbiz", "sql": "SELECT COUNT(*) AS n FROM calls"}))
        assert result == {"rows": [{"n": 0}]}
    finally:
        reset_default_connections()


# -- stepline.http ---------------------------------------------------------------------------


def sequence(*responses: Response) -> tuple[list[Request], Any]:
    """A handler answering with ``responses`` in turn (the last one repeats)."""
    seen: list[Request] = []

    def handler(req: Request) -> Response:
        seen.append(req)
        return responses[min(len(seen), len(responses)) - 1]

    return seen, handler


def json_response(body: Any, status: int = 200, **headers: str) -> Response:
    return Response(
        json.dumps(body), status=status, content_type="application/json", headers=headers
    )


def test_a_json_answer_is_the_result(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items", query_string={"page": "2"}).respond_with_json(
        {"items": [1, 2]}
    )
    result = request(ctx({"url": httpserver.url_for("/items"), "params": {"page": 2}}))
    assert result == {"items": [1, 2]}


def test_a_non_json_answer_is_status_and_text(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/plain").respond_with_data("<ok/>", content_type="text/xml")
    assert request(ctx({"url": httpserver.url_for("/plain")})) == {"status": 200, "text": "<ok/>"}


def test_a_post_sends_json_and_headers(httpserver: HTTPServer) -> None:
    httpserver.expect_request(
        "/jobs", method="POST", json={"week": "2024-06-03"}, headers={"X-Api-Key": "k-123"}
    ).respond_with_json({"accepted": True}, status=201)
    result = request(
        ctx(
            {
                "method": "post",
                "url": httpserver.url_for("/jobs"),
                "json": {"week": "2024-06-03"},
                "headers": {"X-Api-Key": "k-123"},
            }
        )
    )
    assert result == {"accepted": True}


def test_a_5xx_is_retried_until_it_succeeds(httpserver: HTTPServer) -> None:
    seen, handler = sequence(json_response({"error": "busy"}, 500), json_response({"ok": 1}))
    httpserver.expect_request("/flaky").respond_with_handler(handler)
    result = request(ctx({"url": httpserver.url_for("/flaky"), "backoff": "10ms"}))
    assert result == {"ok": 1} and len(seen) == 2


def test_a_429_waits_as_long_as_retry_after_says(httpserver: HTTPServer) -> None:
    seen, handler = sequence(json_response({}, 429, **{"Retry-After": "1"}), json_response([]))
    httpserver.expect_request("/limited").respond_with_handler(handler)
    start = time.monotonic()
    result = request(ctx({"url": httpserver.url_for("/limited"), "backoff": "10ms"}))
    assert result == [] and len(seen) == 2
    assert time.monotonic() - start >= 0.95


def test_retry_after_is_capped(httpserver: HTTPServer) -> None:
    seen, handler = sequence(json_response({}, 429, **{"Retry-After": "3600"}), json_response([]))
    httpserver.expect_request("/limited").respond_with_handler(handler)
    start = time.monotonic()
    request(ctx({"url": httpserver.url_for("/limited"), "retry_after_cap": "200ms"}))
    assert 0.19 <= time.monotonic() - start < 2 and len(seen) == 2


def test_a_404_fails_at_once(httpserver: HTTPServer) -> None:
    seen, handler = sequence(json_response({"error": "no such series"}, 404))
    httpserver.expect_request("/missing").respond_with_handler(handler)
    with pytest.raises(DoNotRetry, match=r"(?i)HTTP 404 not found: .*no such series"):
        request(ctx({"url": httpserver.url_for("/missing"), "retries": 5}))
    assert len(seen) == 1


def test_retries_are_used_up_then_the_step_fails_retryably(httpserver: HTTPServer) -> None:
    seen, handler = sequence(json_response({"error": "down"}, 503))
    httpserver.expect_request("/down").respond_with_handler(handler)
    with pytest.raises(HttpError, match=r"HTTP 503 .*gave up after 3 attempts") as caught:
        request(ctx({"url": httpserver.url_for("/down"), "retries": 2, "backoff": "10ms"}))
    assert caught.value.status == 503 and len(seen) == 3


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that completes TCP handshakes (via the backlog) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port: int = listener.getsockname()[1]
        yield port


def test_a_timeout_is_retried_then_fails(silent_port: int) -> None:
    start = time.monotonic()
    with capture_logs() as logs, pytest.raises(HttpError, match="gave up after 2 attempts"):
        request(
            ctx(
                {
                    "url": f"http://127.0.0.1:{silent_port}/slow",
                    "timeout": "200ms",
                    "retries": 1,
                    "backoff": "10ms",
                }
            )
        )
    assert 0.4 <= time.monotonic() - start < 3
    assert [e["event"] for e in logs] == ["http request retried"]
    assert "ReadTimeout" in logs[0]["error"]


def test_a_secret_in_the_url_never_reaches_errors_or_logs(httpserver: HTTPServer) -> None:
    def echo(req: Request) -> Response:
        # Some APIs echo the request, key included, in their error bodies.
        return json_response({"error": f"bad request {req.url}"}, 500)

    httpserver.expect_request("/stats").respond_with_handler(echo)
    url = httpserver.url_for("/stats") + f"?serviceKey={SECRET}"
    with capture_logs() as logs, pytest.raises(HttpError) as caught:
        request(ctx({"url": url, "params": {"week": "2024-06-03"}, "retries": 1, "backoff": 0}))
    text = f"{caught.value!s}\n{caught.value!r}\n{logs!r}"
    assert SECRET not in text
    assert "serviceKey=***" in str(caught.value) and "week=2024-06-03" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_a_key_from_the_environment_is_masked_even_under_another_name(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATS_AUTH", SECRET)

    def refuse(req: Request) -> Response:
        return json_response({"error": f"auth {req.args.get('auth')} unknown"}, 401)

    httpserver.expect_request("/stats").respond_with_handler(refuse)
    with pytest.raises(DoNotRetry) as caught:
        request(ctx({"url": httpserver.url_for("/stats"), "params": {"auth": "${STATS_AUTH}"}}))
    assert "HTTP 401" in str(caught.value) and SECRET not in str(caught.value)


def test_numbers_and_decimal_rows_survive_json(business: Connections) -> None:
    """A SELECT of DECIMAL and DATE values stores as JSON without loss of meaning."""
    rows = execute(
        ctx(
            {
                "connection": "biz",
                "sql": "SELECT CAST(12345.6789 AS DECIMAL(18, 4)) AS v, "
                "CAST(3 AS DECIMAL(10, 0)) AS n",
            },
            business,
        )
    )
    assert rows == {"rows": [{"v": 12345.6789, "n": 3}]}
    assert Decimal(str(rows["rows"][0]["v"])) == Decimal("12345.6789")
