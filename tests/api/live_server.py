"""A real HTTP server for the API tests: ``uvicorn stepline.api.app:create_app_from_env``.

Each server is a subprocess with its own SQLite database, prepared before it starts with
``Stepline(db=url).apply(...)``, and its own token. Its log is kept so that tests can
check that no secret was written there either.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

TESTS = Path(__file__).parents[1]
TOKEN = "tok-api-7f3a9c2e51"
STARTUP_SECONDS = 30
UVICORN = [
    sys.executable, "-m", "uvicorn", "stepline.api.app:create_app_from_env", "--factory",
    "--host", "127.0.0.1",
]  # fmt: skip


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """One running ``uvicorn --factory`` process and what a test needs to talk to it."""

    def __init__(self, root: Path, token: str | None, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.extra_env = env or {}
        self.db_path = root / "x.db"
        self.db_url = f"sqlite:///{self.db_path}"
        self.token = token
        self.log_path = root / "server.log"
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
        env["STEPLINE_DB"] = self.db_url
        if self.token:
            env["STEPLINE_API_TOKEN"] = self.token
        env["STEPLINE_LOG_FORMAT"] = "json"
        env.update(self.extra_env)
        # The runners of the test definitions (fixture_runners) must import for PUT.
        env["PYTHONPATH"] = str(TESTS)
        for attempt in range(3):
            port = free_port()
            log = self.log_path.open("ab")
            self._process = subprocess.Popen(
                [*UVICORN, "--port", str(port)],
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            self.url = f"http://127.0.0.1:{port}"
            if self._wait_healthy():
                return
            self.stop()
            if "address already in use" not in self.log().lower() or attempt == 2:
                break
        pytest.fail(f"the API server did not start:\n{self.log()}")

    def _wait_healthy(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def rows(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        """Rows of a query on the server's database, opened read-only."""
        uri = f"file:{self.db_path}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True)) as conn:
            return conn.execute(sql, args).fetchall()
