"""The operators' endpoints against a real server: pause and resume, backfill, delete,
instance logs, list pages, the offline Swagger UI, and error bodies with no CLI advice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live_server import LiveServer

from stepline import batch, step
from stepline.service import Stepline

W = "fixture_runners:"


def prepare(service: Stepline) -> None:
    service.apply(batch("nightly", [step("a", W + "work")], cron="0 2 * * *", timezone="UTC"))
    service.apply(batch("chatty", [step("a", W + "chatty", **{"with": {"lines": 2}})]))
    service.apply(batch("gone", [step("a", W + "work")]))
    for _ in range(5):
        done, _ = service.trigger("chatty")
        service.run_instance(done.id)


@pytest.fixture(scope="module")
def server(start_server: Any) -> LiveServer:
    live: LiveServer = start_server(prepare)
    return live


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        client.headers.update(server.auth)
        yield client


def test_pause_refuses_triggers_with_409_until_resume(api: httpx.Client) -> None:
    paused = api.post("/api/batches/nightly/pause")
    assert paused.status_code == 200
    assert paused.json()["paused"] is True
    listed = {b["name"]: b for b in api.get("/api/batches").json()["batches"]}
    assert listed["nightly"]["paused"] is True
    refused = api.post("/api/batches/nightly/run")
    assert refused.status_code == 409
    assert "paused" in refused.json()["detail"]
    resumed = api.post("/api/batches/nightly/resume")
    assert resumed.json() == {"name": "nightly", "paused": False, "paused_at": None}
    assert api.post("/api/batches/nightly/run").status_code == 202
    assert api.post("/api/batches/nope/pause").status_code == 404


def test_backfill_is_idempotent_and_can_be_a_dry_run(api: httpx.Client) -> None:
    body = {"from": "2026-10-05", "to": "2026-10-07"}
    dry = api.post("/api/batches/nightly/backfill", json={**body, "dry_run": True})
    assert dry.status_code == 200
    assert [f["state"] for f in dry.json()["fire_times"]] == ["would create"] * 3
    made = api.post("/api/batches/nightly/backfill", json=body).json()
    assert [f["scheduled_for"] for f in made["fire_times"]] == [
        "2026-10-05T02:00:00Z",
        "2026-10-06T02:00:00Z",
        "2026-10-07T02:00:00Z",
    ]
    assert [f["state"] for f in made["fire_times"]] == ["created"] * 3
    again = api.post("/api/batches/nightly/backfill", json=body).json()
    assert [f["state"] for f in again["fire_times"]] == ["exists"] * 3
    bad = api.post("/api/batches/nightly/backfill", json={"from": "2026-10-07", "to": "2026-10-05"})
    assert bad.status_code == 400 and "before" in bad.json()["detail"]
    invalid = api.post("/api/batches/nightly/backfill", json={"from": "yesterday", "to": "x"})
    assert invalid.status_code == 422


def test_instance_logs_are_served_per_attempt(api: httpx.Client) -> None:
    (newest,) = api.get("/api/instances", params={"batch": "chatty", "limit": 1}).json()[
        "instances"
    ]
    logs = api.get(f"/api/instances/{newest['id']}/logs").json()
    assert logs["instance_final"] is True
    (entry,) = logs["logs"]
    assert entry["step"] == "a" and entry["attempt"] == 1 and not entry["truncated"]
    assert "line" in entry["text"] and "chatty.lib" in entry["text"]
    later = api.get(f"/api/instances/{newest['id']}/logs", params={"after": entry["id"]})
    assert later.json()["logs"] == []
    assert api.get("/api/instances/999999/logs").status_code == 404
    assert api.get(f"/api/instances/{newest['id']}/logs", params={"step": "a"}).json()["logs"]
    unknown = api.get(f"/api/instances/{newest['id']}/logs", params={"step": "nosuch"})
    assert unknown.status_code == 404, unknown.text
    assert "has no step 'nosuch'" in unknown.json()["detail"]
    assert "stepline" not in unknown.json()["detail"]  # no CLI advice in an API answer


def test_lists_come_in_pages(api: httpx.Client) -> None:
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"batch": "chatty", "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = api.get("/api/instances", params=params).json()
        seen += [i["id"] for i in page["instances"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)
    first = api.get("/api/batches", params={"limit": 1}).json()
    assert len(first["batches"]) == 1 and first["next_offset"] == 1
    rest = api.get("/api/batches", params={"offset": 1}).json()
    assert rest["next_offset"] is None


def test_delete_keeps_history_unless_purged(api: httpx.Client) -> None:
    assert api.delete("/api/batches/gone").json() == {
        "name": "gone",
        "purged": False,
        "deleted_instances": 0,
    }
    assert api.get("/api/batches/gone").status_code == 404
    assert api.delete("/api/batches/gone", params={"purge": True}).status_code == 200


def test_error_bodies_never_suggest_a_cli_command(api: httpx.Client) -> None:
    answers = [
        api.get("/api/batches/missing"),
        api.get("/api/instances/424242"),
        api.post("/api/batches/missing/run"),
        api.post("/api/batches/missing/backfill", json={"from": "2026-01-01", "to": "2026-01-02"}),
    ]
    (done,) = api.get("/api/instances", params={"batch": "chatty", "limit": 1}).json()["instances"]
    answers.append(api.post(f"/api/instances/{done['id']}/retry"))
    for answer in answers:
        assert answer.status_code in (404, 409), answer.text
        assert "stepline " not in answer.json()["detail"], answer.text
        assert "`" not in answer.json()["detail"], answer.text


def test_swagger_ui_is_served_from_the_package_not_a_cdn(api: httpx.Client) -> None:
    page = api.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert "/docs/static/swagger-ui-bundle.js" in page.text
    script = api.get("/docs/static/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert api.get("/docs/static/swagger-ui.css").status_code == 200
