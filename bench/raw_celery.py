"""The baseline of bench/celery.py: a bare Celery app with one no-op task, configured like
Stepline's (acks_late, reject_on_worker_lost, prefetch 1, no result backend). Each task
appends one byte to ``RAW_CELERY_DONE`` so the benchmark sees when all have run."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("raw", broker=os.environ["RAW_CELERY_BROKER"], set_as_current=False)
app.conf.update(
    task_default_queue=os.environ.get("RAW_CELERY_QUEUE", "raw"),
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    worker_enable_remote_control=False,
)


@app.task(name="raw.noop")
def noop() -> None:
    with open(os.environ["RAW_CELERY_DONE"], "ab") as done:
        done.write(b".")
