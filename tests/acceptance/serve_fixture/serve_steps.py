"""Runners of the serve tests (tests/acceptance/test_serve.py).

Each call appends ``start``/``end`` lines (with the step, instance id and pid) to the file
named by ``$SERVE_LOG`` when it is set, flushed and fsynced so they survive ``kill -9``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

_lock = threading.Lock()


def _log(event: str, ctx: Any) -> None:
    path = os.environ.get("SERVE_LOG")
    if not path:
        return
    line = f"{event} {ctx.batch} {ctx.step} {ctx.instance_id} {os.getpid()}\n".encode()
    with _lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def tick(ctx: Any) -> dict[str, Any]:
    """A quick step: says which instance and process ran it."""
    _log("start", ctx)
    _log("end", ctx)
    return {"instance_id": ctx.instance_id, "pid": os.getpid()}


def sleep(ctx: Any) -> dict[str, Any]:
    """Sleeps ``seconds`` (a param, else the step's ``with``), then says so."""
    seconds = float(ctx.params.get("seconds", ctx.args.get("seconds", 1)))
    _log("start", ctx)
    time.sleep(seconds)
    _log("end", ctx)
    return {"slept": seconds, "pid": os.getpid()}
