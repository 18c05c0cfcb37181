"""A database whose network goes silent under a running ``stepline run`` (PostgreSQL).

The run is in a network namespace of its own (tests/netns.py) and reaches PostgreSQL
through a forwarder on the namespace's link. Mid-run the link goes down: packets are
dropped, no connection is closed or refused. The server-side ``statement_timeout`` cannot
end a call the server never sees, and the kernel keeps a silent connection for hours, so
without client-side limits the run hangs for as long as the network does. It must notice
within about twice the connect timeout, wait for the database as for any outage, and
finish once the link is back: every step once, nothing lost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import sqlalchemy as sa

from databases import create_database, drop_database
from netns import namespace
from stepline.service import Stepline
from tcp_proxy import TcpProxy

STEPLINE = Path(sys.executable).parent / "stepline"
SERVE_FIXTURE = Path(__file__).parent / "serve_fixture"
STEPS = 40
CONNECT_TIMEOUT = 2  # seconds: a silent peer is given up after about twice that


def _chain() -> str:
    lines = ["name: partitioned", "steps:"]
    for n in range(STEPS):
        lines += [f"  - key: s{n}", "    runner: serve_steps:sleep", "    with: {seconds: 0.1}"]
        if n + 1 < STEPS:
            lines.append(f"    next_steps: [s{n + 1}]")
    return "\n".join(lines) + "\n"


def _ends(log: Path) -> Counter[str]:
    if not log.exists():
        return Counter()
    return Counter(
        line.split()[2] for line in log.read_text().splitlines() if line.startswith("end ")
    )


def test_a_run_notices_a_silent_network_and_finishes_when_it_is_back(tmp_path: Path) -> None:
    with namespace() as ns:
        url, handle = create_database("postgresql", tmp_path)
        direct = sa.make_url(url)
        proxy = TcpProxy(direct.port or 5432, direct.host or "127.0.0.1", listen_host=ns.host_ip)
        try:
            Stepline(db=url).close()  # migrated from here
            shutil.copy(SERVE_FIXTURE / "serve_steps.py", tmp_path / "serve_steps.py")
            (tmp_path / "chain.yaml").write_text(_chain())
            log = tmp_path / "runners.log"
            env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
            env.update(
                SERVE_LOG=str(log),
                NO_COLOR="1",
                STEPLINE_LOG_FORMAT="json",
                STEPLINE_DB_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
            )
            through = direct.set(host=ns.host_ip, port=proxy.port).render_as_string(False)
            err = tmp_path / "run.err"
            with open(tmp_path / "run.out", "wb") as out, open(err, "wb") as errors:
                run = subprocess.Popen(
                    ns.command(str(STEPLINE), "run", "chain.yaml", "--db", through),
                    cwd=tmp_path,
                    env=env,
                    stdout=out,
                    stderr=errors,
                )
            try:
                deadline = time.monotonic() + 60
                while sum(_ends(log).values()) < 5:
                    assert run.poll() is None and time.monotonic() < deadline, err.read_text()
                    time.sleep(0.05)
                ns.partition()
                cut = time.monotonic()
                while "database unavailable" not in err.read_text():
                    assert time.monotonic() - cut < 20, (
                        "the run did not notice the silent database in 20 s\n"
                        + err.read_text()[-3000:]
                    )
                    time.sleep(0.1)
                noticed = time.monotonic() - cut
                time.sleep(3)  # an outage, not a blip: reconnecting fails meanwhile
                ns.heal()
                assert run.wait(120) == 0, err.read_text()[-3000:]
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
            assert noticed < 4 * CONNECT_TIMEOUT + 2, noticed
            rows = Stepline(db=url)
            try:
                (instance,) = rows.store.instances(batch="partitioned")
                assert instance.status == "succeeded"
                results = rows.store.step_results(instance.id)
            finally:
                rows.close()
            assert len(results) == STEPS and {r.status for r in results} == {"succeeded"}
            ends = _ends(log)
            for r in results:
                assert 1 <= ends[r.step_key] <= r.attempt, (r.step_key, ends[r.step_key])
        finally:
            proxy.close()
            drop_database("postgresql", handle)
