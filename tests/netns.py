"""A network namespace joined to this one by a veth pair, for a silent network failure.

A process started with ``Namespace.command`` runs inside the namespace and reaches the
services of this machine through forwarders listening on ``host_ip`` (the pair's end on
this side; see tcp_proxy.TcpProxy's ``listen_host``). ``partition()`` takes that end down:
every packet is dropped, nothing is refused or closed, as when a host dies, a cable is
pulled or a firewall starts dropping. ``heal()`` brings it back. Needs root and iproute2;
without them the test is skipped with the reason (this is not a service CI must have).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Namespace:
    def __init__(self, tag: int) -> None:
        self.name = f"stepline-t{tag}"
        self.host_if, self.ns_if = f"slh{tag}", f"sln{tag}"
        base = 4 * (tag % 64)
        subnet = f"10.231.{(tag // 64) % 250}"
        self.host_ip, self.ns_ip = f"{subnet}.{base + 1}", f"{subnet}.{base + 2}"

    def create(self) -> None:
        _ip("netns", "add", self.name)
        peer = ("peer", "name", self.ns_if, "netns", self.name)
        _ip("link", "add", self.host_if, "type", "veth", *peer)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        _ip("-n", self.name, "link", "set", self.ns_if, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def partition(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def delete(self) -> None:
        for args in (("link", "del", self.host_if), ("netns", "del", self.name)):
            with suppress(subprocess.CalledProcessError):
                _ip(*args)


@contextmanager
def namespace() -> Iterator[Namespace]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a network namespace needs root and iproute2's ip")
    found = Namespace(os.getpid() % 100_000)
    found.delete()  # what a killed run of the same pid left
    try:
        found.create()
    except subprocess.CalledProcessError as exc:
        found.delete()
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.decode().strip()}")
    try:
        yield found
    finally:
        found.delete()
