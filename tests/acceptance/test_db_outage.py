"""Guarantee 8 in a real ``serve``: the database goes away for 8 s in the middle of a run.

``serve`` reaches PostgreSQL or MariaDB through a TCP proxy that this test runs; two
instances of a 37-step batch (a fan-out of 30, a join, a chain) are triggered through the
API, and 2.5 s later the proxy cuts every connection and refuses new ones for 8 s. After
the restore both instances must finish ``succeeded`` in the same process, without a
restart and without ``stepline recover``: no outcome lost, nothing left ``running``.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
from test_serve import Serve, _env, _instances, _step_rows, root, server_db, spawn

from tcp_proxy import TcpProxy

__all__ = ["root", "server_db", "spawn"]  # fixtures, used by name

OUTAGE_FIXTURE = Path(__file__).parent / "outage_fixture"


def _through(url: str, proxy: TcpProxy) -> str:
    for port in (":5432/", ":3306/"):
        if port in url:
            return url.replace(port, f":{proxy.port}/")
    raise AssertionError(f"no known port in {url}")


def test_serve_survives_a_database_outage_mid_run(
    root: Path, spawn: Callable[..., Serve], server_db: str
) -> None:
    shutil.copy(OUTAGE_FIXTURE / "wide.yaml", root / "wide.yaml")
    port = 5432 if ":5432/" in server_db else 3306
    proxy = TcpProxy(port)
    try:
        serve = spawn("outage", "wide.yaml", "--db", _through(server_db, proxy), env=_env(root))
        serve.wait_ready()
        ids = []
        for _ in range(2):
            answer = httpx.post(f"{serve.url}/api/batches/wide/run", json={}, timeout=10)
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["instance_id"])
        time.sleep(2.5)
        proxy.cut()
        time.sleep(8)
        proxy.restore()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            instances = {i["id"]: i for i in _instances(server_db, "wide")}
            if all(instances[i]["status"] in ("succeeded", "failed") for i in ids):
                break
            time.sleep(0.5)
        assert serve.proc.poll() is None, f"serve died\n{serve}"
        statuses = {i: instances[i]["status"] for i in ids}
        assert statuses == dict.fromkeys(ids, "succeeded"), f"{statuses}\n{serve}"
        rows = [r for r in _step_rows(server_db) if r["batch_instance_id"] in ids]
        assert len(rows) == 2 * 37
        assert Counter(r["status"] for r in rows) == {"succeeded": 74}
        # Every step ran to its one stored result; none more often than it had attempts.
        ends = Counter(
            (int(line.split()[3]), line.split()[2])
            for line in (root / "runners.log").read_text().splitlines()
            if line.startswith("end ")
        )
        for r in rows:
            assert 1 <= ends[(r["batch_instance_id"], r["step_key"])] <= r["attempt"], r
        assert serve.events("database unavailable; retrying"), "the outage was not seen"
    finally:
        proxy.close()
