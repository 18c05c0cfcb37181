"""The per-step instance transaction on the store's pinned connection: whatever ends it,
nothing half-done is committed and the store stays usable (and closable)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from stepline import InstanceStatus, batch
from stepline.service import Stepline
from stepline.stores.sqlalchemy import SqlAlchemyStore


@pytest.fixture
def service(db_url: str) -> Iterator[Stepline]:
    with Stepline(db=db_url) as app:
        yield app


@pytest.fixture
def store(service: Stepline) -> SqlAlchemyStore:
    assert isinstance(service.store, SqlAlchemyStore)
    return service.store


def _instance(store: SqlAlchemyStore) -> int:
    steps = [{"key": "a", "runner": "remote_runners:noop"}]
    stored = store.apply(batch(f"t{uuid.uuid4().hex[:10]}", steps))
    instance, _ = store.create_instance(stored, {}, "manual")
    return instance.id


def _owner(store: SqlAlchemyStore, iid: int) -> str | None:
    return store.instance(iid).owner_id


@pytest.mark.parametrize("interrupt", [ValueError, KeyboardInterrupt, SystemExit])
def test_a_transaction_ended_by_an_error_or_an_interrupt_commits_nothing(
    store: SqlAlchemyStore, interrupt: type[BaseException]
) -> None:
    iid = _instance(store)
    with pytest.raises(interrupt), store.instance_transaction(iid, store.instance(iid)) as tx:
        tx.set_instance(InstanceStatus.RUNNING, owner="half-done")
        raise interrupt("stop")
    assert _owner(store, iid) is None, "a write of an interrupted transaction was committed"
    # The next transaction, on the pinned connection or a new one, starts clean and commits.
    with store.instance_transaction(iid, store.instance(iid)) as tx:
        tx.set_instance(InstanceStatus.RUNNING, owner="whole")
    assert _owner(store, iid) == "whole"
    with store.instance_transaction(iid, store.instance(iid)) as tx:
        assert tx.instance.owner_id == "whole"
    closed = threading.Thread(target=store.dispose, daemon=True)
    closed.start()
    closed.join(30)
    assert not closed.is_alive(), "dispose hangs after an interrupted transaction"


def test_dispose_does_not_wait_for_ever_on_a_transaction_of_another_thread(
    store: SqlAlchemyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stepline.stores.sqlalchemy as module

    monkeypatch.setattr(module, "DISPOSE_WAIT", 0.5)  # its bound (5 s) shortened, not removed
    iid = _instance(store)
    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with store.instance_transaction(iid, store.instance(iid)):
            entered.set()
            leave.wait(60)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert entered.wait(30)
    closed = threading.Thread(target=store.dispose, daemon=True)
    closed.start()
    closed.join(30)
    leave.set()
    holder.join(30)
    assert not closed.is_alive(), "dispose waited on another thread's transaction"
