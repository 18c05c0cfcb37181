"""Run a batch inside a test: in this process, on a throw-away SQLite database.

    from stepline.testing import run_batch

    def test_report() -> None:
        run = run_batch(my_batch, params={"period": "WEEK"})
        assert run.status is InstanceStatus.SUCCEEDED
        assert run.results["report"] == {...}

The batch runs exactly as ``stepline run`` runs it (same engine, retries, trigger rules,
conditions, maps and timeouts), on a SQLite file in a temporary directory that is removed
afterwards, so tests need no database and do not see each other's runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepline.core.definition import BatchDefinition
from stepline.core.states import InstanceStatus, StepStatus
from stepline.service import Stepline
from stepline.stores.base import AttemptRecord, InstanceRecord, StepResultRecord

__all__ = ["BatchRun", "run_batch"]


@dataclass(frozen=True)
class BatchRun:
    """What one run of a batch left behind, read back from its database."""

    instance: InstanceRecord
    steps: Mapping[str, StepResultRecord]
    """Each step's final row by key (a mapped step's summary row; its items are in ``items``)."""
    items: Mapping[str, list[StepResultRecord]]
    """A mapped step's item rows, in item order."""
    attempts: list[AttemptRecord]
    """The attempts history (`stepline show`'s "earlier attempts"), oldest first."""

    @property
    def status(self) -> InstanceStatus:
        return self.instance.status

    @property
    def results(self) -> dict[str, Any]:
        """Each succeeded step's stored result (a mapped step: the list of item results)."""
        return {
            key: row.result_payload
            for key, row in self.steps.items()
            if row.status is StepStatus.SUCCEEDED
        }

    @property
    def statuses(self) -> dict[str, StepStatus]:
        return {key: row.status for key, row in self.steps.items()}

    @property
    def errors(self) -> dict[str, str]:
        """Each step's error text, for the steps that have one."""
        return {key: row.error for key, row in self.steps.items() if row.error}


def run_batch(
    definition: BatchDefinition,
    params: Mapping[str, Any] | None = None,
    *,
    db: str | None = None,
) -> BatchRun:
    """Apply ``definition``, run one instance with ``params`` to its end, and return it.

    ``db`` is a database URL to use instead of a fresh temporary SQLite file (for example
    a PostgreSQL test database); other settings come from ``STEPLINE_*`` variables as
    usual, so named connections (``STEPLINE_CONNECTIONS__NAME``) work in tests too.
    A failed instance is returned, not raised: assert on ``run.status``.
    """
    if db is not None:
        return _run(db, definition, params)
    with tempfile.TemporaryDirectory(prefix="stepline-test-") as folder:
        return _run(f"sqlite:///{Path(folder) / 'stepline.db'}", definition, params)


def _run(db: str, definition: BatchDefinition, params: Mapping[str, Any] | None) -> BatchRun:
    with Stepline(db=db) as service:
        service.apply(definition)
        instance, _ = service.trigger(definition.name, params or {}, "test", owned=True)
        final = service.run_instance(instance.id)
        rows = service.store.step_results(instance.id)
        items: dict[str, list[StepResultRecord]] = {}
        for row in sorted(rows, key=lambda r: r.map_index):
            if row.map_index >= 0:
                items.setdefault(row.step_key, []).append(row)
        return BatchRun(
            instance=final,
            steps={r.step_key: r for r in rows if r.map_index < 0},
            items=items,
            attempts=service.store.attempts(instance.id),
        )
