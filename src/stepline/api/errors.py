"""How Stepline's errors become HTTP answers: always a status and a ``detail`` message.

``NotFound`` → 404, ``Conflict`` → 409, ``DefinitionError`` → 422 with every problem,
``StoreUnavailable`` → 503, invalid requests → 422 naming the field. Messages are redacted:
a secret never leaves in an error either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from stepline.api.dependencies import service_of
from stepline.api.models import (
    DefinitionErrorResponse,
    ErrorResponse,
    ProblemOut,
    ValidationErrorItem,
    ValidationErrorResponse,
)
from stepline.errors import Conflict, DefinitionError, NotFound, SteplineError, StoreUnavailable
from stepline.redact import redact_text

__all__ = ["install_error_handlers", "validation_message"]

# Seconds a client should wait before trying again after a 503.
RETRY_AFTER = "5"


def _secrets(request: Request) -> list[str]:
    return service_of(request).secrets()


def _answer(
    status: int, body: ErrorResponse, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _where(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) == 2 and parts[0] == "body" and parts[1].isdigit():
        return f"body (at character {parts[1]})"
    return ".".join(parts) if parts else "request"


def validation_message(errors: Sequence[Any]) -> str:
    """One line naming the first invalid field and what is wrong with it."""
    if not errors:
        return "invalid request"
    first = errors[0]
    message = f"{_where(first.get('loc', ()))}: {first.get('msg', 'invalid')}"
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error")
        message = f"{message} ({reason}); the body must be valid JSON" if reason else message
    elif tuple(first.get("loc", ())) == ("body",) and first.get("type") in (
        "dict_type",
        "model_attributes_type",
    ):
        message += " (send a JSON object with 'Content-Type: application/json')"
    more = len(errors) - 1
    return f"{message} (and {more} more problem{'s' if more > 1 else ''})" if more else message


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    secrets = _secrets(request)
    # Pydantic's "input" and "ctx" echo what was sent; only where and what is kept.
    items = [
        ValidationErrorItem(
            loc=[p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
            msg=redact_text(str(e.get("msg", "")), secrets),
            type=str(e.get("type", "")),
        )
        for e in errors
    ]
    detail = redact_text(validation_message(errors), secrets)
    return _answer(422, ValidationErrorResponse(detail=detail, errors=items))


async def _invalid_definition(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DefinitionError)
    secrets = _secrets(request)
    count = len(exc.problems)
    body = DefinitionErrorResponse(
        detail=redact_text(
            f"invalid batch definition ({count} problem{'s' if count != 1 else ''}): "
            + "; ".join(str(p) for p in exc.problems),
            secrets,
        ),
        problems=[
            ProblemOut(message=redact_text(p.message, secrets), step=p.step) for p in exc.problems
        ],
    )
    return _answer(422, body)


def _simple(status: int, headers: dict[str, str] | None = None) -> Any:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        detail = redact_text(str(exc), _secrets(request)) or type(exc).__name__
        return _answer(status, ErrorResponse(detail=detail), headers)

    return handler


# FastAPI's words when a body cannot even be decoded (bytes that are not UTF-8, JSON nested
# deeper than the parser's recursion limit); they do not say what to fix.
_UNPARSEABLE_BODY = "There was an error parsing the body"


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on the requested path (Starlette names one route's)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]
    return ", ".join(allowed)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _UNPARSEABLE_BODY:
        detail = (
            "body: cannot be parsed as JSON; send UTF-8 JSON that is not nested hundreds "
            "of levels deep"
        )
        return _answer(400, ErrorResponse(detail=detail))
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        detail = f"method {request.method} is not allowed here; use {allowed}"
        return _answer(405, ErrorResponse(detail=detail), {"Allow": allowed})
    return await http_exception_handler(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``; its ``state.service`` provides the secrets."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(DefinitionError, _invalid_definition)
    app.add_exception_handler(NotFound, _simple(404))
    app.add_exception_handler(Conflict, _simple(409))
    app.add_exception_handler(StoreUnavailable, _simple(503, {"Retry-After": RETRY_AFTER}))
    app.add_exception_handler(SteplineError, _simple(400))
