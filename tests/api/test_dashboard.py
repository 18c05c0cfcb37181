"""The dashboard: HTML pages over real instances, behind the API's token (bearer or HTTP
Basic), escaped and redacted. In process, through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from stepline import batch, step
from stepline.api import create_app
from stepline.service import Stepline
from stepline.settings import Settings
from stepline.stores.schema import batch_instance

TOKEN = "tok-dash-5b1e0c77"
W = "fixture_runners:"
SCRIPT = "<script>alert('pwn')</script>"
SECRET_URL = "https://h/x?token=s3cr3t"
LOCAL = ("127.0.0.1", 50000)


def basic(password: str, user: str = "admin") -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


BEARER = {"Authorization": f"Bearer {TOKEN}"}


def get(
    service: Stepline,
    path: str,
    headers: dict[str, str] | None = None,
    client: tuple[str, int] = LOCAL,
) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(service), client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.get(path, headers=headers)

    return asyncio.run(go())


def make_service(tmp_path: Path, token: str | None) -> Stepline:
    settings = Settings(
        db=f"sqlite:///{tmp_path / 'dash.db'}", api_token=SecretStr(token) if token else None
    )
    return Stepline(settings)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A service with a token, a cron batch with a failed mapped run, and a wide map run."""
    service = make_service(tmp_path_factory.mktemp("dash"), TOKEN)
    items = [1, 2, SCRIPT, SECRET_URL]
    service.apply(
        batch(
            "dash_report",
            [
                step("produce", W + "work", ["each"], **{"with": {"value": items}}),
                step(
                    "each",
                    W + "item_work",
                    map={"over": "produce"},
                    retry={"attempts": 2, "backoff": "0s", "jitter": False},
                    **{"with": {"fail_items": [SCRIPT, SECRET_URL]}},
                ),
            ],
            cron="0 0 2 * * 1",
            timezone="Asia/Seoul",
        )
    )
    service.apply(
        batch(
            "dash_wide",
            [
                step("produce", W + "work", ["each"], **{"with": {"value": list(range(60))}}),
                step("each", W + "item_work", map="produce", **{"with": {"fail_items": [55]}}),
            ],
        )
    )
    failed, _ = service.trigger("dash_report", {"password": "hunter22", "period": "WEEK"})
    service.run_instance(failed.id)
    with service.store.engine.begin() as conn:
        error = f"call failed: {SECRET_URL} {SCRIPT}\nsecond line of the traceback"
        conn.execute(
            sa.update(batch_instance).where(batch_instance.c.id == failed.id), {"error": error}
        )
    wide, _ = service.trigger("dash_wide")
    service.run_instance(wide.id)
    yield {"service": service, "failed": failed.id, "wide": wide.id}
    service.close()


def test_root_redirects_to_the_dashboard(world: dict[str, Any]) -> None:
    response = get(world["service"], "/")
    assert response.status_code == 307
    assert response.headers["location"] == "/ui"


@pytest.mark.parametrize("path", ["/ui", "/ui/instances/1", "/ui/instances/abc"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("wrong-token"),
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Basic !!not-base64!!"},
        {"Authorization": "Basic " + base64.b64encode(TOKEN.encode()).decode()},  # no colon
        {"Authorization": f"Token {TOKEN}"},
    ],
)
def test_without_the_token_the_browser_is_asked_to_sign_in(
    world: dict[str, Any], path: str, headers: dict[str, str]
) -> None:
    response = get(world["service"], path, headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="stepline"'
    assert response.headers["content-type"].startswith("text/html")
    assert "hunter22" not in response.text and "dash_report" not in response.text


@pytest.mark.parametrize("headers", [basic(TOKEN), basic(TOKEN, user=""), BEARER])
def test_basic_with_the_token_as_password_or_bearer_is_let_in(
    world: dict[str, Any], headers: dict[str, str]
) -> None:
    response = get(world["service"], "/ui", headers, client=("203.0.113.9", 40000))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")


def test_overview_lists_batches_with_next_fire_and_latest_instances(
    world: dict[str, Any],
) -> None:
    page = get(world["service"], "/ui", BEARER).text
    assert "dash_report" in page and "dash_wide" in page
    assert "0 0 2 * * 1" in page and "Asia/Seoul" in page
    assert " 02:00:00+09:00" in page  # the next Monday 02:00, in the batch's timezone
    assert f'href="/ui/instances/{world["failed"]}"' in page
    assert '<span class="st failed">failed</span>' in page
    assert "on demand" in page  # dash_wide has no cron
    assert "<script" not in page and "s3cr3t" not in page


def test_status_and_batch_filters(world: dict[str, Any]) -> None:
    service, link = world["service"], f'href="/ui/instances/{world["failed"]}"'
    filtered = get(service, "/ui?status=failed&batch=dash_report", BEARER).text
    assert link in filtered
    assert "<option selected>failed</option>" in filtered  # the form shows the filter
    assert "<option selected>dash_report</option>" in filtered
    assert link not in get(service, "/ui?status=succeeded", BEARER).text
    assert link in get(service, "/ui?batch=dash_report&status=failed", BEARER).text
    assert link not in get(service, "/ui?batch=dash_wide", BEARER).text
    assert "no instances" in get(service, "/ui?batch=nobody", BEARER).text
    assert link in get(service, "/ui?status=&batch=", BEARER).text  # "any" in the form


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=bogus", "unknown status &#x27;bogus&#x27;"),
        ("status=FAILED", "unknown status"),
        ("status=%3Cscript%3E", "&lt;script&gt;"),
        ("batch=Bad%20Name", "is not a batch name"),
    ],
)
def test_bad_filters_answer_422_pages(world: dict[str, Any], query: str, message: str) -> None:
    response = get(world["service"], f"/ui?{query}", BEARER)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/html")
    assert message in response.text
    assert "<script>" not in response.text


def test_instance_page_shows_header_steps_items_and_attempts(world: dict[str, Any]) -> None:
    response = get(world["service"], f"/ui/instances/{world['failed']}", basic(TOKEN))
    assert response.status_code == 200
    page = response.text
    assert f"Instance {world['failed']} of dash_report" in page
    assert "version 1" in page and "<td>cli</td>" in page
    assert "&quot;period&quot;: &quot;WEEK&quot;" in page
    for key in ("produce", "each"):
        assert f"<td>{key}</td>" in page
    assert "4 items: 2 failed, 2 succeeded" in page
    assert "{&quot;item&quot;: 1, &quot;double&quot;: 2}" in page  # a short result
    # Each failing item failed twice; the first attempts are in the history.
    history = page.split("<h2>Earlier attempts</h2>", 1)[1]
    assert history.count('<span class="st failed">failed</span>') == 2
    assert "item https://h/x?token=*** failed" in page
    assert "<details><summary>call failed" not in page  # the header shows the full error
    assert "second line of the traceback" in page


def test_pages_show_no_secret_and_escape_every_value(world: dict[str, Any]) -> None:
    service = world["service"]
    pages = [
        get(service, "/ui", BEARER).text,
        get(service, "/ui?status=failed", BEARER).text,
        get(service, f"/ui/instances/{world['failed']}", BEARER).text,
    ]
    for page in pages:
        assert "s3cr3t" not in page
        assert "hunter22" not in page
        assert TOKEN not in page
        assert "<script" not in page
        assert "&lt;script&gt;alert(&#x27;pwn&#x27;)&lt;/script&gt;" in page
        assert "token=***" in page
    assert "&quot;password&quot;: &quot;***&quot;" in pages[2]


def test_pages_forbid_scripts_and_framing(world: dict[str, Any]) -> None:
    response = get(world["service"], "/ui", BEARER)
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    for external in ("<script", "<link", " src=", "@import", "url("):
        assert external not in response.text  # nothing loaded from elsewhere


def test_a_wide_map_lists_the_first_50_items_and_every_failed_one(world: dict[str, Any]) -> None:
    page = get(world["service"], f"/ui/instances/{world['wide']}", BEARER).text
    assert "60 items: 1 failed, 59 succeeded (showing the first 50 and 1 failed)" in page
    assert "<td>each</td><td>49</td>" in page
    assert "<td>each</td><td>50</td>" not in page
    assert "<td>each</td><td>55</td>" in page
    assert "item 55 failed" in page


@pytest.mark.parametrize(
    "instance_id", ["999999", "abc", "0", "-1", "1.5", "٣", str(2**63), "9" * 40]
)
def test_unknown_or_malformed_ids_answer_404_pages(world: dict[str, Any], instance_id: str) -> None:
    response = get(world["service"], f"/ui/instances/{instance_id}", BEARER)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "Not found" in response.text


def test_without_a_token_pages_are_open_to_this_machine_only(tmp_path: Path) -> None:
    service = make_service(tmp_path, None)
    try:
        assert get(service, "/ui").status_code == 200
        remote = get(service, "/ui", client=("192.168.1.20", 50000))
        assert remote.status_code == 403
        assert "not from this machine" in remote.text
        assert "www-authenticate" not in remote.headers
        rebound = get(service, "/ui", {"Host": "rebound.example"})
        assert rebound.status_code == 403
    finally:
        service.close()
