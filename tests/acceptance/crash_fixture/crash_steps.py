"""Runners of the crash test's batch: each call is logged durably, so it survives ``kill -9``.

``start <step> <pid>`` is written when a runner is called and ``end <step> <pid>`` just
before it returns, to the file named by ``$CRASH_LOG``, each line flushed and fsynced.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

_lock = threading.Lock()


def _log(event: str, step: str) -> None:
    line = f"{event} {step} {os.getpid()}\n".encode()
    with _lock:
        fd = os.open(os.environ["CRASH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def work(ctx: Any) -> dict[str, Any]:
    _log("start", ctx.step)
    time.sleep(float(ctx.args["sleep"]))
    # Reading each upstream result (not just its key) proves no stored result was lost.
    value = {"step": ctx.step, "upstream": {k: ctx.results[k]["step"] for k in sorted(ctx.results)}}
    _log("end", ctx.step)
    return value
