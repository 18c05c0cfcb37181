"""The serve loop never strands an instance it owns but does not drive.

If adoption fails after admission committed (the database went away in between), the
instance is ``running`` under this live process, which renews its lease, so no other
process would ever take it over. The loop's recovery pass must adopt it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from test_engine import name, s

from stepline import InstanceStatus, batch
from stepline.service import Stepline


@pytest.fixture
def app(db_url: str) -> Iterator[Stepline]:
    with Stepline(db=db_url) as service:
        yield service


def test_an_admitted_instance_left_undriven_is_taken_back(app: Stepline) -> None:
    stored = app.apply(batch(name(), [s("a", ["b"]), s("b")]))
    instance, _ = app.trigger(stored.name)
    orchestrator = app.orchestrator
    # Admission committed; the adoption that should follow never happened.
    assert app.store.admit(instance.id, orchestrator.owner, 1)
    assert instance.id not in orchestrator.active_ids()
    stop = threading.Event()
    driver = threading.Thread(target=app.serve_forever, args=(stop,), daemon=True)
    driver.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if app.store.instance(instance.id).status.is_final:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        driver.join(30)
    assert app.store.instance(instance.id).status is InstanceStatus.SUCCEEDED
