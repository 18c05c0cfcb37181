"""Failures that a live server cannot be made to show on demand: an unavailable database and
a genuine bug. In process, through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import structlog
from fastapi import FastAPI

from stepline.api import create_app
from stepline.errors import StoreUnavailable
from stepline.service import Stepline
from stepline.settings import Secret, Settings

TOKEN = "t0k3n-errors-42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Stepline]:
    settings = Settings(db=f"sqlite:///{tmp_path / 'e.db'}", api_token=Secret(TOKEN))
    with Stepline(settings) as made:
        yield made


def call(app: FastAPI, method: str, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.request(method, path, headers=AUTH)

    return asyncio.run(go())


def test_an_unavailable_database_is_503_with_a_redacted_message(
    service: Stepline, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable() -> None:
        raise StoreUnavailable(f"database postgresql://app:{TOKEN}@db/x is unavailable")

    monkeypatch.setattr(service.store, "definitions", unavailable)
    response = call(create_app(service), "GET", "/api/batches")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "is unavailable" in response.json()["detail"]
    assert TOKEN not in response.text


def test_healthz_is_503_when_the_database_does_not_answer(
    service: Stepline, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    app = create_app(service)
    monkeypatch.setattr(service.store.engine, "connect", refuse)
    response = call(app, "GET", "/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}


def test_a_bug_is_a_plain_500_and_is_logged_without_secrets(service: Stepline) -> None:
    app = create_app(service)

    def broken() -> None:
        raise RuntimeError(f"bug while holding {TOKEN}")

    app.add_api_route("/broken", broken)
    with structlog.testing.capture_logs() as logs:
        response = call(app, "GET", "/broken")
    assert response.status_code == 500
    assert response.json() == {
        "detail": "internal error in Stepline; the server log has the details"
    }
    (entry,) = [e for e in logs if e["event"] == "unhandled error in an API request"]
    assert entry["error"] == "RuntimeError: bug while holding ***"
    assert "broken" in entry["traceback"]
    assert TOKEN not in str(entry)


def test_an_unknown_method_is_405_naming_the_allowed_ones(service: Stepline) -> None:
    response = call(create_app(service), "PATCH", "/api/batches/demo")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, PUT"
    assert "DELETE, GET, PUT" in response.json()["detail"]
