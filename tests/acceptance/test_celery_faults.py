"""Faults on the celery dispatcher, against real brokers and real worker processes:
a worker killed mid-step, ``serve`` killed while workers run, duplicate delivery, a broker
outage, a runner that kills its worker every time. PostgreSQL; Redis and RabbitMQ."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import remote_runners as rr
from clusters import (
    BROKERS,
    STEPLINE,
    TESTS,
    Cluster,
    RedisServer,
    TcpProxy,
    delete_queues,
    free_port,
    require_broker,
)
from databases import create_database, drop_database
from stepline import InstanceStatus, StepStatus, batch
from stepline.dispatchers.base import StepMessage
from stepline.dispatchers.celery import BROKER_SOCKET_TIMEOUT, CeleryDispatcher, live_processes
from stepline.service import Stepline
from stepline.stores.base import InstanceRecord
from stepline.stores.sqlalchemy import SqlAlchemyStore

W = "remote_runners:"


@pytest.fixture(params=["redis", "rabbitmq"])
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cluster]:
    broker = BROKERS[str(request.param)]
    require_broker(broker)
    (tmp_path / "calls").mkdir()
    monkeypatch.setenv("STEPLINE_TEST_CALLS", str(tmp_path / "calls"))
    url, handle = create_database("postgresql", tmp_path)
    found = Cluster(url, broker, tmp_path / "calls")
    try:
        yield found
    finally:
        found.stop()
        drop_database("postgresql", handle)


def s(
    key: str, nexts: list[str] | None = None, runner: str = "work", **options: Any
) -> dict[str, Any]:
    fields = {k: v for k, v in options.items() if k in ("retry", "timeout", "queue")}
    args = {k: v for k, v in options.items() if k not in fields}
    return {"key": key, "runner": W + runner, "next_steps": nexts or [], "with": args, **fields}


def name() -> str:
    return f"f{uuid.uuid4().hex[:10]}"


def wait_for(condition: Any, seconds: float, what: str, cluster: Cluster | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            logs = cluster.log_text() if cluster is not None else ""
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.05)


class Driven:
    """An instance run by an owner in a background thread, as ``stepline run`` would."""

    def __init__(self, app: Stepline, steps: list[dict[str, Any]], **options: Any) -> None:
        stored = app.apply(batch(name(), steps, **options))
        self.batch = stored.name
        self.instance, _ = app.trigger(stored.name, owned=True)
        self.final: list[InstanceRecord] = []
        self.thread = threading.Thread(
            target=lambda: self.final.append(app.orchestrator.run(self.instance.id, timeout=90))
        )
        self.thread.start()

    def result(self, seconds: float = 90) -> InstanceRecord:
        self.thread.join(seconds)
        assert self.final, "the instance did not finish"
        return self.final[0]


def test_a_worker_killed_mid_step_is_recovered_once(cluster: Cluster) -> None:
    first = cluster.start_worker(concurrency=2)
    second = cluster.start_worker(concurrency=2)
    with Stepline(cluster.settings(), db=cluster.db_url) as app:
        run = Driven(app, [s("slow", ["after"], sleep=3), s("after")])
        wait_for(lambda: rr.calls(run.batch, "slow") == 1, 20, "the step to start", cluster)
        (pid,) = rr.pids(run.batch, "slow")
        victim = first if pid in cluster.worker_pids(first) else second
        cluster.kill(victim)
        final = run.result()
        assert final.status is InstanceStatus.SUCCEEDED, cluster.log_text()
        rows = app.store.step_results(final.id)
        assert [(r.step_key, r.status, r.attempt) for r in rows] == [
            ("slow", StepStatus.SUCCEEDED, 2),
            ("after", StepStatus.SUCCEEDED, 1),
        ]
        (lost,) = app.store.attempts(final.id)
        assert lost.attempt == 1 and (lost.error or "").startswith("lost: its worker")
        assert rr.calls(run.batch, "slow") == 2 and rr.calls(run.batch, "after") == 1
        assert rr.pids(run.batch, "slow")[1] in cluster.worker_pids(
            second if victim is first else first
        )


def test_serve_killed_while_workers_run_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_worker(concurrency=2)

    log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115 (closed at the end)

    def serve() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(STEPLINE), "serve", "--port", str(free_port())],
            cwd=TESTS,
            env=cluster.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    with Stepline(cluster.settings(), db=cluster.db_url) as app:
        stored = app.apply(
            batch(
                name(),
                [
                    s("a", ["b"]),
                    s("b", ["c"], sleep=2),
                    s("c", ["d"], fail_times=1, retry={"attempts": 2, "backoff": "1s"}),
                    s("d"),
                ],
            )
        )
        instance, _ = app.trigger(stored.name, {}, "http", limited=True)  # serve admits it
        first = serve()
        try:
            wait_for(lambda: rr.calls(stored.name, "b") == 1, 30, "b to start", cluster)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            # b ends on its worker, which sends c; c fails and waits for its backoff in the
            # database, where only a live owner can find it: the next serve recovers it.
            wait_for(lambda: rr.calls(stored.name, "c") == 1, 30, "c to run once", cluster)
            second = serve()
            try:
                wait_for(
                    lambda: app.store.instance(instance.id).status.is_final,
                    60,
                    "the instance to finish",
                    cluster,
                )
            finally:
                second.terminate()
                second.wait(20)
        finally:
            if first.poll() is None:
                first.kill()
            log.close()
        final = app.store.instance(instance.id)
        assert final.status is InstanceStatus.SUCCEEDED, (tmp_path / "serve.log").read_text()
        counts = [rr.calls(stored.name, k) for k in "abcd"]
        assert counts == [1, 1, 2, 1]
        assert all(r.status is StepStatus.SUCCEEDED for r in app.store.step_results(final.id))


class Duplicating(CeleryDispatcher):
    """Publishes every message twice: at-least-once delivery at its worst."""

    def send(self, messages: Any) -> None:
        super().send([*messages, *messages])


def test_the_same_message_delivered_twice_runs_the_runner_once(cluster: Cluster) -> None:
    one_broker(cluster)
    cluster.start_worker(concurrency=3)
    settings = cluster.settings()
    dispatcher = Duplicating(settings.broker(), queue=cluster.queue)
    with Stepline(settings, db=cluster.db_url, dispatcher=dispatcher) as app:
        run = Driven(app, [s("a", ["b", "c"], sleep=0.5), s("b", sleep=0.3), s("c")])
        final = run.result()
        assert final.status is InstanceStatus.SUCCEEDED, cluster.log_text()
        rows = app.store.step_results(final.id)
        late = [StepMessage(final.id, r.id, r.attempt) for r in rows]
        dispatcher.send(late)  # late duplicates of every attempt, after the end
        time.sleep(1.5)
        assert [rr.calls(run.batch, k) for k in "abc"] == [1, 1, 1]
        assert [r.attempt for r in app.store.step_results(final.id)] == [1, 1, 1]
        assert app.store.attempts(final.id) == []
        log = cluster.log_text()
        assert "already taken, ended or superseded" in log


def test_a_runner_that_kills_its_worker_ends_failed(cluster: Cluster) -> None:
    cluster.start_worker(concurrency=2)
    with Stepline(cluster.settings(), db=cluster.db_url) as app:
        run = Driven(
            app,
            [
                s("poison", ["after"], exit_times=99, retry={"attempts": 2, "backoff": "0.2s"}),
                s("after"),
            ],
        )
        final = run.result(60)
        assert final.status is InstanceStatus.FAILED
        rows = {r.step_key: r for r in app.store.step_results(final.id)}
        assert rows["poison"].status is StepStatus.FAILED and rows["poison"].attempt == 2
        assert rows["after"].status is StepStatus.UPSTREAM_FAILED
        assert rr.calls(run.batch, "poison") == 2
        assert [a.attempt for a in app.store.attempts(final.id)] == [1, 2]


class Parcels(CeleryDispatcher):
    """The owner's dispatcher, as ``serve`` makes it (several steps to a message where a
    send is wide), keeping how many steps each message it published carried."""

    def __init__(self, cluster: Cluster, *, twice: bool = False) -> None:
        self.store = SqlAlchemyStore(cluster.db_url)
        super().__init__(
            cluster.broker_url, queue=cluster.queue, processes=lambda: live_processes(self.store)
        )
        self.twice = twice
        self.sizes: list[int] = []

    def send(self, messages: Any) -> None:
        super().send([*messages, *messages] if self.twice else messages)

    def parcels(self, messages: Any) -> list[list[StepMessage]]:
        parcels = super().parcels(messages)
        self.sizes.extend(len(p) for p in parcels)
        return parcels

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)
        self.store.dispose()


def one_broker(cluster: Cluster) -> None:
    """The pickup fence decides these, whichever broker delivers: one broker shows it
    (a killed worker's messages, which brokers redeliver differently, are tested on both)."""
    if not cluster.broker_url.startswith("redis"):
        pytest.skip("the attempt fence decides it, whichever broker delivers; Redis shows it")


def roots(count: int, **options: Any) -> list[dict[str, Any]]:
    return [s(f"r{i}", **options) for i in range(count)]


def lost_by_step(app: Stepline, instance_id: int) -> dict[str, int]:
    lost: dict[str, int] = {}
    for a in app.store.attempts(instance_id):
        assert (a.error or "").startswith("lost: its worker"), a.error
        lost[a.step_key] = lost.get(a.step_key, 0) + 1
    return lost


def test_a_worker_killed_in_the_middle_of_a_message_of_several_steps_loses_nothing(
    cluster: Cluster,
) -> None:
    """Each message carries several steps; the worker dies with two messages half run.
    Every step it took and did not record is one lost attempt and runs again on the other
    worker; the rest of those messages is not lost with them."""
    first = cluster.start_worker(concurrency=2)
    cluster.start_worker(concurrency=2)
    dispatcher = Parcels(cluster)
    with Stepline(cluster.settings(), db=cluster.db_url, dispatcher=dispatcher) as app:
        run = Driven(app, roots(200, sleep=0.05))
        calls = cluster.calls_dir / run.batch
        wait_for(
            lambda: calls.exists() and len(calls.read_text().splitlines()) >= 40,
            30,
            "steps to run",
            cluster,
        )
        cluster.kill(first)
        final = run.result()
        assert final.status is InstanceStatus.SUCCEEDED, cluster.log_text()
        assert max(dispatcher.sizes) > 1, f"no message carried several steps: {dispatcher.sizes}"
        rows = app.store.step_results(final.id)
        assert len(rows) == 200 and all(r.status is StepStatus.SUCCEEDED for r in rows)
        lost = lost_by_step(app, final.id)
        assert lost, "the killed worker held steps"
        assert set(lost.values()) == {1}
        for r in rows:
            assert r.attempt == 1 + lost.get(r.step_key, 0)
            assert rr.calls(run.batch, r.step_key) <= r.attempt
            assert rr.calls(run.batch, r.step_key) >= 1


def test_a_message_of_several_steps_delivered_twice_runs_each_runner_once(
    cluster: Cluster,
) -> None:
    one_broker(cluster)
    cluster.start_worker(concurrency=3)
    dispatcher = Parcels(cluster, twice=True)
    with Stepline(cluster.settings(), db=cluster.db_url, dispatcher=dispatcher) as app:
        run = Driven(app, [*roots(60, nexts=["join"]), s("join", runner="fan_in")])
        final = run.result()
        assert final.status is InstanceStatus.SUCCEEDED, cluster.log_text()
        assert max(dispatcher.sizes) > 1
        assert [rr.calls(run.batch, f"r{i}") for i in range(60)] == [1] * 60
        assert rr.calls(run.batch, "join") == 1
        assert app.store.attempts(final.id) == []
        assert {r.attempt for r in app.store.step_results(final.id)} == {1}


def test_a_runner_that_kills_its_worker_takes_its_neighbours_down_once_at_most(
    cluster: Cluster,
) -> None:
    """The poison step shares a message; its retry goes alone. Its neighbours lose at most
    one attempt each with it, and succeed."""
    one_broker(cluster)
    cluster.start_worker(concurrency=2)
    dispatcher = Parcels(cluster)
    with Stepline(cluster.settings(), db=cluster.db_url, dispatcher=dispatcher) as app:
        steps = roots(60)
        steps[31] = s("r31", exit_times=99, retry={"attempts": 2, "backoff": "0.2s"})
        run = Driven(app, steps)
        final = run.result(60)
        assert max(dispatcher.sizes) > 1
        assert final.status is InstanceStatus.FAILED
        rows = {r.step_key: r for r in app.store.step_results(final.id)}
        assert rows["r31"].status is StepStatus.FAILED and rows["r31"].attempt == 2
        assert rr.calls(run.batch, "r31") == 2
        lost = lost_by_step(app, final.id)
        assert lost.pop("r31") == 2
        assert set(lost.values()) <= {1}
        for key, row in rows.items():
            if key != "r31":
                assert row.status is StepStatus.SUCCEEDED and row.attempt == 1 + lost.get(key, 0)


def test_a_broker_outage_of_ten_seconds_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    if cluster.broker_url.startswith("redis"):
        server = RedisServer(tmp_path)
        cluster.broker_url = server.url
        down, up = server.kill, server.start
    else:
        proxy = TcpProxy(("127.0.0.1", 5672))
        cluster.broker_url = f"amqp://guest:guest@127.0.0.1:{proxy.port}//"
        down, up = proxy.down, proxy.up
    cluster.start_worker(concurrency=3)
    steps = [s("a", ["b1", "b2", "b3"], sleep=1.5)] + [
        s(f"b{i}", ["join"], sleep=0.2) for i in (1, 2, 3)
    ]
    with Stepline(cluster.settings(), db=cluster.db_url) as app:
        before = Driven(app, [*steps, s("join", runner="fan_in")])
        wait_for(lambda: rr.calls(before.batch, "a") == 1, 20, "a to start", cluster)
        down()
        outage = time.monotonic()
        restored = False
        try:
            # Sent during the outage: a new instance's first step, and (by the worker, when
            # a ends) the three successors of the running instance.
            with Stepline(cluster.settings(), db=cluster.db_url) as other:
                during = Driven(other, [s("x", ["y"]), s("y")])
                time.sleep(max(0.0, 10 - (time.monotonic() - outage)))
                assert rr.calls(during.batch, "x") == 0, "a step ran without a broker"
                up()
                restored = True
                assert during.result().status is InstanceStatus.SUCCEEDED, cluster.log_text()
        finally:
            if not restored:
                up()
        final = before.result()
        assert final.status is InstanceStatus.SUCCEEDED, cluster.log_text()
        assert [rr.calls(before.batch, k) for k in ("a", "b1", "b2", "b3", "join")] == [1] * 5
        assert "broker unavailable; the steps are sent again" in cluster.log_text()
    if cluster.broker_url.startswith("redis"):
        server.kill()
    else:
        proxy.down()
        delete_queues(BROKERS["rabbitmq"], [cluster.queue])


def test_a_step_runs_only_on_workers_of_its_queue(cluster: Cluster) -> None:
    if not cluster.broker_url.startswith("redis"):
        pytest.skip("routing is the broker's; one broker shows it")
    special = f"{cluster.queue}-special"
    cluster.start_worker(concurrency=1)
    with Stepline(cluster.settings(), db=cluster.db_url) as app:
        run = Driven(app, [s("common", ["pinned"]), s("pinned", queue=special)])
        wait_for(lambda: rr.calls(run.batch, "common") == 1, 20, "common to run", cluster)
        time.sleep(1.5)
        assert rr.calls(run.batch, "pinned") == 0, "a worker of another queue took the step"
        pinned = cluster.start_worker(concurrency=1, queues=[special])
        final = run.result()
        assert final.status is InstanceStatus.SUCCEEDED
        assert rr.pids(run.batch, "pinned")[0] in cluster.worker_pids(pinned)


def test_celery_on_mariadb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_broker(BROKERS["redis"])
    (tmp_path / "calls").mkdir()
    monkeypatch.setenv("STEPLINE_TEST_CALLS", str(tmp_path / "calls"))
    url, handle = create_database("mariadb", tmp_path)
    cluster = Cluster(url, BROKERS["redis"], tmp_path / "calls")
    try:
        cluster.start_worker(concurrency=3)
        with Stepline(cluster.settings(), db=url) as app:
            run = Driven(
                app,
                [
                    s("a", ["b", "c", "each", "wide"], value=list(range(1, 81))),
                    s("b", ["d"], fail_times=1, retry={"attempts": 2, "backoff": "0.2s"}),
                    s("c", ["d"]),
                    s("d", runner="fan_in"),
                    {
                        "key": "each",
                        "runner": W + "item_work",
                        "map": {"over": "a", "concurrency": 2},
                    },
                    # 80 items at once: several to a message (picked up with SELECT ... FOR
                    # UPDATE, MariaDB having no UPDATE ... RETURNING)
                    {
                        "key": "wide",
                        "runner": W + "item_work",
                        "map": {"over": "a", "concurrency": 80},
                    },
                ],
            )
            final = run.result()
            assert final.status is InstanceStatus.SUCCEEDED, cluster.log_text()
            rows = {r.step_key: r for r in app.store.step_results(final.id) if r.map_index < 0}
            assert rows["b"].attempt == 2 and rr.calls(run.batch, "d") == 1
            for key in ("each", "wide"):
                assert [i["double"] for i in rows[key].result_payload] == list(range(2, 161, 2))
    finally:
        cluster.stop()
        drop_database("mariadb", handle)


def test_a_worker_process_started_while_the_database_is_away_registers_when_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool starts a new process (after a runner killed the last one, or at start-up)
    while the database does not answer. That process registers (takes its lease) when the
    database comes back, before it picks anything up, so a step it was running when it died
    is recovered. Before, Celery logged the failed set-up and the process ran steps under
    an owner that no one knew of: when it died, its attempt stayed `running` for ever."""
    import sqlalchemy as sa

    from tcp_proxy import TcpProxy as DbProxy

    require_broker(BROKERS["redis"])
    (tmp_path / "calls").mkdir()
    monkeypatch.setenv("STEPLINE_TEST_CALLS", str(tmp_path / "calls"))
    url, handle = create_database("postgresql", tmp_path)
    direct = sa.make_url(url)
    proxy = DbProxy(direct.port or 5432, direct.host or "127.0.0.1")
    proxied = direct.set(port=proxy.port).render_as_string(hide_password=False)
    cluster = Cluster(proxied, BROKERS["redis"], tmp_path / "calls")
    try:
        worker = cluster.start_worker(concurrency=1)
        (child,) = cluster.worker_pids(worker)
        proxy.cut()
        os.kill(child, signal.SIGKILL)
        wait_for(lambda: cluster.worker_pids(worker) not in ([], [child]), 20, "a new process")
        time.sleep(2.0)  # the new process has set itself up, without a database
        proxy.restore()
        with Stepline(cluster.settings(), db=url) as app:
            run = Driven(app, [s("slow", ["after"], sleep=3), s("after")])
            wait_for(lambda: rr.calls(run.batch, "slow") == 1, 30, "the step to start", cluster)
            (pid,) = rr.pids(run.batch, "slow")
            os.kill(pid, signal.SIGKILL)
            final = run.result(45)
            assert final.status is InstanceStatus.SUCCEEDED, cluster.log_text()
            rows = app.store.step_results(final.id)
            assert [(r.step_key, r.status, r.attempt) for r in rows] == [
                ("slow", StepStatus.SUCCEEDED, 2),
                ("after", StepStatus.SUCCEEDED, 1),
            ]
            (lost,) = app.store.attempts(final.id)
            assert (lost.error or "").startswith("lost: its worker")
    finally:
        cluster.stop()
        proxy.close()
        drop_database("postgresql", handle)


def test_a_publish_to_a_silent_redis_gives_up_and_is_sent_again() -> None:
    """Redis goes silent (its connection open, nothing answering: a failover, a NAT or
    firewall timeout). A publish gives up after the broker socket timeout instead of holding
    its sender (the owner's driver, a worker's recorder) for ever, and later sends wait with
    it instead of paying the timeout again; the messages are sent once Redis answers (the
    bytes the stall held may reach Redis too: a duplicate, which the attempt fence makes
    harmless)."""
    import redis

    from stall_proxy import StallProxy

    require_broker(BROKERS["redis"])
    proxy = StallProxy("127.0.0.1", 6379)
    queue = f"t-{uuid.uuid4().hex[:10]}"
    dispatcher = CeleryDispatcher(f"redis://127.0.0.1:{proxy.port}/11", queue=queue)
    direct = redis.Redis.from_url(BROKERS["redis"])
    try:
        dispatcher.send([StepMessage(1, 1, 1)])
        assert direct.llen(queue) == 1
        proxy.stall()
        sender = threading.Thread(target=dispatcher.send, args=([StepMessage(1, 2, 1)],))
        sender.daemon = True
        sender.start()
        sender.join(BROKER_SOCKET_TIMEOUT + 5)
        assert not sender.is_alive(), "the publish waits for ever on a silent broker"
        assert dispatcher.unsent == 1 and direct.llen(queue) == 1
        # While one waits for the broker, the next send waits with it instead of paying
        # the socket timeout again.
        started = time.monotonic()
        dispatcher.send([StepMessage(1, 3, 1)])
        assert time.monotonic() - started < 1.0 and dispatcher.unsent == 2
        proxy.resume()
        wait_for(
            lambda: direct.llen(queue) >= 3 and dispatcher.unsent == 0,
            3 * BROKER_SOCKET_TIMEOUT,
            "the message sent again",
        )
    finally:
        dispatcher.shutdown(wait=False)
        proxy.close()
        direct.delete(queue)
        direct.close()


def stop_with_sigterm(worker: subprocess.Popen[bytes], cluster: Cluster, wait: float) -> float:
    """SIGTERM to the worker's process group; the seconds it took to exit (fails after
    ``wait``)."""
    started = time.monotonic()
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(wait)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not stop\n{cluster.log_text()}") from None
    return time.monotonic() - started


def test_a_worker_stopped_by_sigterm_releases_its_processes_leases(cluster: Cluster) -> None:
    """A warm shutdown: the worker exits promptly and its processes release their leases,
    so an owner need not wait for them to lapse. (Teardowns kill workers outright: this is
    the test of a worker's stop on a database that answers.)"""
    one_broker(cluster)
    worker = cluster.start_worker(concurrency=2)
    store = SqlAlchemyStore(cluster.db_url)
    try:
        live = {w[0] for w in store.workers() if w[3]}
        assert len(live) >= 2, store.workers()
        assert stop_with_sigterm(worker, cluster, wait=20) < 15, cluster.log_text()
        still = {w[0] for w in store.workers() if w[3]}
        assert not live & still, (live, still, cluster.log_text())
    finally:
        store.dispose()


def test_a_worker_stops_on_sigterm_while_the_database_is_stalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle worker has nothing to record when it is stopped; the release of its lease,
    which a stalled server never answers, must not hold its processes for ever (the lease
    then lapses on its own)."""
    import sqlalchemy as sa

    from stall_proxy import StallProxy

    require_broker(BROKERS["redis"])
    (tmp_path / "calls").mkdir()
    monkeypatch.setenv("STEPLINE_TEST_CALLS", str(tmp_path / "calls"))
    url, handle = create_database("postgresql", tmp_path)
    direct = sa.make_url(url)
    proxy = StallProxy(direct.host or "127.0.0.1", direct.port or 5432)
    proxied = direct.set(port=proxy.port).render_as_string(hide_password=False)
    cluster = Cluster(proxied, BROKERS["redis"], tmp_path / "calls")
    try:
        worker = cluster.start_worker(concurrency=2)
        proxy.stall()
        time.sleep(1)
        assert stop_with_sigterm(worker, cluster, wait=40) < 25, cluster.log_text()
    finally:
        proxy.resume()
        cluster.stop()
        proxy.close()
        drop_database("postgresql", handle)


def test_a_step_no_worker_takes_is_named_with_its_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No worker listens on a step's queue: the owner says so once, naming the step and the
    queue, instead of waiting in silence; a worker started on that queue then runs it."""
    from structlog.testing import capture_logs

    require_broker(BROKERS["redis"])
    (tmp_path / "calls").mkdir()
    monkeypatch.setenv("STEPLINE_TEST_CALLS", str(tmp_path / "calls"))
    url, handle = create_database("postgresql", tmp_path)
    cluster = Cluster(url, BROKERS["redis"], tmp_path / "calls")
    lonely = f"{cluster.queue}-lonely"
    try:
        cluster.start_worker(concurrency=1)  # on the default queue only
        with Stepline(cluster.settings(), db=url) as app, capture_logs() as logs:
            app.orchestrator.unpicked_warning_seconds = 1.0  # type: ignore[attr-defined]
            run = Driven(app, [s("a", ["b"]), s("b", queue=lonely)])

            def warned() -> list[dict[str, Any]]:
                return [e for e in logs if "has waited" in str(e.get("event"))]

            wait_for(lambda: warned(), 30, "the warning", cluster)
            (event,) = warned()
            assert event["step"] == "b" and event["queue"] == lonely, event
            assert f"listening on queue '{lonely}'" in event["event"]
            assert rr.calls(run.batch, "b") == 0
            cluster.start_worker(concurrency=1, queues=[lonely])
            final = run.result(60)
            assert final.status is InstanceStatus.SUCCEEDED, cluster.log_text()
            assert len(warned()) == 1
    finally:
        cluster.stop()
        delete_queues(BROKERS["redis"], [lonely])
        drop_database("postgresql", handle)
