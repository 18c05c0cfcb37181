"""The dashboard of ``stepline serve``: server-rendered pages over the same service.

Pages are Jinja2 templates (``templates/``, autoescaped); the only script is htmx, shipped
in ``static/`` (no CDN), which refreshes a running instance's page. Params, results, errors
and logs are masked as in API answers (SPEC guarantee 7) before they are cut or shown.
Access follows the API's rule (see :mod:`stepline.api.session`); actions (run, retry,
cancel, pause) are in :mod:`stepline.api.dashboard_actions`.
"""

from __future__ import annotations

import difflib
import json
from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import quote, urlencode, urlsplit
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from stepline.api import instance_view
from stepline.api.dependencies import ServiceDep
from stepline.api.render import (
    HEADERS,
    base_path,
    fragment,
    masked_json,
    masked_text,
    render,
    static_file,
)
from stepline.api.routes import MAX_ID
from stepline.api.session import Visitor, csrf_nonce, csrf_token, identify
from stepline.api.views import instance_secrets, redact_document
from stepline.core.definition import NAME_PATTERN
from stepline.core.states import InstanceStatus
from stepline.errors import NotFound
from stepline.errors import shown as quoted
from stepline.redact import redact_text
from stepline.scheduling.cron import CronSchedule
from stepline.service import Stepline
from stepline.stores.base import InstanceQuery, InstanceRecord, StoredDefinition

__all__ = ["CHALLENGE", "router"]

CHALLENGE = 'Basic realm="stepline"'
PAGE_SIZE = 50
STRIP_RUNS = 20
POLL_SECONDS = 2
TRIGGERS = ("cli", "http", "ui", "cron")

router = APIRouter(include_in_schema=False)


def message(
    request: Request,
    service: Stepline,
    status: int,
    title: str,
    text: str,
    *,
    visitor: Visitor | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A page that says what went wrong, with no secret (the text may echo the request)."""
    shown = redact_text(text, service.secrets())
    return render(
        request,
        service,
        "message.html",
        visitor=visitor,
        title=title,
        status=status,
        headers=headers,
        text=shown,
    )


def admit(request: Request, service: Stepline) -> Visitor | Response:
    """The visitor, or the page that refuses the request (sign in, or why it is refused)."""
    try:
        return identify(request, service)
    except HTTPException as exc:
        if exc.status_code != 401:
            return message(request, service, exc.status_code, "Refused", str(exc.detail))
        wants_page = "text/html" in request.headers.get("accept", "")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        login = f"{base_path(request)}/ui/login?{urlencode({'next': target})}"
        if request.headers.get("hx-request") == "true":
            # A page polling after its session ended: send the whole page to the login
            # form (a Basic challenge here would pop up the browser's password dialog).
            page = request.headers.get("hx-current-url", "")
            back = urlencode({"next": urlsplit(page).path or "/ui"})
            headers = {"HX-Redirect": f"{base_path(request)}/ui/login?{back}"}
            return Response("sign in again", status_code=401, headers={**HEADERS, **headers})
        if wants_page and "authorization" not in request.headers:
            return RedirectResponse(login, status_code=303)
        text = "Sign in with the API token (STEPLINE_API_TOKEN) at /ui/login, or send it as "
        text += "the password of HTTP Basic (any user name) or as a bearer token."
        challenge = {"WWW-Authenticate": CHALLENGE}
        return message(request, service, 401, "Sign in", text, headers=challenge)


def _timezone(service: Stepline, stored: StoredDefinition) -> str:
    return stored.definition.timezone or service.settings.timezone


def next_fire(cron: str | None, timezone: str) -> datetime | str:
    if not cron:
        return "on demand"
    try:
        fire = CronSchedule.parse(cron, timezone).next_fire_time(datetime.now(UTC))
        return fire.astimezone(ZoneInfo(timezone))
    except (ValueError, StopIteration) as exc:
        return f"cannot schedule: {exc}"


def _paused(stored: StoredDefinition) -> bool | None:
    """Whether the batch is paused; None where this version of Stepline cannot pause."""
    value = getattr(stored, "paused", None)
    return bool(value) if value is not None else None


@router.get("/")
def root(request: Request) -> Response:
    return RedirectResponse(f"{base_path(request)}/ui", status_code=307)


@router.get("/ui/static/{name}")
def static(name: str) -> Response:
    found = static_file(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    body, media = found
    headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
    return Response(body, media_type=media, headers=headers)


@router.get("/ui")
def batches_page(request: Request, service: ServiceDep) -> Response:
    """Every batch: version, schedule in its timezone, next fire, state, its last runs."""
    visitor = admit(request, service)
    if isinstance(visitor, Response):
        return visitor
    if request.query_params.get("status") or request.query_params.get("batch"):
        # The former overview filtered instances here: the list page does it now.
        query = urlencode({k: v for k, v in request.query_params.items() if v})
        return RedirectResponse(f"{base_path(request)}/ui/instances?{query}", status_code=303)
    rows = []
    for stored in service.store.definitions():
        timezone = _timezone(service, stored)
        runs = list(reversed(service.store.instances(stored.name, None, STRIP_RUNS)))
        rows.append(
            {
                "stored": stored,
                "timezone": timezone,
                "next_fire": next_fire(stored.definition.cron, timezone),
                "paused": _paused(stored),
                "runs": runs,
                "active": sum(1 for r in runs if not r.status.is_final),
            }
        )
    return render(request, service, "batches.html", visitor=visitor, title="Batches", batches=rows)


def _versions(service: Stepline, stored: StoredDefinition) -> list[dict[str, Any]]:
    secrets = service.secrets()
    versions: list[dict[str, Any]] = []
    previous: list[str] = []
    for number in range(1, stored.version + 1):
        try:
            old = service.store.definition(stored.name, number)
        except NotFound:
            continue
        document = redact_document(old.definition.to_document(), secrets)
        text = json.dumps(document, ensure_ascii=False, indent=2, default=str).splitlines()
        diff = list(
            difflib.unified_diff(
                previous, text, f"version {number - 1}", f"version {number}", lineterm="", n=2
            )
        )
        versions.append(
            {
                "number": number,
                "created_at": old.created_at,
                "text": "\n".join(text),
                "diff": "\n".join(diff) if previous else "",
            }
        )
        previous = text
    return list(reversed(versions))


@router.get("/ui/batches/{name}")
def batch_page(request: Request, service: ServiceDep, name: str) -> Response:
    """A batch: run it with params, its schedule and state, every version with diffs."""
    visitor = admit(request, service)
    if isinstance(visitor, Response):
        return visitor
    if not NAME_PATTERN.fullmatch(name):
        return message(request, service, 404, "Not found", f"{quoted(name)} is not a batch name")
    try:
        stored = service.store.definition(name)
    except NotFound as exc:
        return message(request, service, 404, "Not found", str(exc), visitor=visitor)
    secrets = service.secrets()
    timezone = _timezone(service, stored)
    params = [
        {
            "name": key,
            "default": default,
            "value": masked_text(default, secrets)
            if isinstance(default, str)
            else ("" if default is None else masked_json(default, secrets, indent=None)),
        }
        for key, default in stored.definition.params.items()
    ]
    return render(
        request,
        service,
        "batch.html",
        visitor=visitor,
        title=name,
        stored=stored,
        timezone=timezone,
        next_fire=next_fire(stored.definition.cron, timezone),
        paused=_paused(stored),
        can_pause=callable(getattr(service, "pause", None)),
        params=params,
        versions=_versions(service, stored),
        runs=service.store.instances(name, None, STRIP_RUNS),
        audit=service.store.audit(batch=name, limit=50),
    )


def _date(value: str | None, field: str, timezone: str, end: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"{field} {quoted(value)} is not a date (YYYY-MM-DD)") from None
    start = datetime.combine(day.date(), time(0), ZoneInfo(timezone))
    return start + timedelta(days=1) if end else start


def _instance_query(request: Request, service: Stepline) -> tuple[InstanceQuery, dict[str, str]]:
    """The list's filters from the query string; ValueError naming a bad one."""
    raw = {k: request.query_params.get(k, "") for k in ("batch", "status", "trigger", "from", "to")}
    raw["before"] = request.query_params.get("before", "")
    if raw["batch"] and not NAME_PATTERN.fullmatch(raw["batch"]):
        raise ValueError(
            f"{quoted(raw['batch'])} is not a batch name ([a-z0-9_-], 1-200 characters)"
        )
    try:
        status = InstanceStatus(raw["status"]) if raw["status"] else None
    except ValueError:
        allowed = ", ".join(s.value for s in InstanceStatus)
        raise ValueError(f"unknown status {quoted(raw['status'])}; use one of {allowed}") from None
    if raw["trigger"] and raw["trigger"] not in TRIGGERS:
        raise ValueError(
            f"unknown trigger {quoted(raw['trigger'])}; use one of {', '.join(TRIGGERS)}"
        )
    before = raw["before"]
    if before and not (before.isascii() and before.isdigit() and 1 <= int(before) <= MAX_ID):
        raise ValueError(f"before {quoted(before)} is not an instance id")
    timezone = service.settings.timezone
    query = InstanceQuery(
        batch=raw["batch"] or None,
        status=status,
        trigger=raw["trigger"] or None,
        created_from=_date(raw["from"], "from", timezone),
        created_to=_date(raw["to"], "to", timezone, end=True),
        before_id=int(before) if before else None,
    )
    return query, raw


@router.get("/ui/instances")
def instances_page(request: Request, service: ServiceDep) -> Response:
    """Instances, newest first, filtered by batch, status, trigger and creation date; paged."""
    visitor = admit(request, service)
    if isinstance(visitor, Response):
        return visitor
    try:
        query, raw = _instance_query(request, service)
    except ValueError as exc:
        return message(request, service, 422, "Invalid filter", str(exc), visitor=visitor)
    found = service.store.find_instances(query, PAGE_SIZE + 1)
    more = len(found) > PAGE_SIZE
    found = found[:PAGE_SIZE]
    kept = {k: v for k, v in raw.items() if v and k != "before"}
    older = urlencode({**kept, "before": str(found[-1].id)}) if more and found else ""
    timezones = {s.name: _timezone(service, s) for s in service.store.definitions()}
    secrets = service.secrets()
    return render(
        request,
        service,
        "instances.html",
        visitor=visitor,
        title="Instances",
        instances=found,
        errors={i.id: masked_text(i.error, instance_secrets(i, secrets)) for i in found},
        timezones=timezones,
        filters=raw,
        statuses=[s.value for s in InstanceStatus],
        triggers=TRIGGERS,
        batches=sorted(timezones),
        older=older,
        first=urlencode(kept) if raw["before"] else None,
    )


def _instance_id(instance_id: str) -> int | None:
    number = int(instance_id) if instance_id.isascii() and instance_id.isdigit() else 0
    return number if 1 <= number <= MAX_ID else None


def _instance_context(
    request: Request, service: Stepline, instance: InstanceRecord
) -> dict[str, Any]:
    secrets = instance_secrets(instance, service.secrets())
    stored = service.store.definition(instance.batch, instance.definition_version)
    logs_of = getattr(service, "logs", None)
    logs = logs_of(instance.id) if callable(logs_of) else []
    overview = service.store.step_overview(
        instance.id, instance_view.ITEMS_SHOWN, instance_view.FAILED_SHOWN
    )
    link = f"{base_path(request)}/ui/instances/{instance.id}"
    view = instance_view.build(
        instance,
        stored.definition,
        overview,
        service.store.attempts(instance.id),
        secrets,
        link=link,
        logs=logs,
    )
    return {
        "i": instance,
        "view": view,
        "timezone": _timezone(service, stored),
        "params": masked_json(dict(instance.params), secrets),
        "error": masked_text(instance.error, secrets),
        "logs_supported": callable(logs_of),
        "poll": POLL_SECONDS,
        "link": link,
        "quote": quote,
    }


def _find_instance(
    request: Request, service: Stepline, instance_id: str
) -> InstanceRecord | Response:
    number = _instance_id(instance_id)
    if number is None:
        text = f"{quoted(instance_id)} is not an instance id (a whole number from 1)"
        return message(request, service, 404, "Not found", text)
    try:
        return service.store.instance(number)
    except NotFound as exc:
        return message(request, service, 404, "Not found", str(exc))


@router.get("/ui/instances/{instance_id}")
def instance_page(request: Request, service: ServiceDep, instance_id: str) -> Response:
    """An instance: its DAG, steps (map items summarised), attempts, logs and audit trail."""
    visitor = admit(request, service)
    if isinstance(visitor, Response):
        return visitor
    instance = _find_instance(request, service, instance_id)
    if isinstance(instance, Response):
        return instance
    context = _instance_context(request, service, instance)
    return render(
        request,
        service,
        "instance.html",
        visitor=visitor,
        title=f"Instance {instance.id}",
        audit=service.store.audit(instance_id=instance.id),
        **context,
    )


@router.get("/ui/instances/{instance_id}/live")
def instance_live(request: Request, service: ServiceDep, instance_id: str) -> Response:
    """The live part of an instance page, polled by htmx until the instance is final."""
    visitor = admit(request, service)
    if isinstance(visitor, Response):
        return visitor
    instance = _find_instance(request, service, instance_id)
    if isinstance(instance, Response):
        return instance
    context = _instance_context(request, service, instance)
    csrf = csrf_token(service, csrf_nonce(request)[0])
    html = fragment("_live.html", base=base_path(request), csrf=csrf, **context)
    return HTMLResponse(html, headers=HEADERS)


@router.get("/ui/instances/{instance_id}/result")
def result_download(
    request: Request, service: ServiceDep, instance_id: str, step: str, map_index: int = -1
) -> Response:
    """A step's (or item's) whole result as a JSON file, masked like every answer."""
    visitor = admit(request, service)
    if isinstance(visitor, Response):
        return visitor
    instance = _find_instance(request, service, instance_id)
    if isinstance(instance, Response):
        return instance
    for r in service.store.step_results(instance.id):
        if r.step_key == step and r.map_index == map_index:
            body = masked_json(r.result_payload, instance_secrets(instance, service.secrets()))
            name = f"instance-{instance.id}-{step}" + (f"-{map_index}" if map_index >= 0 else "")
            headers = {**HEADERS, "Content-Disposition": f'attachment; filename="{name}.json"'}
            return Response(body, media_type="application/json", headers=headers)
    text = f"instance {instance.id} has no result of step {quoted(step)} at map_index {map_index}"
    return message(request, service, 404, "Not found", text, visitor=visitor)
