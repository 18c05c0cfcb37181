"""Who may call the API: ``check_bind`` for ``serve``, and an open API that answers only
local, same-origin requests. In process, through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from stepline.api import check_bind, create_app
from stepline.service import Stepline
from stepline.settings import Secret, Settings


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST", "localhost."]
)
def test_check_bind_allows_loopback_without_a_token(host: str) -> None:
    check_bind(host, token_configured=False)  # raises if refused


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.com", "localhost.example", ""]
)
def test_check_bind_refuses_other_hosts_without_a_token(host: str) -> None:
    with pytest.raises(ValueError, match="STEPLINE_API_TOKEN") as caught:
        check_bind(host, token_configured=False)
    assert repr(host) in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_check_bind_allows_any_host_with_a_token(host: str) -> None:
    check_bind(host, token_configured=True)  # raises if refused


MakeService = Callable[[str | None], Stepline]


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[MakeService]:
    """``make_service(token)``: a service on a fresh SQLite file, with or without a token."""
    made: list[Stepline] = []

    def make(token: str | None) -> Stepline:
        settings = Settings(
            db=f"sqlite:///{tmp_path / 'x.db'}", api_token=Secret(token) if token else None
        )
        made.append(Stepline(settings))
        return made[-1]

    yield make
    for service in made:
        service.close()


def call(
    service: Stepline,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    client: tuple[str, int] = ("127.0.0.1", 50000),
) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(service), client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.get(path, headers=headers)

    return asyncio.run(go())


def test_open_api_answers_local_same_origin_requests(make_service: MakeService) -> None:
    service = make_service(None)
    assert call(service, "/api/batches").status_code == 200
    same_origin = {"Origin": "http://127.0.0.1"}
    assert call(service, "/api/batches", headers=same_origin).status_code == 200


@pytest.mark.parametrize(
    ("headers", "client", "reason"),
    [
        ({"Host": "rebound.example:8000"}, ("127.0.0.1", 50000), "not a loopback name"),
        ({"Origin": "http://evil.example"}, ("127.0.0.1", 50000), "cross-origin"),
        ({"Origin": "null"}, ("127.0.0.1", 50000), "opaque origin"),
        ({"Host": "[::1"}, ("127.0.0.1", 50000), "malformed"),
        ({"Origin": "http://[::1"}, ("127.0.0.1", 50000), "malformed"),
        ({}, ("192.168.1.20", 50000), "not from this machine"),
    ],
)
def test_open_api_refuses_requests_a_remote_page_or_host_could_forge(
    make_service: MakeService,
    headers: dict[str, str],
    client: tuple[str, int],
    reason: str,
) -> None:
    service = make_service(None)
    response = call(service, "/api/batches", headers=headers, client=client)
    assert response.status_code == 403
    assert reason in response.json()["detail"]
    assert "STEPLINE_API_TOKEN" in response.json()["detail"]


def test_healthz_stays_open_to_probes_from_anywhere(make_service: MakeService) -> None:
    service = make_service(None)
    assert call(service, "/healthz", client=("10.1.2.3", 40000)).status_code == 200


def test_a_token_lets_remote_clients_in_with_any_scheme_case(
    make_service: MakeService,
) -> None:
    service = make_service("t0k3n-abcdef")
    remote = ("203.0.113.9", 40000)
    for scheme in ("Bearer", "bearer", "BEARER"):
        headers = {"Authorization": f"{scheme} t0k3n-abcdef", "Host": "stepline.example"}
        assert call(service, "/api/batches", headers=headers, client=remote).status_code == 200
    refused = call(service, "/api/batches", headers={"Authorization": "Bearer t0k3n-abcdeX"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_token_is_refused_at_startup(make_service: MakeService, blank: str) -> None:
    service = make_service(None)
    service.settings = service.settings.replace(api_token=blank)
    with pytest.raises(ValueError, match="STEPLINE_API_TOKEN is set but blank"):
        create_app(service)
