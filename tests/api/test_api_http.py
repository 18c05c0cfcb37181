"""The HTTP API of the SPEC against a real uvicorn server: auth, triggers, idempotency,
definitions, instances, errors as 4xx with a message, metrics, and no secret in answers."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from live_server import TOKEN, LiveServer

import fixture_runners as fr
from stepline import batch, step
from stepline.service import Stepline

W = "fixture_runners:"
SECRET = "s3cr3t"
LIMIT = 1_048_576


def prepare(service: Stepline) -> None:
    service.apply(
        batch(
            "demo",
            [step("a", fr.work, ["b"]), step("b", W + "work")],
            params={"period": "WEEK"},
            alerts=[{"type": "webhook", "url": f"https://hooks.example.com/x?token={SECRET}"}],
        )
    )
    service.apply(batch("busy", [step("only", W + "work")], on_busy="skip"))
    service.apply(batch("finished", [step("only", W + "work")]))
    done, _ = service.trigger("finished")
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


def instance_count(server: LiveServer) -> int:
    (count,) = server.rows("SELECT count(*) FROM batch_instance")[0]
    assert isinstance(count, int)
    return count


CYCLE = {
    "steps": [
        {"key": "a", "runner": W + "work", "next_steps": ["b"]},
        {"key": "b", "runner": W + "work", "next_steps": ["a"]},
    ]
}
PROTECTED: list[tuple[str, str, Any]] = [
    ("GET", "/api/batches", None),
    ("GET", "/api/batches/{name}", None),
    ("PUT", "/api/batches/{name}", {"steps": [{"key": "x", "runner": W + "work"}]}),
    ("POST", "/api/batches/{name}/run", {"params": {}}),
    ("POST", "/batch/run", {"batch": "demo"}),
    ("GET", "/api/instances", None),
    ("GET", "/api/instances/{instance_id}", None),
    ("POST", "/api/instances/{instance_id}/retry", None),
    ("POST", "/api/instances/{instance_id}/cancel", None),
    ("GET", "/metrics", None),
    ("POST", "/api/batches/{name}/pause", None),
    ("POST", "/api/batches/{name}/resume", None),
    ("POST", "/api/batches/{name}/backfill", {"from": "2026-01-01", "to": "2026-01-01"}),
    ("DELETE", "/api/batches/{name}", None),
    ("GET", "/api/instances/{instance_id}/logs", None),
]


def concrete(path: str) -> str:
    return path.replace("{name}", "demo").replace("{instance_id}", "1")


def test_every_endpoint_but_healthz_is_in_the_protected_list(api: httpx.Client) -> None:
    schema = api.get("/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert documented - {("GET", "/healthz")} == {(m, p) for m, p, _ in PROTECTED}


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}"])
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED, ids=lambda v: str(v))
def test_protected_endpoints_refuse_a_missing_or_wrong_token(
    server: LiveServer, method: str, path: str, body: Any, authorization: str | None
) -> None:
    before = instance_count(server)
    headers = {"Authorization": authorization} if authorization else {}
    with server.client() as client:
        response = client.request(method, concrete(path), json=body, headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert "token" in response.json()["detail"].lower()
    assert instance_count(server) == before


def test_healthz_needs_no_token(server: LiveServer) -> None:
    with server.client() as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_run_with_the_token_queues_an_instance_with_its_steps(api: httpx.Client) -> None:
    response = api.post("/api/batches/demo/run", json={"params": {"period": "DAY"}})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert body["batch"] == "demo"
    detail = api.get(f"/api/instances/{body['instance_id']}").json()
    assert detail["params"] == {"period": "DAY"}
    assert detail["trigger"] == "http"
    assert {s["key"]: s["status"] for s in detail["steps"]} == {"a": "pending", "b": "pending"}
    assert set(detail["steps"][0]) == {
        "key", "map_index", "status", "attempt", "result_payload", "error",
        "started_at", "finished_at",
    }  # fmt: skip


def test_run_without_a_body_uses_the_default_params(api: httpx.Client) -> None:
    response = api.post("/api/batches/demo/run")
    assert response.status_code == 202, response.text
    detail = api.get(f"/api/instances/{response.json()['instance_id']}").json()
    assert detail["params"] == {"period": "WEEK"}


def test_seed_endpoint_batch_run_does_the_same(api: httpx.Client) -> None:
    response = api.post("/batch/run", json={"batch": "demo", "params": {"period": "MONTH"}})
    assert response.status_code == 202, response.text
    detail = api.get(f"/api/instances/{response.json()['instance_id']}").json()
    assert (detail["batch"], detail["params"]) == ("demo", {"period": "MONTH"})


@pytest.mark.parametrize(
    ("method", "path", "body", "names"),
    [
        ("POST", "/api/batches/nope/run", None, "'nope'"),
        ("POST", "/batch/run", {"batch": "nope"}, "'nope'"),
        ("GET", "/api/batches/nope", None, "'nope'"),
        ("GET", "/api/instances/987654", None, "987654"),
        ("POST", "/api/instances/987654/retry", None, "987654"),
        ("POST", "/api/instances/987654/cancel", None, "987654"),
    ],
)
def test_unknown_batch_or_instance_is_404_naming_it(
    api: httpx.Client, method: str, path: str, body: Any, names: str
) -> None:
    response = api.request(method, path, json=body)
    assert response.status_code == 404, response.text
    assert names in response.json()["detail"]
    assert "does not exist" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "content", "field"),
    [
        ("/api/batches/demo/run", b'{"params": [1, 2]}', "body.params"),
        ("/api/batches/demo/run", b'{"params": "period=DAY"}', "body.params"),
        ("/api/batches/demo/run", b'{"params": {"x": NaN}}', "body.params"),
        ("/api/batches/demo/run", b'{"parmas": {}}', "body.parmas"),
        ("/api/batches/demo/run", b'{"params": {"period": "DAY"', "JSON"),
        ("/api/batches/demo/run", b"[1, 2]", "body"),
        ("/batch/run", b'{"params": {}}', "body.batch"),
        ("/batch/run", b'{"batch": "Not A Name"}', "body.batch"),
        ("/batch/run", b"not json", "JSON"),
    ],
)
def test_malformed_requests_are_422_naming_the_field(
    server: LiveServer, api: httpx.Client, path: str, content: bytes, field: str
) -> None:
    before = instance_count(server)
    response = api.post(path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert instance_count(server) == before


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=bogus", "query.status"), ("limit=0", "query.limit"), ("batch=A!", "query.batch")],
)
def test_bad_instance_filters_are_422(api: httpx.Client, query: str, field: str) -> None:
    response = api.get(f"/api/instances?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(field)


def test_instance_filters(api: httpx.Client) -> None:
    response = api.get("/api/instances", params={"batch": "finished", "status": "succeeded"})
    assert response.status_code == 200
    instances = response.json()["instances"]
    assert len(instances) == 1
    assert (instances[0]["batch"], instances[0]["status"]) == ("finished", "succeeded")


def test_idempotency_key_returns_the_same_instance_and_stores_one(
    server: LiveServer, api: httpx.Client
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = api.post("/api/batches/demo/run", json={"params": {"n": 1}}, headers=headers)
    again = api.post("/api/batches/demo/run", json={"params": {"n": 2}}, headers=headers)
    seed = api.post("/batch/run", json={"batch": "demo"}, headers=headers)
    assert (first.status_code, again.status_code, seed.status_code) == (202, 200, 200)
    ids = {r.json()["instance_id"] for r in (first, again, seed)}
    assert len(ids) == 1
    rows = server.rows("SELECT params FROM batch_instance WHERE idempotency_key = 'order-42'")
    assert len(rows) == 1
    assert '"n":1' in str(rows[0][0])


def test_concurrent_requests_with_one_idempotency_key_create_one_instance(
    server: LiveServer,
) -> None:
    def post(_: int) -> httpx.Response:
        with server.client() as client:
            return client.post(
                "/api/batches/demo/run", headers={**server.auth, "Idempotency-Key": "race-7"}
            )

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [202]
    assert len({r.json()["instance_id"] for r in responses}) == 1
    assert server.rows("SELECT count(*) FROM batch_instance WHERE idempotency_key = 'race-7'") == [
        (1,)
    ]


def test_busy_batch_with_on_busy_skip_answers_409_with_the_instance(api: httpx.Client) -> None:
    assert api.post("/api/batches/busy/run").status_code == 202
    response = api.post("/api/batches/busy/run")
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["detail"].startswith("skipped:")
    assert "max_active_instances" in body["detail"]
    recorded = api.get(f"/api/instances/{body['instance_id']}").json()
    assert recorded["status"] == "cancelled"


def test_put_creates_and_versions_a_batch(server: LiveServer, api: httpx.Client) -> None:
    one = {"steps": [{"key": "x", "runner": W + "work"}]}
    two = {"name": "editable", "cron": "0 0 2 * * 1", "steps": [{"key": "y", "runner": W + "work"}]}
    assert api.put("/api/batches/editable", json=one).json() == {"name": "editable", "version": 1}
    assert api.put("/api/batches/editable", json=two).json() == {"name": "editable", "version": 2}
    same = api.put("/api/batches/editable", json=two)
    assert (same.status_code, same.json()["version"]) == (200, 2)
    shown = api.get("/api/batches/editable").json()
    assert shown["version"] == 2
    assert shown["document"]["cron"] == "0 0 2 * * 1"
    assert [s["key"] for s in shown["document"]["steps"]] == ["y"]
    listed = {b["name"]: b for b in api.get("/api/batches").json()["batches"]}
    assert listed["editable"]["version"] == 2
    assert listed["editable"]["step_count"] == 1


def test_put_of_a_cycle_is_refused_naming_it_and_stores_nothing(
    server: LiveServer, api: httpx.Client
) -> None:
    before = api.get("/api/batches/demo").json()
    versions = server.rows("SELECT count(*) FROM batch_definition_version")
    response = api.put("/api/batches/demo", json=CYCLE)
    assert response.status_code == 422, response.text
    body = response.json()
    assert "cycle" in body["detail"]
    assert [p["message"] for p in body["problems"]] == ["cycle: a -> b -> a"]
    after = api.get("/api/batches/demo").json()
    assert after["version"] == before["version"]
    assert after["document"] == before["document"]
    assert server.rows("SELECT count(*) FROM batch_definition_version") == versions


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"name": "other", "steps": [{"key": "x", "runner": W + "work"}]}, "'other'"),
        ({"steps": [{"key": "x", "runner": "nowhere.at_all:fn"}]}, "nowhere.at_all"),
        ({"steps": [{"key": "x", "runner": W + "work"}], "cron": "61 * * * *"}, "cron"),
        ({"steps": []}, "steps"),
    ],
)
def test_put_of_an_invalid_definition_lists_the_problem(
    api: httpx.Client, document: dict[str, Any], message: str
) -> None:
    response = api.put("/api/batches/demo", json=document)
    assert response.status_code == 422, response.text
    assert any(message in p["message"] for p in response.json()["problems"])
    assert api.get("/api/batches/demo").json()["version"] == 1


def test_put_with_a_non_object_body_is_422(api: httpx.Client) -> None:
    response = api.put("/api/batches/demo", json=["steps"])
    assert response.status_code == 422
    assert response.json()["detail"].startswith("body")


def test_oversized_body_is_413_by_declared_length(server: LiveServer, api: httpx.Client) -> None:
    before = instance_count(server)
    body = b'{"params": {"blob": "' + b"x" * LIMIT + b'"}}'
    response = api.post(
        "/api/batches/demo/run", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert str(LIMIT) in response.json()["detail"]
    assert instance_count(server) == before


def test_oversized_body_is_413_when_streamed_without_a_length(
    server: LiveServer, api: httpx.Client
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"params": {"blob": "'
        for _ in range(20):
            yield b"x" * 65_536
        yield b'"}}'

    before = instance_count(server)
    response = api.post(
        "/api/batches/demo/run", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert instance_count(server) == before


def test_a_body_just_under_the_limit_is_accepted(api: httpx.Client) -> None:
    blob = "x" * (LIMIT - 100)
    response = api.post("/api/batches/demo/run", json={"params": {"blob": blob}})
    assert response.status_code == 202, response.text


def test_retry_of_a_succeeded_instance_is_409_with_a_message(api: httpx.Client) -> None:
    done = api.get("/api/instances", params={"batch": "finished", "status": "succeeded"}).json()
    response = api.post(f"/api/instances/{done['instances'][0]['id']}/retry")
    assert response.status_code == 409, response.text
    assert "succeeded and is final" in response.json()["detail"]
    assert "run the batch anew" in response.json()["detail"]


def test_retry_of_an_unfinished_instance_is_409(api: httpx.Client) -> None:
    queued = api.post("/api/batches/demo/run").json()["instance_id"]
    response = api.post(f"/api/instances/{queued}/retry")
    assert response.status_code == 409, response.text
    assert "is queued" in response.json()["detail"]


def test_cancel_then_retry(api: httpx.Client) -> None:
    queued = api.post("/api/batches/demo/run").json()["instance_id"]
    cancelled = api.post(f"/api/instances/{queued}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    again = api.post(f"/api/instances/{queued}/cancel")
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]
    retried = api.post(f"/api/instances/{queued}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json() == {"instance_id": queued, "batch": "demo", "status": "queued"}


def test_metrics_count_instances_in_prometheus_format(api: httpx.Client) -> None:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'stepline_instances_current{batch="finished",status="succeeded"} 1.0' in text
    assert 'stepline_instances_current{batch="finished",status="failed"} 0.0' in text
    assert "# TYPE stepline_step_duration_seconds histogram" in text
    assert "stepline_scheduler_lag_seconds" in text
    assert "stepline_store_up 1.0" in text
    assert "# TYPE stepline_step_attempts_total counter" in text
    assert "# TYPE stepline_instances_total counter" in text


def test_alert_url_secret_never_appears_in_batch_answers(api: httpx.Client) -> None:
    detail = api.get("/api/batches/demo")
    assert detail.status_code == 200
    assert SECRET not in detail.text
    assert detail.json()["document"]["alerts"][0]["url"] == "https://hooks.example.com/x?token=***"
    listing = api.get("/api/batches")
    assert SECRET not in listing.text
    assert SECRET not in api.get("/openapi.json").text


def test_secrets_in_params_are_masked_in_instance_answers(api: httpx.Client) -> None:
    params = {"password": SECRET, "source": f"https://user:{SECRET}@api.example.com/v1?x=1"}
    created = api.post("/api/batches/demo/run", json={"params": params}).json()
    detail = api.get(f"/api/instances/{created['instance_id']}")
    listing = api.get("/api/instances", params={"batch": "demo"})
    assert SECRET not in detail.text
    assert SECRET not in listing.text
    shown = detail.json()["params"]
    assert shown["password"] == "***"
    assert shown["source"] == "https://user:***@api.example.com/v1?x=1"


def test_neither_the_token_nor_a_secret_reaches_the_server_log(
    server: LiveServer, api: httpx.Client
) -> None:
    # Requests that put both in front of the server: a wrong token, and the secret as input.
    api.get("/api/batches", headers={"Authorization": f"Bearer {SECRET}"})
    api.post("/api/batches/demo/run", json={"params": {"password": SECRET}})
    log = server.log()
    assert "Uvicorn running" in log or "Application startup complete" in log
    assert TOKEN not in log
    assert SECRET not in log
