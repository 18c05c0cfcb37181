"""Fixtures of the API tests: real ``uvicorn`` servers (see live_server.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from live_server import TOKEN, LiveServer

from stepline.service import Stepline


@pytest.fixture(scope="module")
def start_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., LiveServer]]:
    """Start servers for a module: ``start_server(prepare, token=TOKEN, env=None)``.

    ``prepare(service)`` runs on the server's database before the server starts.
    """
    servers: list[LiveServer] = []

    def start(
        prepare: Callable[[Stepline], None],
        token: str | None = TOKEN,
        env: dict[str, str] | None = None,
    ) -> LiveServer:
        server = LiveServer(tmp_path_factory.mktemp("api"), token, env)
        with Stepline(db=server.db_url) as service:
            prepare(service)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
