"""An alert carries the failed step's error without the instance's secret params: a runner
that puts its password into an exception message must not mail or post it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from stepline import batch, step
from stepline.service import Stepline
from stepline.settings import Settings

PASSWORD = "hunter2-alert-pw"


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    return ("127.0.0.1", 0)


def test_the_alert_of_a_failed_instance_masks_its_secret_params(
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_json({"ok": True})
    with Stepline(Settings(db=f"sqlite:///{tmp_path / 'a.db'}")) as service:
        service.apply(
            batch(
                "alerting",
                [
                    step(
                        "login",
                        "fixture_runners:fail_with",
                        **{"with": {"message": "login refused for {{ params.db_password }}"}},
                    )
                ],
                alerts=[{"type": "webhook", "url": httpserver.url_for("/hook")}],
            )
        )
        instance, _ = service.trigger("alerting", {"db_password": PASSWORD})
        service.run_instance(instance.id)
        deadline = time.monotonic() + 10
        while not httpserver.log and time.monotonic() < deadline:
            time.sleep(0.05)
    assert httpserver.log, "no alert was posted"
    body = httpserver.log[0][0].get_data(as_text=True)
    assert PASSWORD not in body
    assert "login refused for ***" in json.dumps(json.loads(body))
