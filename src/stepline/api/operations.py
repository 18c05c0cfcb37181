"""Operators' endpoints: pause, resume, backfill and delete a batch; read an instance's logs."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from stepline.api.dependencies import ServiceDep
from stepline.api.routes import (
    MAX_ID,
    NOT_FOUND_RESPONSES,
    PROTECTED_RESPONSES,
    BatchName,
    InstanceId,
    error_response,
)
from stepline.api.security import require_token
from stepline.scheduling.backfill import backfill
from stepline.stores.base import StoredDefinition

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(require_token)], responses=PROTECTED_RESPONSES)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class BatchState(_Out):
    name: str
    paused: bool
    paused_at: datetime | None = Field(description="Since when the batch is paused.")


class BackfillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: date = Field(alias="from", description="First day (batch timezone), YYYY-MM-DD.")
    end: date = Field(alias="to", description="Last day, included.")
    dry_run: bool = Field(False, description="List the fire times, create nothing.")


class FireTimeOut(_Out):
    scheduled_for: datetime
    instance_id: int | None
    state: str = Field(
        description="created, exists (an instance has it), purged (it ran; its instance "
        "was purged) or, for a dry run, would create."
    )


class BackfillResult(_Out):
    batch: str
    fire_times: list[FireTimeOut] = Field(description="Oldest first.")


class BatchDeleted(_Out):
    name: str
    purged: bool
    deleted_instances: int


class StepLogOut(_Out):
    id: int = Field(description="Pass the last one as `after` to get only newer logs.")
    step: str
    map_index: int
    attempt: int
    truncated: bool
    created_at: datetime = Field(description="When the attempt ended (UTC).")
    text: str


class StepLogList(_Out):
    logs: list[StepLogOut]
    instance_final: bool = Field(description="True once no more logs can come.")


def _state(stored: StoredDefinition) -> BatchState:
    return BatchState(name=stored.name, paused=stored.paused, paused_at=stored.paused_at)


@router.post(
    "/api/batches/{name}/pause",
    response_model=BatchState,
    responses=NOT_FOUND_RESPONSES,
    tags=["batches"],
    summary="Pause a batch",
)
def pause_batch(name: BatchName, service: ServiceDep) -> BatchState:
    """No cron instance and no trigger (409) until it is resumed; instances already queued
    or running go on. Pausing a paused batch changes nothing."""
    return _state(service.pause(name))


@router.post(
    "/api/batches/{name}/resume",
    response_model=BatchState,
    responses=NOT_FOUND_RESPONSES,
    tags=["batches"],
    summary="Resume a paused batch",
)
def resume_batch(name: BatchName, service: ServiceDep) -> BatchState:
    """The batch's ``misfire`` policy decides about the fire times that passed while it was
    paused: ``once`` (default) runs the latest, ``all`` runs each, ``skip`` none."""
    stored = service.resume(name)
    service.wake()
    return _state(stored)


@router.post(
    "/api/batches/{name}/backfill",
    response_model=BackfillResult,
    responses={
        400: error_response("The range is not valid or the batch has no cron schedule"),
        409: error_response("The batch is paused"),
        **NOT_FOUND_RESPONSES,
    },
    tags=["batches"],
    summary="Create the instances of past fire times",
)
def backfill_batch(
    name: BatchName,
    service: ServiceDep,
    request: Annotated[
        BackfillRequest, Body(examples=[{"from": "2026-10-05", "to": "2026-11-30"}])
    ],
) -> BackfillResult:
    """One instance per cron fire time from ``from`` 00:00 to the end of ``to`` (in the
    batch's timezone, up to now), with ``scheduled_for`` set and ``{{ scheduled_for }}``
    params resolved. Idempotent: a fire time that already has an instance (or had one,
    since purged) gets none. The instances run oldest first under
    ``max_active_instances``."""
    entries = backfill(service, name, request.start, request.end, dry_run=request.dry_run)
    return BackfillResult(
        batch=name,
        fire_times=[
            FireTimeOut(scheduled_for=e.scheduled_for, instance_id=e.instance_id, state=e.state)
            for e in entries
        ],
    )


@router.delete(
    "/api/batches/{name}",
    response_model=BatchDeleted,
    responses={
        409: error_response("Instances of the batch are queued or running"),
        **NOT_FOUND_RESPONSES,
    },
    tags=["batches"],
    summary="Delete a batch",
)
def delete_batch(
    name: BatchName,
    service: ServiceDep,
    purge: Annotated[
        bool, Query(description="Also delete its instances, step results and logs.")
    ] = False,
) -> BatchDeleted:
    """Refused (409) while any instance of the batch is queued or running. Without
    ``purge`` its history stays readable and storing the batch again revives it."""
    deleted = service.delete(name, purge=purge)
    return BatchDeleted(name=name, purged=purge, deleted_instances=deleted)


@router.get(
    "/api/instances/{instance_id}/logs",
    response_model=StepLogList,
    responses=NOT_FOUND_RESPONSES,
    tags=["instances"],
    summary="What the runners of an instance logged",
)
def instance_logs(
    instance_id: InstanceId,
    service: ServiceDep,
    step: Annotated[str | None, Query(max_length=200, description="Only this step.")] = None,
    after: Annotated[
        int, Query(ge=0, le=MAX_ID, description="Only logs with a larger id (to follow).")
    ] = 0,
) -> StepLogList:
    """Per attempt, stored when the attempt ends: ``ctx.log`` lines and Python ``logging``
    records of the runner, redacted, capped per attempt (a truncated log says so)."""
    final = service.store.instance(instance_id).status.is_final
    return StepLogList(
        logs=[
            StepLogOut(
                id=r.id,
                step=r.step_key,
                map_index=r.map_index,
                attempt=r.attempt,
                truncated=r.truncated,
                created_at=r.created_at,
                text=r.text,
            )
            for r in service.logs(instance_id, step, after_id=after)
        ],
        instance_final=final,
    )
