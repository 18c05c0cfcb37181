"""Real Celery workers for tests: brokers, ``stepline worker`` processes, their settings.

A broker that is not reachable skips locally and fails in CI (``require_service``).
Each cluster gets queues of its own, so tests never take each other's messages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
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
        for proc in self.workers:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
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
