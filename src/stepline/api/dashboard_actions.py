"""What an operator does from the dashboard: sign in and out, run a batch with params,
retry (all or some failed map items), cancel, pause and resume.

Every action is a POSTed form checked by the API's authorisation (:func:`admit`) and its
CSRF token (:func:`stepline.api.session.check_csrf`), and leaves an audit record (who,
when, what) in ``stepline_audit``. Forms are read as ``application/x-www-form-urlencoded``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from stepline.api.dashboard import admit, message
from stepline.api.dependencies import ServiceDep
from stepline.api.render import base_path, masked_json, render
from stepline.api.routes import MAX_ID
from stepline.api.session import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    Visitor,
    check_csrf,
    new_session,
    set_cookie,
    token_matches,
)
from stepline.api.views import instance_secrets
from stepline.core.definition import NAME_PATTERN
from stepline.errors import Conflict, NotFound, StoreUnavailable
from stepline.service import Stepline

__all__ = ["router"]

FORM_LIMIT = 256 * 1024
KEY_LIMIT = 200

router = APIRouter(include_in_schema=False)


async def _form(request: Request) -> dict[str, list[str]]:
    body = await request.body()
    if len(body) > FORM_LIMIT:
        raise HTTPException(413, f"form larger than {FORM_LIMIT} bytes")
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=2000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, f"form not readable: {exc}") from None


def _one(form: dict[str, list[str]], name: str) -> str:
    values = form.get(name)
    return values[0] if values else ""


def _safe_next(request: Request, target: str) -> str:
    """Where to go after signing in: a path of the dashboard only (no open redirect)."""
    if target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return base_path(request) + target
    return f"{base_path(request)}/ui"


@router.get("/ui/login")
def login_page(request: Request, service: ServiceDep, next: str = "/ui") -> Response:
    if service.settings.api_token is None:
        return RedirectResponse(_safe_next(request, next), status_code=303)
    return render(
        request, service, "login.html", visitor=None, title="Sign in", next=next, failed=False
    )


@router.post("/ui/login")
async def login(request: Request, service: ServiceDep) -> Response:
    form = await _form(request)
    try:
        check_csrf(request, service, _one(form, "csrf"))
    except HTTPException as exc:
        return message(request, service, exc.status_code, "Refused", str(exc.detail))
    target = _one(form, "next") or "/ui"
    if service.settings.api_token is None:  # nothing to sign in to: the API is open here
        return RedirectResponse(_safe_next(request, target), status_code=303)
    if not token_matches(service, _one(form, "token")):
        return render(
            request,
            service,
            "login.html",
            visitor=None,
            title="Sign in",
            status=401,
            next=target,
            failed=True,
        )
    response = RedirectResponse(_safe_next(request, target), status_code=303)
    set_cookie(request, response, SESSION_COOKIE, new_session(service), max_age=SESSION_SECONDS)
    return response


@router.post("/ui/logout")
async def logout(request: Request, service: ServiceDep) -> Response:
    form = await _form(request)
    try:
        check_csrf(request, service, _one(form, "csrf"))
    except HTTPException as exc:
        return message(request, service, exc.status_code, "Refused", str(exc.detail))
    response = RedirectResponse(f"{base_path(request)}/ui/login", status_code=303)
    set_cookie(request, response, SESSION_COOKIE, "", max_age=0)
    return response


async def _act(
    request: Request,
    service: Stepline,
    action: Callable[[Visitor, dict[str, list[str]]], str],
) -> Response:
    """Admit, check CSRF, run ``action`` (returns where to go) off the event loop."""
    visitor = admit(request, service)
    if isinstance(visitor, Response):
        return visitor
    try:
        form = await _form(request)
        check_csrf(request, service, _one(form, "csrf"))
        target = await run_in_threadpool(action, visitor, form)
    except HTTPException as exc:
        return message(request, service, exc.status_code, "Refused", str(exc.detail))
    except NotFound as exc:
        return message(request, service, 404, "Not found", str(exc), visitor=visitor)
    except Conflict as exc:
        return message(request, service, 409, "Not possible now", str(exc), visitor=visitor)
    except ValueError as exc:
        return message(request, service, 422, "Invalid input", str(exc), visitor=visitor)
    except StoreUnavailable as exc:
        return message(request, service, 503, "Database unavailable", str(exc), visitor=visitor)
    return RedirectResponse(base_path(request) + target, status_code=303)


def _param_value(text: str) -> Any:
    """A param typed in a form: JSON if it parses (85, true, [1, 2], null), else the text."""
    if text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _batch(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise NotFound(f"{name!r} is not a batch name")
    return name


def _instance(instance_id: str) -> int:
    if not (instance_id.isascii() and instance_id.isdigit() and 1 <= int(instance_id) <= MAX_ID):
        raise NotFound(f"{instance_id!r} is not an instance id")
    return int(instance_id)


@router.post("/ui/batches/{name}/run")
async def run_batch(request: Request, service: ServiceDep, name: str) -> Response:
    """Run the batch's current version with the form's params (and idempotency key)."""

    def run(visitor: Visitor, form: dict[str, list[str]]) -> str:
        stored = service.store.definition(_batch(name))
        params: dict[str, Any] = {}
        for field, values in form.items():
            if field.startswith("param."):
                key = field.removeprefix("param.")
                if key not in stored.definition.params:
                    raise ValueError(f"{name} declares no param {key!r}")
                params[key] = _param_value(values[0])
        idempotency = _one(form, "idempotency_key").strip() or None
        if idempotency is not None and len(idempotency) > KEY_LIMIT:
            raise ValueError(f"idempotency key longer than {KEY_LIMIT} characters")
        instance, created = service.trigger(
            name, params, "ui", idempotency_key=idempotency, limited=True
        )
        if created:
            service.wake()
        secrets = instance_secrets(instance, service.secrets())
        detail = "params " + masked_json(params, secrets, indent=None)
        detail += f"; idempotency key {idempotency}" if idempotency else ""
        detail += "" if created else " (key seen before: no new instance)"
        service.store.record_audit(
            visitor.actor, "run", batch=name, instance_id=instance.id, detail=detail
        )
        return f"/ui/instances/{instance.id}"

    return await _act(request, service, run)


@router.post("/ui/instances/{instance_id}/retry")
async def retry(request: Request, service: ServiceDep, instance_id: str) -> Response:
    """Retry a failed or cancelled instance; with ``item`` fields (``step:index``) only
    those failed map items run again."""

    def act(visitor: Visitor, form: dict[str, list[str]]) -> str:
        number = _instance(instance_id)
        items: dict[str, list[int]] = {}
        for value in form.get("item", []):
            key, colon, index = value.rpartition(":")
            if not colon or not index.isdigit():
                raise ValueError(f"item {value!r} is not step:map_index")
            items.setdefault(key, []).append(int(index))
        instance = service.retry(number, items or None)
        service.wake()
        shown = "; ".join(f"{k} items {', '.join(map(str, v))}" for k, v in items.items())
        service.store.record_audit(
            visitor.actor,
            "retry",
            batch=instance.batch,
            instance_id=number,
            detail=f"only {shown}" if shown else "every step that did not succeed",
        )
        return f"/ui/instances/{number}"

    return await _act(request, service, act)


@router.post("/ui/instances/{instance_id}/cancel")
async def cancel(request: Request, service: ServiceDep, instance_id: str) -> Response:
    def act(visitor: Visitor, form: dict[str, list[str]]) -> str:
        number = _instance(instance_id)
        instance = service.cancel(number)
        service.store.record_audit(
            visitor.actor, "cancel", batch=instance.batch, instance_id=number, detail=None
        )
        return f"/ui/instances/{number}"

    return await _act(request, service, act)


def _switch(request: Request, service: Stepline, name: str, action: str) -> Any:
    def act(visitor: Visitor, form: dict[str, list[str]]) -> str:
        method = getattr(service, action, None)
        if not callable(method):
            raise Conflict(f"this version of Stepline cannot {action} a batch")
        method(_batch(name))
        service.store.record_audit(visitor.actor, action, batch=name, detail=None)
        return f"/ui/batches/{name}"

    return _act(request, service, act)


@router.post("/ui/batches/{name}/pause")
async def pause(request: Request, service: ServiceDep, name: str) -> Response:
    response: Response = await _switch(request, service, name, "pause")
    return response


@router.post("/ui/batches/{name}/resume")
async def resume(request: Request, service: ServiceDep, name: str) -> Response:
    response: Response = await _switch(request, service, name, "resume")
    return response
