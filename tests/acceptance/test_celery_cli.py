"""``stepline`` with the celery dispatcher: settings refused at start, the worker command,
and ``stepline run`` waiting while a real worker does the work."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clusters import BROKERS, Cluster, require_broker
from databases import create_database, drop_database
from stepline.stores.sqlalchemy import SqlAlchemyStore

STEPLINE = Path(sys.executable).parent / "stepline"
FIXTURES = Path(__file__).parent / "fixtures"


def stepline(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    base.update(NO_COLOR="1", **env)
    return subprocess.run(
        [str(STEPLINE), *args], env=base, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def flat(text: str) -> str:
    return " ".join(text.split())


REFUSALS = {
    "unknown_dispatcher": (
        ["instances"],
        {"STEPLINE_DISPATCHER": "bogus"},
        "invalid setting STEPLINE_DISPATCHER: unknown dispatcher 'bogus'; "
        "valid values: direct, celery",
    ),
    "missing_broker": (
        ["run", "good.yaml"],
        {"STEPLINE_DISPATCHER": "celery", "STEPLINE_DB": "postgresql://postgres@127.0.0.1/x"},
        "the celery dispatcher needs a broker: set STEPLINE_BROKER_URL",
    ),
    "sqlite_with_celery": (
        ["run", "good.yaml"],
        {"STEPLINE_DISPATCHER": "celery", "STEPLINE_BROKER_URL": "redis://127.0.0.1:6379/0"},
        "the celery dispatcher needs a database that every worker can reach",
    ),
    "worker_on_sqlite": (
        ["worker"],
        {"STEPLINE_BROKER_URL": "redis://127.0.0.1:6379/0"},
        "the celery dispatcher needs a database that every worker can reach",
    ),
    "worker_bad_queue": (
        ["worker", "--queues", "ok,not ok"],
        {"STEPLINE_BROKER_URL": "redis://127.0.0.1:6379/0"},
        "--queues 'ok,not ok': give queue names",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_invalid_celery_settings_are_refused_at_start(case: str, tmp_path: Path) -> None:
    args, env, message = REFUSALS[case]
    (tmp_path / "good.yaml").write_text((FIXTURES / "good.yaml").read_text())
    (tmp_path / "steps.py").write_text((FIXTURES / "steps.py").read_text())
    env = {"STEPLINE_DB": f"sqlite:///{tmp_path / 'stepline.db'}", **env}
    result = stepline(args, env, tmp_path)
    assert result.returncode == 2, result
    assert message in flat(result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "stepline.db").exists() or case == "unknown_dispatcher"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_broker(BROKERS["redis"])
    root = tmp_path_factory.mktemp("celery-cli")
    (root / "calls").mkdir()
    url, handle = create_database("postgresql", root)
    found = Cluster(url, BROKERS["redis"], root / "calls")
    try:
        yield found
    finally:
        found.stop()
        drop_database("postgresql", handle)


def test_a_timeout_longer_than_the_redis_visibility_timeout_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    (tmp_path / "steps.py").write_text((FIXTURES / "steps.py").read_text())
    (tmp_path / "long.yaml").write_text(
        "name: long\nsteps:\n  - {key: slow, runner: 'steps:ok', timeout: 2m}\n"
    )
    env = cluster.env(STEPLINE_BROKER_VISIBILITY_TIMEOUT="60")
    result = stepline(["apply", "long.yaml"], env, tmp_path)
    assert result.returncode == 2, result
    assert (
        "long: step 'slow': timeout 120 s (+10 s to stop it) is longer than the Redis broker's "
        "visibility_timeout of 60 s; set STEPLINE_BROKER_VISIBILITY_TIMEOUT to at least 130"
    ) in flat(result.stderr)
    env = cluster.env(STEPLINE_BROKER_VISIBILITY_TIMEOUT="130")
    assert stepline(["apply", "long.yaml"], env, tmp_path).returncode == 0


def test_run_waits_for_the_workers_and_shows_the_same_progress(
    cluster: Cluster, tmp_path: Path
) -> None:
    (tmp_path / "steps.py").write_text(
        "import os\n"
        "def ok(ctx):\n    return {'pid': os.getpid()}\n"
        "def join(ctx):\n    return sorted(ctx.results)\n"
    )
    (tmp_path / "diamond.yaml").write_text(
        "name: diamond\nsteps:\n"
        "  - {key: a, runner: 'steps:ok', next_steps: [b, c]}\n"
        "  - {key: b, runner: 'steps:ok', next_steps: [d]}\n"
        "  - {key: c, runner: 'steps:ok', next_steps: [d]}\n"
        "  - {key: d, runner: 'steps:join'}\n"
    )
    cluster.start_worker(concurrency=2, cwd=tmp_path)
    direct_env = {"STEPLINE_DB": f"sqlite:///{tmp_path / 'direct.db'}"}
    jobs = [
        (["run", "diamond.yaml"], cluster.env(PYTHONPATH=str(tmp_path))),
        (["run", "diamond.yaml"], direct_env),
    ]
    with ThreadPoolExecutor(2) as pool:
        on_celery, direct = pool.map(lambda job: stepline(job[0], job[1], tmp_path), jobs)
    assert on_celery.returncode == 0, on_celery
    assert direct.returncode == 0, direct

    def shape(out: str) -> list[str]:
        """Each progress line's step and status, in the order they happened per step."""
        lines = [line.split() for line in out.splitlines() if line[:12].strip().endswith("s")]
        return sorted(f"{line[1]} {line[2]}" for line in lines if len(line) > 2)

    assert "instance 1 of diamond succeeded" in on_celery.stdout
    store = SqlAlchemyStore(cluster.db_url)
    (instance,) = store.instances("diamond")
    rows = store.step_results(instance.id)
    store.dispose()
    workers = set(cluster.worker_pids(cluster.workers[-1]))
    assert {r.result_payload["pid"] for r in rows if r.step_key != "d"} <= workers
