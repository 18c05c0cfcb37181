"""Acceptance: secrets stay secret on the command line and in ``serve``'s log (SPEC
guarantee 7), and bad input is refused with a message, never a traceback or a hang.

- ``stepline run`` and ``stepline show`` print no secret param, whatever key or message a
  runner copied it to, and no URL password inside a result;
- a ``serve`` whose runner logs ``params=ctx.params`` (and a token inside a message) writes
  no password, token or api_key to its log;
- a blank ``STEPLINE_API_TOKEN`` is refused with exit 2; ``--db notaurl`` gives exit 2 and a
  message on every command; a definition repeating a key is refused naming the key and its
  line; a 100,000-character name is cut in the message that echoes it.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

STEPLINE = Path(sys.executable).parent / "stepline"
PARAMS = {
    "password": "hunter2-pw",
    "token": "tok-5f4e3d",
    "api_key": "key-9a8b7c",
    "dsn": "postgresql://app:dsnpass77@db.example/prod",
}
SECRETS = ["hunter2-pw", "tok-5f4e3d", "key-9a8b7c", "dsnpass77"]
STEPS = """
def leak(ctx):
    ctx.log.info("connecting", params=ctx.params)
    ctx.log.info(f"token is {ctx.params['token']}, key {ctx.params['api_key']}")
    return {"plain": ctx.args["plain"], "source": ctx.params["dsn"], "period": "WEEK"}


def refuse(ctx):
    raise RuntimeError(f"login refused with password {ctx.params['password']}!")
"""
DEFINITION = """
name: leaky
params: {params}
steps:
  - key: leak
    runner: secret_steps:leak
    next_steps: [refuse]
    with: {{plain: "{{{{ params.password }}}}"}}
  - key: refuse
    runner: secret_steps:refuse
"""


def assert_no_secret(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{leaked} leaked in:\n{text}"


@pytest.fixture
def leaky(cli: Any) -> Path:
    cli.write("secret_steps.py", STEPS)
    return Path(cli.write("leaky.yaml", DEFINITION.format(params=json.dumps(PARAMS))))


def test_run_and_show_print_no_secret(cli: Any, leaky: Path) -> None:
    ran = cli("run", str(leaky))
    assert ran.code == 1, ran.report
    assert_no_secret(ran.stdout + ran.stderr)
    shown = cli("show", "1")
    assert shown.code == 0, shown.report
    assert_no_secret(shown.stdout + shown.stderr)
    out = shown.out
    assert "'password': '***'" in out and "'token': '***'" in out
    assert "postgresql://app:***@db.example/prod" in out
    assert '"plain": "***"' in out
    assert "login refused with password ***!" in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(cli: Any, **extra: str) -> dict[str, str]:
    env: dict[str, str] = {**cli.env(), "STEPLINE_LOG_FORMAT": "json", **extra}
    return env


def test_serve_logs_no_secret_a_runner_logs(cli: Any, leaky: Path) -> None:
    port = _free_port()
    err_path = cli.root / "serve.err"
    with err_path.open("wb") as err:
        serve = subprocess.Popen(
            [str(STEPLINE), "serve", str(leaky), "--port", str(port)],
            cwd=cli.root,
            env=_env(cli, STEPLINE_API_TOKEN="tok-api-31337"),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer tok-api-31337"}
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and status not in ("succeeded", "failed"):
            time.sleep(0.2)
            try:
                if status is None:
                    started = httpx.post(f"{url}/api/batches/leaky/run", headers=auth, timeout=5)
                    assert started.status_code == 202, started.text
                    instance = started.json()["instance_id"]
                    status = "started"
                detail = httpx.get(f"{url}/api/instances/{instance}", headers=auth, timeout=5)
                status = detail.json()["status"]
            except httpx.TransportError:
                continue
        assert status == "failed", status
        assert_no_secret(detail.text)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    log = err_path.read_text(errors="replace")
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    connecting = [e for e in events if e.get("event") == "connecting"]
    assert connecting, log
    assert connecting[0]["params"]["password"] == "***"
    assert connecting[0]["params"]["dsn"] == "postgresql://app:***@db.example/prod"
    assert any(e.get("event") == "token is ***, key ***" for e in events), log
    assert_no_secret(log)
    assert "tok-api-31337" not in log


@pytest.mark.parametrize("token", ["", "   "])
@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_a_blank_token_is_refused_with_exit_2(cli: Any, token: str, host: str) -> None:
    proc = subprocess.run(
        [str(STEPLINE), "serve", "--host", host, "--port", str(_free_port())],
        cwd=cli.root,
        env=_env(cli, STEPLINE_API_TOKEN=token),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "STEPLINE_API_TOKEN is set but blank" in proc.stderr
    assert "serving on" not in proc.stdout and "Traceback" not in proc.stderr


COMMANDS = [
    ["run", "leaky"], ["serve"], ["apply", "leaky.yaml"], ["batches"], ["next", "leaky"],
    ["instances"], ["show", "1"], ["retry", "1"], ["cancel", "1"], ["recover"],
    ["db", "upgrade"],
]  # fmt: skip


@pytest.mark.parametrize("url", ["notaurl", "postgresql://u@h:port/db", "nosuchdb://x/y"])
def test_a_bad_database_url_is_refused_with_exit_2_on_every_command(
    cli: Any, leaky: Path, run_concurrently: Any, url: str
) -> None:
    results = run_concurrently([(cli, [*args, "--db", url], None) for args in COMMANDS])
    for result in results:
        assert result.code == 2, result.report
        assert "database URL" in result.err and "Traceback" not in result.err, result.report


def test_a_bad_database_url_in_the_environment_is_refused_too(cli: Any) -> None:
    proc = subprocess.run(
        [str(STEPLINE), "instances"],
        cwd=cli.root,
        env={**cli.env(), "STEPLINE_DB": "notaurl"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "'notaurl' is not a database URL" in proc.stderr


@pytest.mark.parametrize("command", ["validate", "apply"])
def test_a_repeated_key_is_refused_naming_the_key_and_its_lines(cli: Any, command: str) -> None:
    cli.write("steps_x.py", "def f(ctx):\n    return 1\n")
    path = cli.write(
        "dup.yaml",
        "name: dup\nsteps:\n  - key: a\n    runner: steps_x:f\n    key: b\n",
    )
    result = cli(command, str(path))
    assert result.code == 2, result.report
    assert "found duplicate key 'key' (first on line 3)" in result.err, result.report
    assert "line 5" in result.err
    assert cli.nothing_written()


def test_a_huge_name_is_cut_in_the_messages_that_echo_it(cli: Any) -> None:
    name = "n" * 100_000
    path = cli.write("huge.yaml", f"name: {name.upper()}\nsteps: [{{key: a, runner: os:getcwd}}]\n")
    results = [
        cli("run", name),
        cli("next", name),
        cli("validate", str(path)),
        cli("apply", name),
        cli("validate", name + ".yaml"),
    ]
    for result in results:
        assert result.code == 2, result.report[-1500:]
        assert len(result.stderr) < 2_000, result.stderr[:500]
        assert re.search(r"… \(100,00\d characters\)", result.err), result.report[-1500:]
