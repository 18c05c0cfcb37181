"""A TCP proxy on 127.0.0.1 that a test can stall: connections stay open, nothing passes.

That is what a database looks like when its host freezes, a firewall drops packets
silently, or a failover hangs: the client connects (the proxy accepts) and then waits for an
answer that does not come. ``resume()`` lets the held bytes through again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class StallProxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``stall()`` holds every byte, both ways."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="stall-proxy").start()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            # While stalled, a new client is accepted but nothing reaches the server.
            self._flowing.wait()
            if self._closed.is_set():
                client.close()
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink), daemon=True, name="stall-pump"
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                self._flowing.wait()
                data = source.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # bytes read just before a stall are held too
                if self._closed.is_set():
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def stall_proxy(url: str) -> Iterator[tuple[StallProxy, str]]:
    """A proxy in front of the database of SQLAlchemy ``url``; yields it and the URL through it."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    proxy = StallProxy(parsed.host or "127.0.0.1", parsed.port or _default_port(parsed))
    try:
        yield proxy, parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    finally:
        proxy.close()


def _default_port(url: object) -> int:
    import sqlalchemy as sa

    assert isinstance(url, sa.URL)
    return 5432 if url.get_backend_name() == "postgresql" else 3306
