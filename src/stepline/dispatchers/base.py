"""The dispatcher port: how a claimed step reaches a runner and its outcome comes back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stepline.core.definition import StepDefinition
from stepline.core.records import quick_init
from stepline.stores.base import ClaimedStep, StepOutcome


@quick_init
@dataclass(frozen=True)
class StepWork:
    """Everything needed to run one attempt of one step, in any process."""

    instance_id: int
    batch: str
    claimed: ClaimedStep
    step: StepDefinition
    params: Mapping[str, Any]
    results: Mapping[str, Any]
    """Upstream results the orchestrator already holds in memory."""
    missing_results: tuple[str, ...] = ()
    """Upstream keys whose results must be read from the store before the runner starts."""
    item: Any = None
    max_result_bytes: int | None = None
    """The largest encoded result the store can keep; a larger one fails the attempt."""


Report = Callable[[StepOutcome], None]


class Dispatcher(ABC):
    """Runs claimed steps somewhere and reports each attempt's outcome exactly as it ended."""

    capacity: int
    """How many steps this dispatcher runs at once; the orchestrator claims no more."""

    @abstractmethod
    def start(self, report: Report) -> None:
        """Begin accepting work; ``report`` is called once per attempt, from any thread.

        A dispatcher whose workers record outcomes themselves (Celery) never calls it.
        """

    @abstractmethod
    def submit(self, work: StepWork) -> None:
        """Start the attempt ``work.claimed.attempt`` without blocking the caller.

        Must not raise for a failing runner: runner errors become a failed outcome.
        Delivery may repeat (at-least-once); the store's attempt fence makes a duplicate
        report harmless.
        """

    @abstractmethod
    def abandon(self, instance_id: int, row_id: int, attempt: int) -> None:
        """Stop caring about an attempt (timed out or cancelled).

        Coroutines are cancelled; a ``def`` runner in a thread cannot be interrupted in
        Python, so it is left to finish and its late report is fenced off by the store.
        """

    @abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting work; with ``wait``, return after running attempts end."""


@dataclass(frozen=True)
class StepMessage:
    """What a broker carries for one attempt: identities only, never params or results."""

    instance_id: int
    row_id: int
    attempt: int
    queue: str | None = None
    """None: the dispatcher's default queue."""
    timeout: float | None = None
    """The step's timeout in seconds, for the worker's time limits."""


class RemoteDispatcher(Dispatcher):
    """Hands claimed steps to workers in other processes, which record outcomes themselves.

    The orchestrator claims steps without an owner (``advance(handoff=True)``) and sends a
    :class:`StepMessage` per step; a worker picks the attempt up (``Store.pickup``, the
    fence that makes duplicate delivery harmless), runs it, records the outcome and
    advances the DAG itself. ``report`` is never called.
    """

    @abstractmethod
    def send(self, messages: Sequence[StepMessage]) -> None:
        """Publish the messages; never raises. Messages the broker did not take (it is
        down) are kept and published again in the background until it takes them; if this
        process dies first, the owner of the instance sends the attempt again."""

    def submit(self, work: StepWork) -> None:
        timeout = work.step.timeout.total_seconds() if work.step.timeout is not None else None
        self.send(
            [
                StepMessage(
                    work.instance_id,
                    work.claimed.row_id,
                    work.claimed.attempt,
                    work.step.queue,
                    timeout,
                )
            ]
        )

    def abandon(self, instance_id: int, row_id: int, attempt: int) -> None:
        """Nothing to do: a worker's late report of an abandoned attempt is fenced."""
