"""The request and response bodies of the HTTP API, as they appear in the OpenAPI schema."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stepline.core.definition import NAME_PATTERN
from stepline.core.states import InstanceStatus, StepStatus

__all__ = [
    "BatchApplied",
    "BatchDetail",
    "BatchList",
    "BatchRunRequest",
    "BatchSummary",
    "DefinitionErrorResponse",
    "ErrorResponse",
    "Health",
    "InstanceAccepted",
    "InstanceDetail",
    "InstanceList",
    "InstanceOut",
    "ProblemOut",
    "RunRequest",
    "SkippedResponse",
    "StepResultOut",
    "ValidationErrorItem",
    "ValidationErrorResponse",
    "json_problem",
]

BATCH_NAME = NAME_PATTERN.pattern


def json_problem(value: Any, where: str) -> str | None:
    """Why ``value`` cannot be stored as JSON in every supported database, or None.

    Python's JSON parser accepts NaN and Infinity and lone surrogates, and PostgreSQL's
    JSONB rejects NUL characters: each would fail later, deep in a write, as a server error.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where}: {value} is not a JSON number"
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where}: text may not contain NUL (\\u0000) characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{where}: text contains an unpaired surrogate (\\ud800-\\udfff)"
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            problem = json_problem(key, where) or json_problem(item, f"{where}.{key}")
            if problem:
                return problem
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problem = json_problem(item, f"{where}[{index}]")
            if problem:
                return problem
    return None


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class RunRequest(BaseModel):
    """Body of ``POST /api/batches/{name}/run`` (optional as a whole)."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the batch's default params for this instance (JSON; "
        "text may not contain NUL characters, which not every database can store).",
        examples=[{"period": "WEEK"}],
    )

    @field_validator("params")
    @classmethod
    def _storable(cls, params: dict[str, Any]) -> dict[str, Any]:
        problem = json_problem(params, "params")
        if problem:
            raise ValueError(problem)
        return params


class BatchRunRequest(RunRequest):
    """Body of the seed's ``POST /batch/run``."""

    batch: str = Field(pattern=BATCH_NAME, description="Name of the batch to run.")


class InstanceAccepted(_Out):
    """An instance that was created (or found again by its Idempotency-Key), retried or
    cancelled; the work happens after the response."""

    instance_id: int
    batch: str
    status: InstanceStatus


class ErrorResponse(_Out):
    detail: str = Field(description="What is wrong and, where possible, how to fix it.")


class SkippedResponse(ErrorResponse):
    """The batch was busy and its ``on_busy`` is ``skip``: the trigger is recorded as a
    cancelled instance, which ``POST /api/instances/{id}/retry`` can still run."""

    instance_id: int


class ProblemOut(_Out):
    message: str
    step: str | None = Field(description="The step the problem is in, if it is in one.")


class DefinitionErrorResponse(ErrorResponse):
    problems: list[ProblemOut] = Field(description="Every problem found, not just the first.")


class ValidationErrorItem(_Out):
    loc: list[str | int] = Field(description="Where: body, path, query or header, then field.")
    msg: str
    type: str


class ValidationErrorResponse(ErrorResponse):
    errors: list[ValidationErrorItem]


class Health(_Out):
    status: str = Field(description="'ok', or 'unavailable' when the database does not answer.")


class BatchSummary(_Out):
    name: str
    version: int
    cron: str | None
    timezone: str | None
    step_count: int
    max_active_instances: int
    updated_at: datetime
    paused: bool = False


class BatchList(_Out):
    batches: list[BatchSummary]
    next_offset: int | None = Field(
        None, description="Pass as `offset` to get the next page; null on the last page."
    )


class BatchDetail(_Out):
    name: str
    version: int
    document: dict[str, Any] = Field(
        description="The stored definition document; secrets in it (alert URLs, passwords, "
        "headers) are masked as '***', so use ${ENV} references for them before a PUT."
    )
    created_at: datetime
    updated_at: datetime


class BatchApplied(_Out):
    name: str
    version: int = Field(description="Unchanged when the document equals the current version.")


class InstanceOut(_Out):
    id: int
    batch: str
    definition_version: int
    status: InstanceStatus
    params: dict[str, Any]
    trigger: str
    scheduled_for: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    cancel_requested: bool


class InstanceList(_Out):
    instances: list[InstanceOut] = Field(description="Newest first.")
    next_cursor: int | None = Field(
        None, description="Pass as `cursor` to get the next page; null on the last page."
    )


class StepResultOut(_Out):
    key: str
    map_index: int = Field(description="-1 for an unmapped step, else the item's index.")
    status: StepStatus
    attempt: int
    result_payload: Any
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None


class InstanceDetail(InstanceOut):
    steps: list[StepResultOut] = Field(description="Step results in the order they were made.")
