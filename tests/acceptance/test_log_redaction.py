"""Acceptance: what a runner logs through ``ctx.log`` reaches the terminal with secrets masked.

A runner logs a URL carrying ``?token=...`` in its message and in a field; neither the
output of ``stepline run`` nor that of ``stepline serve`` may show the token (SPEC
guarantee 7), in the console format and in JSON lines.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

STEPLINE = Path(sys.executable).parent / "stepline"
SECRET = "T0ken-5ecret-8841"
URL = f"https://api.example.com/v1/data?token={SECRET}&page=2"
API_TOKEN = "api-token-for-the-redaction-test-0123456789"

RUNNER = f'''
def leaky(ctx):
    ctx.log.info("fetched {URL}", url="{URL}")
    ctx.log.warning("retrying", target="{URL}", attempt=ctx.attempt)
    return {{"ok": True}}
'''
DEFINITION = "name: leaky\nsteps:\n  - key: fetch\n    runner: leaky_steps:leaky\n"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "leaky_steps.py").write_text(RUNNER, encoding="utf-8")
    (tmp_path / "leaky.yaml").write_text(DEFINITION, encoding="utf-8")
    return tmp_path


def _env(root: Path, log_format: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    env.pop("PYTHONPATH", None)
    env.update(
        NO_COLOR="1",
        STEPLINE_DB=f"sqlite:///{root / 'stepline.db'}",
        STEPLINE_LOG_FORMAT=log_format,
        STEPLINE_API_TOKEN=API_TOKEN,
    )
    return env


def _assert_masked(output: str) -> None:
    assert "api.example.com/v1/data" in output, output  # the runner's lines are there ...
    assert SECRET not in output, output  # ... without the token
    assert "token=***" in output, output


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_the_cli_shows_a_runners_url_token_masked(workdir: Path, log_format: str) -> None:
    done = subprocess.run(
        [str(STEPLINE), "run", "leaky.yaml"],
        cwd=workdir,
        env=_env(workdir, log_format),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    _assert_masked(done.stdout + done.stderr)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(120)
def test_the_server_shows_a_runners_url_token_masked(workdir: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    with (workdir / "serve.err").open("wb") as err, (workdir / "serve.out").open("wb") as out:
        server = subprocess.Popen(
            [str(STEPLINE), "serve", "leaky.yaml", "--port", str(port), "--grace", "5"],
            cwd=workdir,
            env=_env(workdir, "json"),
            stdout=out,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (workdir / "serve.err").read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.1)
        started = httpx.post(f"{base}/api/batches/leaky/run", headers=headers, timeout=10)
        assert started.status_code == 202, started.text
        instance_id = started.json()["instance_id"]
        while True:
            status = httpx.get(f"{base}/api/instances/{instance_id}", headers=headers, timeout=10)
            if status.json()["status"] == "succeeded":
                break
            assert time.monotonic() < deadline + 30, status.text
            time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)

    _assert_masked((workdir / "serve.out").read_text() + (workdir / "serve.err").read_text())
