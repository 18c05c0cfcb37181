"""Which steps share a Celery message (CeleryDispatcher.parcels): the policy alone; the
brokers and workers that carry such messages are in tests/acceptance/test_celery_faults.py."""

from __future__ import annotations

import pytest

from stepline.dispatchers.base import StepMessage
from stepline.dispatchers.celery import (
    MAX_STEPS_PER_MESSAGE,
    MESSAGES_PER_PROCESS,
    CeleryDispatcher,
    celery_app,
)


def dispatcher(processes: int | None) -> CeleryDispatcher:
    app = celery_app("redis://127.0.0.1:1/0", queue="q", visibility_timeout=60)

    def count() -> int:
        if processes is None:
            raise ConnectionError("database away")
        return processes

    return CeleryDispatcher(app=app, queue="q", processes=count)


def messages(n: int, **fields: object) -> list[StepMessage]:
    return [
        StepMessage(**{"instance_id": 1, "row_id": i, "attempt": 1, **fields}) for i in range(n)
    ]  # type: ignore[arg-type]


def sizes(parcels: list[list[StepMessage]]) -> list[int]:
    return [len(p) for p in parcels]


def test_a_narrow_send_goes_one_step_to_a_message() -> None:
    assert sizes(dispatcher(1).parcels(messages(2))) == [1, 1]
    assert sizes(dispatcher(1).parcels(messages(15))) == [1] * 15
    assert sizes(dispatcher(1).parcels(messages(16))) == [2] * 8
    assert sizes(dispatcher(2).parcels(messages(31))) == [1] * 31


def test_a_wide_send_leaves_every_live_process_several_messages() -> None:
    parcels = dispatcher(3).parcels(messages(2000))
    assert len(parcels) >= MESSAGES_PER_PROCESS * 3
    assert sizes(parcels) == [83] * 24 + [8]
    flat = [m.row_id for p in parcels for m in p]
    assert flat == list(range(2000)), "every step once, in the order claimed"
    assert sizes(dispatcher(1000).parcels(messages(2000))) == [1] * 2000


def test_a_message_carries_at_most_its_bound() -> None:
    assert max(sizes(dispatcher(1).parcels(messages(20_000)))) == MAX_STEPS_PER_MESSAGE


@pytest.mark.parametrize(
    "odd",
    [
        {"timeout": 30.0},  # needs the task's time limits for itself
        {"attempt": 2},  # a retry goes alone: a poison step takes nobody with it twice
    ],
)
def test_a_step_with_a_timeout_or_a_retry_goes_alone(odd: dict[str, object]) -> None:
    parcels = dispatcher(1).parcels([*messages(40), *messages(10, **odd)])
    alone = [p for p in parcels if p[0].timeout is not None or p[0].attempt != 1]
    assert sizes(alone) == [1] * 10
    assert sum(sizes(parcels)) == 50 and len(parcels) == 10 + MESSAGES_PER_PROCESS


def test_steps_of_other_instances_or_queues_never_share_a_message() -> None:
    mixed = [*messages(40), *messages(40, instance_id=2), *messages(40, queue="oracle-dmz")]
    for parcel in dispatcher(1).parcels(mixed):
        assert len({(m.instance_id, m.queue) for m in parcel}) == 1


def test_without_a_count_of_the_processes_each_step_goes_alone() -> None:
    assert sizes(dispatcher(None).parcels(messages(100))) == [1] * 100
    app = celery_app("redis://127.0.0.1:1/0", queue="q", visibility_timeout=60)
    assert sizes(CeleryDispatcher(app=app, queue="q").parcels(messages(100))) == [1] * 100
