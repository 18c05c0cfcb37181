"""The dispatcher port: how a claimed step reaches a runner and its outcome comes back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stepline.core.definition import StepDefinition
from stepline.stores.base import ClaimedStep, StepOutcome


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
