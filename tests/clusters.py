"""Real Celery workers for tests: brokers, ``stepline worker`` processes, their settings.

A broker that is not reachable skips locally and fails in CI (``require_service``).
Each cluster gets queues of its own, so tests never take each other's messages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from databases import require_service
from stepline.settings import Settings
from stepline.stores.sqlalchemy import SqlAlchemyStore

TESTS = Path(__file__).parent
STEPLINE = Path(sys.executable).parent / "stepline"
BROKERS = {
    "redis": os.environ.get("STEPLINE_TEST_REDIS", "redis://127.0.0.1:6379/11"),
    "rabbitmq": os.environ.get("STEPLINE_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//"),
}


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_broker(url: str) -> None:
    from kombu.utils.url import url_to_parts

    parts = url_to_parts(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    port = port or (6379 if url.startswith("redis") else 5672)
    if not port_open(host, port):
        require_service(url.split("://")[0], f"nothing listens on {host}:{port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Cluster:
    """A database, a broker and the worker processes that serve them."""

    db_url: str
    broker_url: str
    calls_dir: Path
    queue: str = field(default_factory=lambda: f"t-{uuid.uuid4().hex[:10]}")
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "dispatcher": "celery",
            "broker_url": self.broker_url,
            "queue": self.queue,
            "lease_seconds": 6.0,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
        env.update(
            STEPLINE_DB=self.db_url,
            STEPLINE_DISPATCHER="celery",
            STEPLINE_BROKER_URL=self.broker_url,
            STEPLINE_QUEUE=self.queue,
            STEPLINE_LEASE_SECONDS="6",
            STEPLINE_TEST_CALLS=str(self.calls_dir),
            STEPLINE_LOG_LEVEL="info",
            PYTHONPATH=str(TESTS),
        )
        env.update(extra)
        return env

    def start_worker(
        self,
        concurrency: int = 4,
        queues: Sequence[str] | None = None,
        wait: bool = True,
        cwd: Path = TESTS,
    ) -> subprocess.Popen[bytes]:
        """``stepline worker`` in its own process group; returns once its processes registered."""
        store = SqlAlchemyStore(self.db_url)
        store.initialize()
        before = {w[0] for w in store.workers() if w[3]}
        log = self.calls_dir.parent / f"worker-{len(self.workers)}.log"
        args = [str(STEPLINE), "worker", "--concurrency", str(concurrency)]
        if queues:
            args += ["--queues", ",".join(queues)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers.append(proc)
        self.logs.append(log)
        try:
            deadline = time.monotonic() + 60
            while wait:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited: {log.read_text()[-3000:]}")
                live = {w[0] for w in store.workers() if w[3]} - before
                if len(live) >= concurrency:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start: {log.read_text()[-3000:]}")
                time.sleep(0.1)
            time.sleep(0.5)  # the main process starts consuming once its children are up
        finally:
            store.dispose()
        return proc

    def worker_pids(self, proc: subprocess.Popen[bytes]) -> list[int]:
        """The worker's prefork children."""
        out = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and every process of it, at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        """Teardown: every worker killed at once. A warm shutdown waited about 2 s a worker,
        and what a worker does on SIGTERM has tests of its own."""
        for proc in self.workers:
            if proc.poll() is None:
                self.kill(proc)
        self.workers.clear()
        delete_queues(self.broker_url, [self.queue])

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in self.logs if p.exists())


def delete_queues(broker_url: str, queues: Sequence[str]) -> None:
    """Leave no test queue behind on a shared RabbitMQ."""
    if not broker_url.startswith("amqp"):
        return
    from kombu import Connection

    try:
        with Connection(broker_url, connect_timeout=2) as conn:
            channel = conn.channel()
            for name in queues:
                channel.queue_delete(name)
    except Exception:
        pass


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 that a test can cut off (a broker outage) and restore,
    without touching the shared broker behind it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self.up()

    def up(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut every open one."""
        with self._lock:
            server, self._server = self._server, None
            conns, self._conns = self._conns, []
        if server is not None:
            server.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._server is not server:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class RedisServer:
    """A redis-server of the test's own, persisting every write (AOF), so it can be
    killed and started again on the same port with its messages."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("redis-server") is None:
            require_service("redis-server", "the redis-server program is not installed")
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--appendonly", "yes",
                "--appendfsync", "always", "--save", "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
