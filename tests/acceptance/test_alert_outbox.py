"""Alerts are durable: a process killed between failing an instance and sending its alert
does not lose the alert; the next ``stepline recover`` (or ``serve``) sends it."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from conftest import STEPLINE

DEFINITION = """
name: alerting
steps:
  - key: doomed
    runner: alert_steps:doomed
alerts:
  - type: webhook
    url: {url}
"""

RUNNER = """
from stepline import DoNotRetry


def doomed(ctx):
    raise DoNotRetry("the weekly report cannot be built")
"""


def test_an_alert_survives_the_death_of_its_sender(cli, httpserver: HTTPServer) -> None:
    arrived = threading.Event()
    release = threading.Event()
    bodies: list[bytes] = []

    def hook(request: Request) -> Response:
        bodies.append(request.data)
        if len(bodies) == 1:
            arrived.set()
            release.wait(30)  # the first sender dies while it waits for this answer
        return Response("ok")

    httpserver.expect_request("/hook", method="POST").respond_with_handler(hook)
    cli.write("alert_steps.py", RUNNER)
    cli.write("alerting.yaml", DEFINITION.format(url=httpserver.url_for("/hook")))
    env = {**cli.env(), "STEPLINE_LEASE_SECONDS": "1"}
    proc = subprocess.Popen(
        [str(STEPLINE), "run", "alerting.yaml"],
        cwd=cli.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert arrived.wait(60), "the alert was never sent"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
    assert cli.rows("SELECT status FROM stepline_alert_outbox") == [("pending",)]
    time.sleep(2.5)  # the dead sender's claim (two leases) runs out
    recovered = subprocess.run(
        [str(STEPLINE), "recover"],
        cwd=cli.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert recovered.returncode == 0, recovered.stderr
    assert len(bodies) == 2, bodies
    assert b"alerting" in bodies[1] and b"cannot be built" in bodies[1]
    assert cli.rows("SELECT status, attempts FROM stepline_alert_outbox") == [("sent", 2)]
    # Sent is sent: another sweep sends nothing more.
    again = subprocess.run(
        [str(STEPLINE), "recover"],
        cwd=cli.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and len(bodies) == 2
