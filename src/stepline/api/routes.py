"""The endpoints of the SPEC's HTTP API. Each one is a thin call to the ``Stepline`` facade.

Endpoints are plain ``def`` functions: the service is synchronous (one short database
transaction per call), and Starlette runs them in its thread pool, off the event loop.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from stepline.api.dependencies import MetricsDep, ServiceDep
from stepline.api.health import DatabaseProbe
from stepline.api.models import (
    BATCH_NAME,
    BatchApplied,
    BatchDetail,
    BatchList,
    BatchRunRequest,
    DefinitionErrorResponse,
    ErrorResponse,
    Health,
    InstanceAccepted,
    InstanceDetail,
    InstanceList,
    RunRequest,
    SkippedResponse,
    ValidationErrorResponse,
    json_problem,
)
from stepline.api.security import require_token
from stepline.api.views import (
    batch_detail,
    batch_summary,
    instance_detail,
    instance_out,
    instance_secrets,
)
from stepline.core.loader import parse_definition
from stepline.core.states import InstanceStatus
from stepline.errors import DefinitionError, Problem, StoreUnavailable, shown
from stepline.redact import redact_value
from stepline.service import Stepline

__all__ = ["database_answers", "health_router", "router"]

# Ids are BIGINT: a larger number would overflow the driver instead of finding nothing.
MAX_ID = 2**63 - 1
SKIPPED_PREFIX = "skipped:"

BatchName = Annotated[
    str, Path(pattern=BATCH_NAME, description="The batch's name ([a-z0-9_-], 1-200).")
]
InstanceId = Annotated[int, Path(ge=1, le=MAX_ID, description="The instance's id.")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Repeat a trigger safely: a key already used for this batch creates "
        "nothing and answers 200 with the instance it created (its params are ignored).",
    ),
]


def error_response(description: str, model: object = ErrorResponse) -> dict[str, Any]:
    """An OpenAPI response entry; ``model`` is a response model or a union of them."""
    return {"description": description, "model": model}


_PROTECTED: dict[int | str, dict[str, Any]] = {
    400: error_response("Body not parseable at all (not UTF-8, or nested too deeply)"),
    401: error_response("Missing or wrong 'Authorization: Bearer <token>'"),
    403: error_response("No token configured, and the request came from another machine or site"),
    413: error_response("Request body larger than the server's limit"),
    422: error_response("Invalid request: the message names the field", ValidationErrorResponse),
    503: error_response("Stepline's database is unavailable; try again later"),
}
PROTECTED_RESPONSES = _PROTECTED  # every router behind the token documents these
NOT_FOUND_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: error_response("No such batch or instance")
}

router = APIRouter(dependencies=[Depends(require_token)], responses=_PROTECTED)
health_router = APIRouter()


def _audit(service: Stepline, action: str, batch: str, instance_id: int, detail: str) -> None:
    """Record an action taken through the API (shown on the dashboard's instance page)."""
    actor = "api token" if service.settings.api_token is not None else "local (no token configured)"
    service.store.record_audit(
        actor, action, batch=batch, instance_id=instance_id, detail=f"{detail} (HTTP API)"
    )


def _accepted(
    service: Stepline, batch: str, run: RunRequest | None, key: str | None, response: Response
) -> InstanceAccepted | JSONResponse:
    instance, created = service.trigger(
        batch, run.params if run else {}, "http", idempotency_key=key, limited=True
    )
    if instance.status is InstanceStatus.CANCELLED and (instance.error or "").startswith(
        SKIPPED_PREFIX
    ):
        body = SkippedResponse(detail=instance.error or "", instance_id=instance.id)
        return JSONResponse(body.model_dump(mode="json"), status_code=409)
    if created:
        service.wake()
        secrets = instance_secrets(instance, service.secrets())
        _audit(
            service,
            "run",
            instance.batch,
            instance.id,
            "params " + json.dumps(redact_value(run.params if run else {}, secrets)),
        )
    else:
        # A repeated Idempotency-Key: nothing new was accepted, the earlier instance is shown.
        response.status_code = 200
    return InstanceAccepted(instance_id=instance.id, batch=instance.batch, status=instance.status)


_RUN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Idempotency-Key seen before: the instance it created",
        "model": InstanceAccepted,
    },
    409: error_response(
        "The batch is busy and its on_busy is skip: recorded, not run", SkippedResponse
    ),
    **NOT_FOUND_RESPONSES,
}


@router.post(
    "/api/batches/{name}/run",
    status_code=202,
    response_model=InstanceAccepted,
    responses=_RUN_RESPONSES,
    tags=["instances"],
    summary="Run a batch",
)
def run_batch(
    name: BatchName,
    service: ServiceDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    run: Annotated[RunRequest | None, Body()] = None,
) -> InstanceAccepted | JSONResponse:
    """Create a queued instance of the batch's current version; it runs after the answer.

    ``params`` override the batch's default params. The batch's ``max_active_instances``
    holds: a busy batch queues the instance (or, with ``on_busy: skip``, records it as
    skipped and answers 409).
    """
    return _accepted(service, name, run, idempotency_key, response)


@router.post(
    "/batch/run",
    status_code=202,
    response_model=InstanceAccepted,
    responses=_RUN_RESPONSES,
    tags=["instances"],
    summary="Run a batch (the seed's endpoint)",
)
def run_batch_seed(
    run: BatchRunRequest,
    service: ServiceDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> InstanceAccepted | JSONResponse:
    """The same as ``POST /api/batches/{name}/run``, with the batch named in the body."""
    return _accepted(service, run.batch, run, idempotency_key, response)


@router.get("/api/batches", response_model=BatchList, tags=["batches"], summary="List batches")
def list_batches(
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="Skip this many first.")] = 0,
) -> BatchList:
    """Batches at their current version, by name, a page at a time (``limit``, ``offset``)."""
    stored = service.store.definitions()
    page = stored[offset : offset + limit]
    more = offset + limit < len(stored)
    return BatchList(
        batches=[batch_summary(s) for s in page], next_offset=offset + limit if more else None
    )


@router.get(
    "/api/batches/{name}",
    response_model=BatchDetail,
    responses=NOT_FOUND_RESPONSES,
    tags=["batches"],
    summary="Show a batch's definition",
)
def get_batch(name: BatchName, service: ServiceDep) -> BatchDetail:
    """The current version's document, with secrets masked."""
    return batch_detail(service.store.definition(name), service.secrets())


@router.put(
    "/api/batches/{name}",
    response_model=BatchApplied,
    responses={
        422: error_response(
            "Invalid definition (every problem is listed; nothing was stored) or request",
            DefinitionErrorResponse | ValidationErrorResponse,
        )
    },
    tags=["batches"],
    summary="Store a new version of a batch",
)
def put_batch(
    name: BatchName,
    document: Annotated[
        dict[str, Any],
        Body(
            description="A batch definition document, as in a YAML/JSON definition file; "
            "'name' may be left out (the path names the batch).",
            examples=[{"steps": [{"key": "hello", "runner": "mypackage.steps:hello"}]}],
        ),
    ],
    service: ServiceDep,
) -> BatchApplied:
    """Validate the document, then store it as the batch's next version.

    The same checks as ``stepline validate`` run first (unique keys, known next_steps, no
    cycle, importable runners, cron, timezone, alerts); on any problem nothing is stored
    and the answer lists them all. A document equal to the current version keeps its
    version number.
    """
    source = f"PUT /api/batches/{name}"
    problem = json_problem(document, "document")
    if problem:
        raise DefinitionError([Problem(problem, source)])
    if "name" in document and document["name"] != name:
        mismatch = (
            f"name {shown(document['name'])} in the body differs from {shown(name)} in the path"
        )
        raise DefinitionError([Problem(mismatch, source)])
    definition = parse_definition({**document, "name": name}, source=source)
    stored = service.apply(definition)
    return BatchApplied(name=stored.name, version=stored.version)


@router.get(
    "/api/instances", response_model=InstanceList, tags=["instances"], summary="List instances"
)
def list_instances(
    service: ServiceDep,
    batch: Annotated[
        str | None, Query(pattern=BATCH_NAME, description="Only this batch's instances.")
    ] = None,
    status: Annotated[
        InstanceStatus | None, Query(description="Only instances in this status.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 100,
    cursor: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="The next_cursor of the previous page."),
    ] = None,
) -> InstanceList:
    """Instances, newest first, a page at a time: pass ``next_cursor`` as ``cursor`` for
    the next page (null when there is none)."""
    secrets = service.secrets()
    found = service.store.instances(batch, status, limit + 1, before=cursor)
    more = len(found) > limit
    found = found[:limit]
    return InstanceList(
        instances=[instance_out(i, secrets) for i in found],
        next_cursor=found[-1].id if more else None,
    )


@router.get(
    "/api/instances/{instance_id}",
    response_model=InstanceDetail,
    responses=NOT_FOUND_RESPONSES,
    tags=["instances"],
    summary="Show an instance and its step results",
)
def get_instance(instance_id: InstanceId, service: ServiceDep) -> InstanceDetail:
    """The instance with every step result (one per step, or per item of a mapped step)."""
    instance = service.store.instance(instance_id)
    steps = service.store.step_results(instance_id)
    return instance_detail(instance, steps, service.secrets())


_ACTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: error_response("The instance's status does not allow it (the message says why)"),
    **NOT_FOUND_RESPONSES,
}


@router.post(
    "/api/instances/{instance_id}/retry",
    status_code=202,
    response_model=InstanceAccepted,
    responses=_ACTION_RESPONSES,
    tags=["instances"],
    summary="Retry a failed or cancelled instance",
)
def retry_instance(instance_id: InstanceId, service: ServiceDep) -> InstanceAccepted:
    """Queue the instance again: only the steps that did not succeed run, reusing the
    stored results of the others. A succeeded instance is final (409: run the batch anew);
    a queued or running one cannot be retried (409)."""
    instance = service.retry(instance_id)
    service.wake()
    _audit(service, "retry", instance.batch, instance.id, "every step that did not succeed")
    return InstanceAccepted(instance_id=instance.id, batch=instance.batch, status=instance.status)


@router.post(
    "/api/instances/{instance_id}/cancel",
    status_code=202,
    response_model=InstanceAccepted,
    responses=_ACTION_RESPONSES,
    tags=["instances"],
    summary="Cancel a queued or running instance",
)
def cancel_instance(instance_id: InstanceId, service: ServiceDep) -> InstanceAccepted:
    """Cancel an unfinished instance: at once when nobody runs it (status ``cancelled``),
    else its owner stops it at its next step (status still ``running``). 409 if it is
    already final."""
    instance = service.cancel(instance_id)
    _audit(service, "cancel", instance.batch, instance.id, "cancel requested")
    return InstanceAccepted(instance_id=instance.id, batch=instance.batch, status=instance.status)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    tags=["operations"],
    summary="Prometheus metrics",
)
def get_metrics(metrics: MetricsDep) -> Response:
    """Every metric of this process in the Prometheus text format (see stepline.api.metrics)."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


def database_answers(service: Stepline) -> bool:
    """Whether Stepline's database answers a query now (for /healthz, via DatabaseProbe)."""
    engine = service.store.engine
    try:
        # A read-only transaction: see stepline.api.metrics for why the option matters.
        with engine.connect() as conn:
            conn.execution_options(stepline_read=True).execute(sa.select(sa.literal(1))).all()
    except (SQLAlchemyError, StoreUnavailable):
        return False
    return True


@health_router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"description": "The database does not answer", "model": Health}},
    tags=["operations"],
    summary="Liveness and database check (no token needed)",
)
def healthz(request: Request) -> Health | JSONResponse:
    """200 ``{"status": "ok"}`` when the database answers a query, else 503 (within 2 s)."""
    probe: DatabaseProbe = request.app.state.probe
    if probe.answers():
        return Health(status="ok")
    return JSONResponse(Health(status="unavailable").model_dump(), status_code=503)
