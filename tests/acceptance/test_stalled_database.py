"""Acceptance: a stalled database (connections open, nothing answering) never hangs a command.

The database sits behind a TCP proxy on 127.0.0.1 that the test stalls (stall_proxy.py):
``stepline instances`` gives up with exit 3 after the connect timeout, and ``serve``'s
``/healthz`` answers 503 within 2 s while stalled, and 200 again once the database answers.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from databases import create_database, drop_database
from stall_proxy import StallProxy, stall_proxy
from stepline.service import Stepline

STEPLINE = Path(sys.executable).parent / "stepline"
HEALTH_DEADLINE = 2.0


@pytest.fixture(params=["postgresql", "mariadb"])
def proxied(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[StallProxy, str]]:
    """A migrated database on PostgreSQL or MariaDB, and its URL through a StallProxy."""
    url, handle = create_database(request.param, tmp_path)
    try:
        Stepline(db=url).close()  # migrated: the commands below only read
        with stall_proxy(url) as found:
            yield found
    finally:
        drop_database(request.param, handle)


def run(cli: Any, *args: str, timeout: float = 60, **env: str) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [str(STEPLINE), *args],
        cwd=cli.root,
        env={**cli.env(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, " ".join(proc.stderr.split()), time.monotonic() - started


def write_naps(cli: Any, steps: int, seconds: float) -> None:
    """naps.yaml: a chain of ``steps`` steps, each sleeping ``seconds`` (naps.py)."""
    cli.write("naps.py", f"import time\n\n\ndef nap(ctx):\n    time.sleep({seconds})\n")
    keys = [f"s{i}" for i in range(steps)]
    lines = ["name: naps", "steps:"]
    for key, nxt in zip(keys, [*keys[1:], None], strict=True):
        then = f", next_steps: [{nxt}]" if nxt else ""
        lines.append(f"  - {{key: {key}, runner: 'naps:nap'{then}}}")
    cli.write("naps.yaml", "\n".join(lines) + "\n")


def start_naps(cli: Any, db: str, env: dict[str, str], until: str) -> subprocess.Popen[str]:
    """``stepline run naps.yaml`` (stderr to run.err), once its step ``until`` is running."""
    with (cli.root / "run.err").open("wb") as err:
        proc = subprocess.Popen(
            [str(STEPLINE), "run", "naps.yaml", "--db", db],
            cwd=cli.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    for line in proc.stdout:  # progress lines, one per step change on a small DAG
        if line.split()[1:3] == [until, "running"]:
            break
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_instances_gives_up_on_a_stalled_database_with_exit_3(
    cli: Any, proxied: tuple[StallProxy, str]
) -> None:
    proxy, url = proxied
    code, err, _ = run(cli, "instances", "--db", url)
    assert code == 0, err  # through the proxy, while it forwards
    proxy.stall()
    code, err, elapsed = run(cli, "instances", "--db", url, timeout=45)
    assert code == 3, err
    assert "is unavailable" in err and "Traceback" not in err
    assert elapsed < 40, f"took {elapsed:.1f} s"  # the default connect timeout is 10 s


def test_the_connect_timeout_is_a_setting(cli: Any, proxied: tuple[StallProxy, str]) -> None:
    proxy, url = proxied
    proxy.stall()
    code, err, elapsed = run(cli, "instances", "--db", url, STEPLINE_DB_CONNECT_TIMEOUT="2")
    assert code == 3, err
    assert elapsed < 8, f"took {elapsed:.1f} s with a 2 s connect timeout"


def _health(url: str) -> tuple[int | None, float]:
    started = time.monotonic()
    try:
        status: int | None = httpx.get(f"{url}/healthz", timeout=10).status_code
    except httpx.TimeoutException:
        status = None
    return status, time.monotonic() - started


def test_healthz_answers_503_within_2_s_while_the_database_is_stalled(
    cli: Any, proxied: tuple[StallProxy, str]
) -> None:
    proxy, db = proxied
    port = _free_port()
    err_path = cli.root / "serve.err"
    with err_path.open("wb") as err:
        serve = subprocess.Popen(
            [str(STEPLINE), "serve", "--port", str(port), "--db", db],
            cwd=cli.root,
            env=cli.env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _health(url)[0] == 200, 30, "serve answering /healthz")
        proxy.stall()
        answers = [_health(url) for _ in range(3)]  # the 2nd and 3rd find a check in flight
        for status, elapsed in answers:
            assert status == 503, answers
            assert elapsed < HEALTH_DEADLINE, answers
        proxy.resume()
        _wait_for(lambda: _health(url)[0] == 200, 30, "/healthz 200 after the stall")
    finally:
        proxy.resume()
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
    assert "Traceback" not in err_path.read_text(errors="replace")


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {seconds} s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_stops_on_sigterm_while_the_database_is_stalled(
    cli: Any, proxied: tuple[StallProxy, str]
) -> None:
    """Its driver and scheduler are blocked in calls that a stalled server never answers
    (on PostgreSQL for as long as the stall lasts): SIGTERM still stops ``serve`` once the
    grace and STOP_MARGIN have passed, with exit 1 and a line that says why. Before, it
    waited for those threads, then for the release of its lease, for ever."""
    from stepline.cli.serving import STOP_MARGIN

    proxy, db = proxied
    port = _free_port()
    err_path = cli.root / "serve.err"
    with err_path.open("wb") as err:
        serve = subprocess.Popen(
            [str(STEPLINE), "serve", "--port", str(port), "--db", db, "--grace", "1"],
            cwd=cli.root,
            env=cli.env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _health(url)[0] == 200, 30, "serve answering /healthz")
        proxy.stall()
        time.sleep(2)  # the driver and the scheduler are in calls that will not return
        started = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(1 + STOP_MARGIN + 15)
        elapsed = time.monotonic() - started
    finally:
        proxy.resume()
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    text = err_path.read_text(errors="replace")
    assert code == 1, text[-2000:]
    assert elapsed < 1 + STOP_MARGIN + 5, elapsed
    assert "without a clean shutdown" in text and "Traceback" not in text


def test_an_interrupted_run_leaves_while_the_database_is_stalled_and_is_recovered(
    cli: Any, proxied: tuple[StallProxy, str]
) -> None:
    """Ctrl-C of ``stepline run`` while the database does not answer. The command printed
    that the instance is left for recovery, then waited for ever to release its lease. It
    now leaves with exit 130: the release waits RELEASE_SECONDS (on PostgreSQL, psycopg
    first spends up to 10 s cancelling the query it was in). Once its lease has lapsed,
    ``stepline recover`` runs the instance to the end: nothing is lost."""
    from stepline.engine.orchestrator import RELEASE_SECONDS

    proxy, db = proxied
    write_naps(cli, 12, 0.3)
    env = {**cli.env(), "STEPLINE_LEASE_SECONDS": "2"}
    err_path = cli.root / "run.err"
    proc = start_naps(cli, db, env, until="s2")
    try:
        proxy.stall()
        time.sleep(1)  # the driver is in a call that a stalled server never answers
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(10 + RELEASE_SECONDS + 20)
        elapsed = time.monotonic() - started
    finally:
        proxy.resume()
        stop(proc)
    text = err_path.read_text(errors="replace")
    assert code == 130, text[-2000:]
    assert elapsed < 10 + RELEASE_SECONDS + 8, elapsed
    assert "left for recovery" in text and "could not release the lease" in text, text
    assert "Traceback" not in text, text
    time.sleep(2.5)  # the lease lapses
    recovered = subprocess.run(
        [str(STEPLINE), "recover", "--db", db],
        cwd=cli.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert recovered.returncode == 0, recovered.stderr
    assert "instance 1 of naps: succeeded" in recovered.stdout, recovered.stdout


def test_a_run_notices_a_frozen_postgresql_server_and_finishes_when_it_answers(
    cli: Any, tmp_path: Path
) -> None:
    """A PostgreSQL server that keeps its connections open and never answers (a frozen
    server process, a hung pooler or proxy: its kernel still acknowledges every packet, so
    neither TCP keepalives nor ``tcp_user_timeout`` end the wait, and ``statement_timeout``
    is the server's own). ``stepline run`` waited for the answer for ever. psycopg now gives
    up a round trip after the statement timeout plus the connect timeout: the run logs that
    the database is unavailable, waits for it, and finishes once it answers again."""
    statement, connect = 2, 2
    url, handle = create_database("postgresql", tmp_path)
    try:
        Stepline(db=url).close()  # migrated
        with stall_proxy(url) as (proxy, db):
            write_naps(cli, 15, 0.2)
            env = {
                **cli.env(),
                "STEPLINE_DB_STATEMENT_TIMEOUT": str(statement),
                "STEPLINE_DB_CONNECT_TIMEOUT": str(connect),
                "STEPLINE_LOG_FORMAT": "json",
            }
            err_path = cli.root / "run.err"
            proc = start_naps(cli, db, env, until="s3")
            try:
                proxy.stall()
                stalled = time.monotonic()
                while "database unavailable" not in err_path.read_text(errors="replace"):
                    assert time.monotonic() - stalled < 20, (
                        "the run did not notice the frozen server in 20 s\n"
                        + err_path.read_text(errors="replace")[-3000:]
                    )
                    time.sleep(0.1)
                noticed = time.monotonic() - stalled
                proxy.resume()
                assert proc.stdout is not None
                rest = proc.stdout.read()
                code = proc.wait(120)
            finally:
                proxy.resume()
                stop(proc)
        text = err_path.read_text(errors="replace")
        assert code == 0, text[-3000:]
        assert noticed < statement + connect + 5, noticed
        assert "did not answer in 4 s" in text, text[-3000:]
        assert "instance 1 of naps succeeded" in rest, rest
    finally:
        drop_database("postgresql", handle)
