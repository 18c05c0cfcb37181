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

from stepline import batch, step
from stepline.api import create_app
from stepline.service import Stepline
from stepline.settings import Secret, Settings
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
        db=f"sqlite:///{tmp_path / 'dash.db'}", api_token=Secret(token) if token else None
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


def test_batches_page_shows_schedule_next_fire_and_the_last_runs(world: dict[str, Any]) -> None:
    page = get(world["service"], "/ui", BEARER).text
    assert "dash_report" in page and "dash_wide" in page
    assert "0 0 2 * * 1" in page and "Asia/Seoul" in page
    assert " 02:00:00 KST</time>" in page  # the next Monday 02:00, in the batch's timezone
    assert " 17:00:00 UTC" in page  # ... and in UTC on hover (Sunday 17:00)
    # The strip of last runs links each instance, its status and duration on hover.
    assert f'href="/ui/instances/{world["failed"]}" title="#{world["failed"]} failed' in page
    assert 'class="run st-failed"' in page
    assert "on demand" in page  # dash_wide has no cron
    assert "<script>alert" not in page and "s3cr3t" not in page


def test_status_and_batch_filters(world: dict[str, Any]) -> None:
    service, link = world["service"], f'href="/ui/instances/{world["failed"]}"'
    filtered = get(service, "/ui/instances?status=failed&batch=dash_report", BEARER).text
    assert link in filtered
    assert "<option selected>failed</option>" in filtered  # the form shows the filter
    assert "<option selected>dash_report</option>" in filtered
    assert link not in get(service, "/ui/instances?status=succeeded", BEARER).text
    assert link not in get(service, "/ui/instances?batch=dash_wide", BEARER).text
    assert "no instances" in get(service, "/ui/instances?batch=nobody", BEARER).text
    assert link in get(service, "/ui/instances?status=&batch=", BEARER).text  # "any"
    assert link in get(service, "/ui/instances?trigger=cli", BEARER).text
    assert link not in get(service, "/ui/instances?trigger=cron", BEARER).text
    # The former overview's filters lead to the list.
    moved = get(service, "/ui?status=failed", BEARER)
    assert moved.status_code == 303
    assert moved.headers["location"] == "/ui/instances?status=failed"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=bogus", "unknown status &#39;bogus&#39;"),
        ("status=FAILED", "unknown status"),
        ("status=%3Cscript%3E", "&lt;script&gt;"),
        ("batch=Bad%20Name", "is not a batch name"),
        ("trigger=bogus", "unknown trigger"),
        ("from=yesterday", "from &#39;yesterday&#39; is not a date"),
        ("before=abc", "before &#39;abc&#39; is not an instance id"),
    ],
)
def test_bad_filters_answer_422_pages(world: dict[str, Any], query: str, message: str) -> None:
    response = get(world["service"], f"/ui/instances?{query}", BEARER)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/html")
    assert message in response.text
    assert "<script>" not in response.text


def test_instance_page_shows_header_dag_steps_items_and_attempts(world: dict[str, Any]) -> None:
    response = get(world["service"], f"/ui/instances/{world['failed']}", basic(TOKEN))
    assert response.status_code == 200
    page = response.text
    assert f"Instance {world['failed']} of dash_report" in page
    assert "version 1" in page and "<dt>trigger</dt><dd>cli</dd>" in page
    assert "&#34;period&#34;: &#34;WEEK&#34;" in page
    assert " KST</time>" in page  # times in the batch's timezone
    for key in ("produce", "each"):
        assert f'data-step="{key}"' in page  # in the DAG
        assert f'id="step-{key}"' in page
    assert 'data-step="each" data-status="failed"' in page
    assert "4 items: 2 failed, 2 succeeded" in page
    assert "{&#34;item&#34;: 1, &#34;double&#34;: 2}" in page  # a short result
    # Each failing item failed twice; the first attempts are in the history.
    assert "2 earlier attempts" in page
    assert "item https://h/x?token=*** failed" in page
    assert "second line of the traceback" in page
    # A final instance is not polled; a failed one offers a retry, of all or some items.
    assert "hx-get" not in page
    assert 'id="retry"' in page and 'name="item" value="each:' in page


def test_pages_show_no_secret_and_escape_every_value(world: dict[str, Any]) -> None:
    service, failed = world["service"], world["failed"]
    pages = [
        get(service, "/ui", BEARER).text,
        get(service, "/ui/instances?status=failed", BEARER).text,
        get(service, f"/ui/instances/{failed}", BEARER).text,
        get(service, f"/ui/instances/{failed}/live", BEARER).text,
        get(service, "/ui/batches/dash_report", BEARER).text,
    ]
    for page in pages:
        assert "s3cr3t" not in page
        assert "hunter22" not in page
        assert TOKEN not in page
        assert "<script>alert" not in page
    for page in pages[1:4]:
        assert "&lt;script&gt;alert(&#39;pwn&#39;)&lt;/script&gt;" in page
        assert "token=***" in page
    assert "&#34;password&#34;: &#34;***&#34;" in pages[2]


def test_pages_load_scripts_only_from_the_dashboard_and_forbid_framing(
    world: dict[str, Any],
) -> None:
    response = get(world["service"], "/ui", BEARER)
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self';" in policy
    assert "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert response.headers["cache-control"] == "no-store"
    page = response.text
    assert page.count("<script") == 1
    assert '<script src="/ui/static/htmx.min.js" defer></script>' in page
    for external in ("http://", "https://", "//cdn", "@import", "url("):
        assert external not in page  # nothing loaded from elsewhere


def test_htmx_and_its_license_are_served_from_the_package(world: dict[str, Any]) -> None:
    script = get(world["service"], "/ui/static/htmx.min.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "htmx" in script.text[:200]
    assert "Zero-Clause BSD" in get(world["service"], "/ui/static/htmx.LICENSE").text
    assert get(world["service"], "/ui/static/../dashboard.py").status_code == 404
    assert get(world["service"], "/ui/static/nothing.js").status_code == 404


def test_a_wide_map_lists_the_first_50_items_and_every_failed_one(world: dict[str, Any]) -> None:
    page = get(world["service"], f"/ui/instances/{world['wide']}", BEARER).text
    assert "60 items: 1 failed, 59 succeeded (showing the first 50 and 1 failed)" in page
    assert "<td>49</td>" in page
    assert "<td>50</td>" not in page
    assert "<td>55</td>" in page
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
