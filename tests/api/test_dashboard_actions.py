"""The dashboard's actions in process (an httpx client over ASGI that keeps cookies): sign in
and out, CSRF, run with params, retry (all or some items), cancel, pause, audit, downloads."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import fixture_runners as fr
from stepline import InstanceStatus, batch, step
from stepline.api import create_app
from stepline.service import Stepline
from stepline.settings import Secret, Settings

TOKEN = "tok-actions-4f7b1a9d"
W = "fixture_runners:"
HTML = {"Accept": "text/html"}
SECRET = "sk-live-0b2e7c"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Stepline]:
    settings = Settings(db=f"sqlite:///{tmp_path / 'a.db'}", api_token=Secret(TOKEN))
    with Stepline(settings) as app:
        app.apply(
            batch(
                "act_report",
                [step("only", W + "work", **{"with": {"value": {"api_key": SECRET, "n": 1}}})],
                params={"period": "WEEK", "threshold": 85, "tags": None},
            )
        )
        app.apply(
            batch(
                "act_map",
                [
                    step("produce", W + "work", ["each"], **{"with": {"value": [0, 1, 2]}}),
                    step(
                        "each", W + "item_work", map="produce", **{"with": {"fail_items": [1, 2]}}
                    ),
                ],
            )
        )
        app.apply(batch("act_big", [step("big", W + "work", **{"with": {"value": "x" * 50_000}})]))
        yield app


class TestClient:
    """A synchronous face on one ``httpx.AsyncClient`` (its cookies persist)."""

    __test__ = False

    def __init__(self, service: Stepline) -> None:
        self._runner = asyncio.Runner()
        transport = httpx.ASGITransport(app=create_app(service), client=("127.0.0.1", 50000))
        self._http = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")
        self.cookies = self._http.cookies

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._runner.run(self._http.get(url, **kwargs))

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("follow_redirects", True)
        return self._runner.run(self._http.post(url, **kwargs))

    def close(self) -> None:
        self._runner.run(self._http.aclose())
        self._runner.close()


@pytest.fixture
def client(service: Stepline) -> Iterator[TestClient]:
    http = TestClient(service)
    yield http
    http.close()


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def signed_in(client: TestClient) -> str:
    """Sign in with the form; returns a CSRF token for later forms."""
    csrf = _csrf(client.get("/ui/login").text)
    answer = client.post(
        "/ui/login", data={"csrf": csrf, "token": TOKEN, "next": "/ui"}, follow_redirects=False
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"
    return csrf


def test_a_browser_is_sent_to_the_login_form_and_signs_in_with_a_strict_cookie(
    client: TestClient,
) -> None:
    first = client.get("/ui/instances?batch=act_report", headers=HTML, follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"] == "/ui/login?next=%2Fui%2Finstances%3Fbatch%3Dact_report"
    form = client.get("/ui/login")
    assert 'type="password" name="token"' in form.text
    assert "httponly" in form.headers["set-cookie"].lower()  # the CSRF nonce
    csrf = _csrf(form.text)
    wrong = client.post("/ui/login", data={"csrf": csrf, "token": "nope", "next": "/ui"})
    assert wrong.status_code == 401 and "not the API token" in wrong.text
    right = client.post(
        "/ui/login",
        data={"csrf": csrf, "token": TOKEN, "next": "/ui/instances"},
        follow_redirects=False,
    )
    assert right.status_code == 303 and right.headers["location"] == "/ui/instances"
    cookie = right.headers["set-cookie"]
    assert cookie.startswith("stepline_session=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=43200" in cookie
    assert TOKEN not in cookie
    page = client.get("/ui", headers=HTML)
    assert page.status_code == 200 and "api token (session)" in page.text


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/ui", "/api/x"])
def test_login_only_returns_to_dashboard_pages(client: TestClient, target: str) -> None:
    csrf = _csrf(client.get("/ui/login").text)
    answer = client.post(
        "/ui/login", data={"csrf": csrf, "token": TOKEN, "next": target}, follow_redirects=False
    )
    assert answer.headers["location"] == "/ui"


def test_a_forged_or_stale_session_cookie_is_not_a_session(client: TestClient) -> None:
    signed_in(client)
    value = client.cookies["stepline_session"]
    expires, nonce, signature = value.split(".")
    for forged in (f"{int(expires) + 99}.{nonce}.{signature}", f"1.{nonce}.{signature}", "x"):
        client.cookies.set("stepline_session", forged)
        assert client.get("/ui", headers=HTML, follow_redirects=False).status_code == 303


def test_sign_out_ends_the_session(client: TestClient) -> None:
    csrf = signed_in(client)
    out = client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert client.get("/ui", headers=HTML, follow_redirects=False).status_code == 303


@pytest.mark.parametrize(
    "path",
    [
        "/ui/batches/act_report/run",
        "/ui/instances/1/retry",
        "/ui/instances/1/cancel",
        "/ui/batches/act_report/pause",
        "/ui/logout",
        "/ui/login",
    ],
)
@pytest.mark.parametrize("csrf", [None, "", "forged-token-value"])
def test_every_form_without_its_csrf_token_is_refused(
    client: TestClient, service: Stepline, path: str, csrf: str | None
) -> None:
    signed_in(client)
    service.trigger("act_report")
    data = {"token": TOKEN} if csrf is None else {"csrf": csrf, "token": TOKEN}
    answer = client.post(path, data=data, follow_redirects=False)
    assert answer.status_code == 403
    assert "CSRF token" in answer.text
    assert len(service.store.instances()) == 1  # nothing ran
    assert service.store.instance(1).status is InstanceStatus.QUEUED
    assert service.store.audit(batch="act_report") == []


def test_a_token_from_another_browser_does_not_pass(client: TestClient, service: Stepline) -> None:
    csrf = signed_in(client)
    client.cookies.set("stepline_csrf", "another-browsers-nonce-1234")
    answer = client.post("/ui/batches/act_report/run", data={"csrf": csrf})
    assert answer.status_code == 403 and service.store.instances() == []


def test_actions_need_the_api_token_too(client: TestClient) -> None:
    csrf = _csrf(client.get("/ui/login").text)  # a CSRF token, but not signed in
    answer = client.post("/ui/batches/act_report/run", data={"csrf": csrf})
    assert answer.status_code == 401


def test_run_with_params_from_the_form_and_an_idempotency_key(
    client: TestClient, service: Stepline
) -> None:
    csrf = signed_in(client)
    page = client.get("/ui/batches/act_report").text
    assert 'name="param.threshold" value="85"' in page
    assert 'name="param.period" value="WEEK"' in page
    form = {
        "csrf": csrf,
        "param.period": "MONTH",
        "param.threshold": "70",
        "param.tags": '["a", "b"]',
        "idempotency_key": "monthly-2026-11",
    }
    first = client.post("/ui/batches/act_report/run", data=form, follow_redirects=False)
    assert first.status_code == 303
    instance_id = int(first.headers["location"].rsplit("/", 1)[1])
    instance = service.store.instance(instance_id)
    assert instance.trigger == "ui"
    assert dict(instance.params) == {"period": "MONTH", "threshold": 70, "tags": ["a", "b"]}
    again = client.post("/ui/batches/act_report/run", data=form, follow_redirects=False)
    assert again.headers["location"] == first.headers["location"]  # the key was seen
    audit = service.store.audit(instance_id=instance_id)
    assert [(a.actor, a.action) for a in audit] == [("api token (session)", "run")] * 2
    assert "no new instance" in (audit[0].detail or "")
    shown = client.get(f"/ui/instances/{instance_id}").text
    assert "api token (session)" in shown and "idempotency key monthly-2026-11" in shown


def test_basic_auth_is_named_in_the_audit_trail(client: TestClient, service: Stepline) -> None:
    csrf = _csrf(client.get("/ui/login").text)
    answer = client.post(
        "/ui/batches/act_report/run",
        data={"csrf": csrf},
        auth=("ops", TOKEN),
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert service.store.audit(batch="act_report")[0].actor == "basic auth"


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"param.unknown": "1"}, 422, "act_report declares no param &#39;unknown&#39;"),
        ({"idempotency_key": "k" * 201}, 422, "idempotency key longer than 200"),
    ],
)
def test_bad_run_forms_answer_pages_that_name_the_problem(
    client: TestClient, service: Stepline, form: dict[str, str], status: int, message: str
) -> None:
    csrf = signed_in(client)
    answer = client.post("/ui/batches/act_report/run", data={"csrf": csrf, **form})
    assert answer.status_code == status and message in answer.text
    assert service.store.instances() == []


def test_unknown_batches_and_instances_answer_404_pages(client: TestClient) -> None:
    csrf = signed_in(client)
    assert client.post("/ui/batches/nobody/run", data={"csrf": csrf}).status_code == 404
    assert client.post("/ui/batches/Bad%20Name/run", data={"csrf": csrf}).status_code == 404
    assert client.post("/ui/instances/99/cancel", data={"csrf": csrf}).status_code == 404
    assert client.post("/ui/instances/x/retry", data={"csrf": csrf}).status_code == 404


def test_retry_some_failed_items_then_all_from_the_page(
    client: TestClient, service: Stepline
) -> None:
    csrf = signed_in(client)
    instance, _ = service.trigger("act_map")
    assert service.run_instance(instance.id).status is InstanceStatus.FAILED
    page = client.get(f"/ui/instances/{instance.id}").text
    assert 'value="each:1"' in page and 'value="each:2"' in page and 'value="each:0"' not in page
    fr.healed.add("act_map")
    try:
        answer = client.post(
            f"/ui/instances/{instance.id}/retry",
            data={"csrf": csrf, "item": "each:2"},
            follow_redirects=False,
        )
        assert answer.status_code == 303
        assert service.run_instance(instance.id).status is InstanceStatus.FAILED  # 1 is left
        assert fr.calls[("act_map", "each[2]")] == 2 and fr.calls[("act_map", "each[1]")] == 1
        client.post(f"/ui/instances/{instance.id}/retry", data={"csrf": csrf})
        assert service.run_instance(instance.id).status is InstanceStatus.SUCCEEDED
    finally:
        fr.healed.discard("act_map")
    details = [a.detail for a in service.store.audit(instance_id=instance.id)]
    assert details == ["every step that did not succeed", "only each items 2"]
    refused = client.post(f"/ui/instances/{instance.id}/retry", data={"csrf": csrf})
    assert refused.status_code == 409 and "succeeded and is final" in refused.text


def test_cancel_from_the_page(client: TestClient, service: Stepline) -> None:
    csrf = signed_in(client)
    instance, _ = service.trigger("act_report")
    assert 'id="cancel"' in client.get(f"/ui/instances/{instance.id}").text
    client.post(f"/ui/instances/{instance.id}/cancel", data={"csrf": csrf})
    assert service.store.instance(instance.id).status is InstanceStatus.CANCELLED
    again = client.post(f"/ui/instances/{instance.id}/cancel", data={"csrf": csrf})
    assert again.status_code == 409 and "already cancelled" in again.text
    page = client.get(f"/ui/instances/{instance.id}").text
    assert "<strong>cancel</strong>" in page


def test_pause_and_resume_where_the_service_supports_them(
    client: TestClient, service: Stepline
) -> None:
    csrf = signed_in(client)
    answer = client.post("/ui/batches/act_report/pause", data={"csrf": csrf})
    if callable(getattr(service, "pause", None)):
        assert answer.status_code == 200 and '<span class="st paused">' in answer.text
        client.post("/ui/batches/act_report/resume", data={"csrf": csrf})
        actions = [a.action for a in service.store.audit(batch="act_report")]
        assert actions == ["resume", "pause"]
    else:
        assert answer.status_code == 409 and "cannot pause a batch" in answer.text
        assert "Pause schedule" not in client.get("/ui/batches/act_report").text


def test_large_results_are_cut_with_a_download_and_secrets_masked(
    client: TestClient, service: Stepline
) -> None:
    signed_in(client)
    big, _ = service.trigger("act_big")
    service.run_instance(big.id)
    page = client.get(f"/ui/instances/{big.id}").text
    assert "… (cut)" in page and "Download the whole result" in page
    assert page.count("x" * 1000) < 50
    whole = client.get(f"/ui/instances/{big.id}/result?step=big")
    assert whole.headers["content-disposition"] == (
        f'attachment; filename="instance-{big.id}-big.json"'
    )
    assert whole.json() == "x" * 50_000
    small, _ = service.trigger("act_report")
    service.run_instance(small.id)
    for text in (
        client.get(f"/ui/instances/{small.id}").text,
        client.get(f"/ui/instances/{small.id}/result?step=only").text,
    ):
        assert SECRET not in text and "***" in text
    missing = client.get(f"/ui/instances/{small.id}/result?step=nothing")
    assert missing.status_code == 404


def test_the_instance_list_pages_through_every_instance(
    client: TestClient, service: Stepline
) -> None:
    signed_in(client)
    made = {service.trigger("act_report")[0].id for _ in range(120)}
    seen: set[int] = set()
    url: str | None = "/ui/instances?batch=act_report"
    pages = 0
    while url:
        page = client.get(url).text
        seen |= {int(n) for n in re.findall(r'href="/ui/instances/(\d+)">#', page)}
        found = re.search(r'href="(/ui/instances\?[^"]+)">older', page)
        url = found.group(1).replace("&amp;", "&") if found else None
        pages += 1
    assert seen == made and pages == 3
    empty = client.get("/ui/instances?from=2000-01-01&to=2000-01-02").text
    assert "no instances" in empty


def test_a_running_instance_is_polled_until_it_ends(client: TestClient, service: Stepline) -> None:
    signed_in(client)
    instance, _ = service.trigger("act_report")
    page = client.get(f"/ui/instances/{instance.id}").text
    assert f'hx-get="/ui/instances/{instance.id}/live" hx-trigger="every 2s"' in page
    live = client.get(f"/ui/instances/{instance.id}/live")
    assert live.status_code == 200 and live.text.startswith('<div id="live"')
    assert "hx-get" in live.text
    service.run_instance(instance.id)
    assert "hx-get" not in client.get(f"/ui/instances/{instance.id}/live").text


def test_a_poll_after_the_session_ended_sends_the_page_to_the_login_form(
    client: TestClient, service: Stepline
) -> None:
    instance, _ = service.trigger("act_report")
    answer = client.get(
        f"/ui/instances/{instance.id}/live",
        headers={
            "HX-Request": "true",
            "HX-Current-URL": f"http://127.0.0.1/ui/instances/{instance.id}",
        },
    )
    assert answer.status_code == 401
    assert "www-authenticate" not in answer.headers  # no password dialog over the page
    assert answer.headers["hx-redirect"] == f"/ui/login?next=%2Fui%2Finstances%2F{instance.id}"


def test_without_a_token_actions_are_local_and_other_sites_are_refused(tmp_path: Path) -> None:
    with Stepline(db=f"sqlite:///{tmp_path / 'open.db'}") as open_service:
        open_service.apply(batch("open_batch", [step("a", W + "work")]))
        client = TestClient(open_service)
        try:
            login = client.get("/ui/login?next=/ui/instances")
            assert login.status_code == 303 and login.headers["location"] == "/ui/instances"
            csrf = _csrf(client.get("/ui/batches/open_batch").text)
            forged = client.post(
                "/ui/batches/open_batch/run",
                data={"csrf": csrf},
                headers={"Origin": "https://evil.example"},
            )
            assert forged.status_code == 403 and open_service.store.instances() == []
            done = client.post("/ui/batches/open_batch/run", data={"csrf": csrf})
            assert done.status_code == 200
            assert open_service.store.audit()[0].actor == "local (no token configured)"
        finally:
            client.close()


def test_api_actions_are_in_the_audit_trail_too(client: TestClient, service: Stepline) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    ran = client.post(
        "/api/batches/act_report/run",
        json={"params": {"period": "DAY", "password": "pw-9x"}},
        headers=bearer,
    )
    instance_id = ran.json()["instance_id"]
    client.post(f"/api/instances/{instance_id}/cancel", headers=bearer)
    audit = service.store.audit(instance_id=instance_id)
    assert [(a.actor, a.action) for a in audit] == [("api token", "cancel"), ("api token", "run")]
    assert audit[1].detail == 'params {"period": "DAY", "password": "***"} (HTTP API)'
    signed_in(client)
    assert "cancel requested (HTTP API)" in client.get(f"/ui/instances/{instance_id}").text


def test_pause_and_resume_from_the_batches_page_change_the_stored_state(
    client: TestClient, service: Stepline
) -> None:
    csrf = signed_in(client)
    paused = client.post("/ui/batches/act_report/pause", data={"csrf": csrf})
    assert paused.status_code == 200, paused.text
    assert service.store.definition("act_report").paused
    assert "paused" in client.get("/ui", headers=HTML).text
    resumed = client.post("/ui/batches/act_report/resume", data={"csrf": csrf})
    assert resumed.status_code == 200, resumed.text
    assert not service.store.definition("act_report").paused


def test_the_instance_page_shows_what_each_step_logged(
    client: TestClient, service: Stepline
) -> None:
    service.apply(batch("act_logs", [step("talk", W + "says_weather")]))
    instance, _ = service.trigger("act_logs", owned=True)
    final = service.run_instance(instance.id)
    assert final.status is InstanceStatus.SUCCEEDED
    signed_in(client)
    page = client.get(f"/ui/instances/{final.id}", headers=HTML).text
    assert "weather for farm F002 collected" in page
