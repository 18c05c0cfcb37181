"""The pool pings a connection that rested past PING_AFTER_IDLE before handing it out, so
a server that dropped it (restart, proxy timeout) costs no failed transaction; one that is
in constant use is not pinged on every transaction (a round trip per step)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from databases import ALL_BACKENDS, create_database, drop_database
from stepline.stores import sqlalchemy as store_module
from stepline.stores.sqlalchemy import SqlAlchemyStore


class Proxy:
    """A TCP proxy on 127.0.0.1 whose open connections can be cut at once."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def cut(self) -> None:
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets.clear()

    def close(self) -> None:
        self.server.close()
        self.cut()


@pytest.fixture(params=[b for b in ALL_BACKENDS if b != "sqlite"])
def proxied_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Proxy]]:
    url, handle = create_database(request.param, tmp_path)
    parsed = sa.make_url(url)
    proxy = Proxy(parsed.port or (5432 if request.param == "postgresql" else 3306))
    try:
        yield parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(False), proxy
    finally:
        proxy.close()
        drop_database(request.param, handle)


def test_a_connection_cut_while_resting_is_replaced(proxied_url: tuple[str, Proxy]) -> None:
    url, proxy = proxied_url
    store = SqlAlchemyStore(url)
    try:
        store.initialize()
        assert store.definitions() == []
        proxy.cut()  # the pooled connection is dead; the pool does not know yet
        time.sleep(store_module.PING_AFTER_IDLE + 0.2)
        assert store.definitions() == []  # pinged, replaced, no error
    finally:
        store.dispose()


def test_a_busy_connection_is_not_pinged_per_transaction(proxied_url: tuple[str, Proxy]) -> None:
    url, _ = proxied_url
    store = SqlAlchemyStore(url)
    pings: list[float] = []
    dialect = store.engine.dialect
    real_ping = dialect.do_ping

    def counting_ping(dbapi_conn: object) -> bool:
        pings.append(time.monotonic())
        return real_ping(dbapi_conn)  # type: ignore[arg-type]

    dialect.do_ping = counting_ping  # type: ignore[method-assign]
    try:
        store.initialize()
        before = len(pings)
        for _ in range(20):
            store.definitions()
        assert len(pings) - before <= 1
    finally:
        store.dispose()
