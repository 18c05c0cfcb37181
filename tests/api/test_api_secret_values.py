"""SPEC guarantee 7 by value: a secret param copied under another key or into an error
message, a connection's password and a name marked secret in settings are masked in every
answer and page of a real server, and in its log."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live_server import TOKEN, LiveServer

from stepline import batch, step
from stepline.service import Stepline

W = "fixture_runners:"
PARAMS = {
    "period": "WEEK",
    "password": "hunter2-pw",
    "api_token": "tok-778899",
    "db_password": "dbpw-4455",
    "licence": "LIC-5566-77",  # secret only because STEPLINE_SECRET_NAMES says so
}
CONNECTION_PASSWORD = "connpass99"
SERVER_ENV = {
    "STEPLINE_CONNECTIONS__REPORT": f"postgresql://rep:{CONNECTION_PASSWORD}@db.example/r",
    "STEPLINE_SECRET_NAMES": "licence",
}
SECRETS = [*(v for k, v in PARAMS.items() if k != "period"), CONNECTION_PASSWORD, TOKEN]


def prepare(service: Stepline) -> None:
    copied = {
        "plain": "{{ params.password }}",
        "header": "Bearer {{ params.api_token }}",
        "note": "licence {{ params.licence }} for {{ params.period }}",
        "seen": [f"connected with {CONNECTION_PASSWORD}", f"called with {TOKEN}"],
    }
    service.apply(
        batch(
            "leaky",
            [
                step("copy", W + "work", ["fail"], **{"with": {"value": copied}}),
                step(
                    "fail",
                    W + "fail_with",
                    **{"with": {"message": "login refused for {{ params.db_password }}"}},
                ),
            ],
        )
    )
    instance, _ = service.trigger("leaky", PARAMS)
    service.run_instance(instance.id)


@pytest.fixture(scope="module")
def server(start_server: Any) -> LiveServer:
    live: LiveServer = start_server(prepare, env=SERVER_ENV)
    return live


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        client.headers.update(server.auth)
        yield client


def assert_no_secret(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{leaked} in {text[:2000]}"


@pytest.mark.parametrize(
    "path",
    [
        "/api/instances/1",
        "/api/instances?batch=leaky",
        "/ui/instances/1",
        "/ui",
        "/api/batches/leaky",
    ],
)
def test_no_answer_or_page_shows_a_secret_value(api: httpx.Client, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 200, response.text
    assert_no_secret(response.text)


def test_values_are_masked_where_they_were_copied(api: httpx.Client) -> None:
    detail = api.get("/api/instances/1").json()
    steps = {s["key"]: s for s in detail["steps"]}
    assert steps["copy"]["result_payload"] == {
        "plain": "***",
        "header": "Bearer ***",
        "note": "licence *** for WEEK",
        "seen": ["connected with ***", "called with ***"],
    }
    assert steps["fail"]["error"].startswith("DoNotRetry: login refused for ***")
    assert detail["params"]["licence"] == "***" and detail["params"]["period"] == "WEEK"


def test_the_server_log_shows_no_secret(server: LiveServer, api: httpx.Client) -> None:
    # Put the values in front of the server: as a wrong token, and in a failing request.
    api.get("/api/batches", headers={"Authorization": f"Bearer {PARAMS['api_token']}"})
    api.post("/api/batches/leaky/run", json={"params": {"licence": 5}})
    assert_no_secret(server.log())
