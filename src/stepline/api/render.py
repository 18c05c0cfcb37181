"""Rendering of the dashboard's pages: Jinja2 templates (autoescaped) and their helpers.

Every value reaches a page through a template, which escapes it; the few helpers that
return markup (:func:`when`, :func:`status_badge`) escape what they embed. Params, results,
errors and logs are masked (:func:`masked_json`, :func:`masked_text`) before they are cut.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from stepline.api.session import CSRF_COOKIE, Visitor, csrf_nonce, csrf_token, set_cookie
from stepline.redact import redact_text, redact_value
from stepline.service import Stepline

__all__ = [
    "HEADERS",
    "STATIC_FILES",
    "base_path",
    "duration",
    "masked_json",
    "masked_text",
    "render",
    "static_file",
    "when",
]

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC_FILES = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "htmx.LICENSE": "text/plain; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_FORMAT = "%Y-%m-%d %H:%M:%S"

_env = Environment(
    loader=PackageLoader("stepline.api", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def base_path(request: Request) -> str:
    """Where the app is mounted (uvicorn's --root-path), the prefix of every link."""
    return str(request.scope.get("root_path", ""))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def when(value: datetime | None, timezone: str = "UTC") -> Markup:
    """A ``<time>`` in ``timezone``, with the UTC time on hover."""
    if value is None:
        return Markup("")
    utc = _utc(value)
    try:
        local = utc.astimezone(ZoneInfo(timezone))
    except (KeyError, ValueError):
        local = utc
    shown = local.strftime(_FORMAT) + (local.strftime(" %Z") if timezone != "UTC" else " UTC")
    return Markup('<time datetime="{}" title="{} UTC">{}</time>').format(
        utc.isoformat(), utc.strftime(_FORMAT), shown
    )


def duration(start: datetime | None, end: datetime | None) -> str:
    """How long from ``start`` to ``end`` (or until now, while it runs)."""
    if start is None:
        return ""
    seconds = max((_utc(end or datetime.now(UTC)) - _utc(start)).total_seconds(), 0.0)
    minutes, rest = divmod(int(seconds), 60)
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{minutes}m {rest:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def status_badge(value: object) -> Markup:
    text = str(getattr(value, "value", value))
    return Markup('<span class="st {0}">{0}</span>').format(text)


def masked_json(value: Any, secrets: list[str], indent: int | None = 2) -> str:
    """``value`` as JSON with every secret masked."""
    text = json.dumps(redact_value(value, secrets), ensure_ascii=False, default=str, indent=indent)
    return redact_text(text, secrets)


def masked_text(value: str | None, secrets: list[str]) -> str:
    return "" if value is None else redact_text(value, secrets)


_env.filters["when"] = when
_env.filters["status"] = status_badge
_env.globals["duration"] = duration


def render(
    request: Request,
    service: Stepline,
    template: str,
    *,
    visitor: Visitor | None,
    title: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response:
    """A page from ``template``, with the CSRF token of this browser for its forms."""
    nonce, new = csrf_nonce(request)
    html = _env.get_template(template).render(
        base=base_path(request),
        visitor=visitor,
        csrf=csrf_token(service, nonce),
        title=title,
        request_path=request.url.path,
        **context,
    )
    response = HTMLResponse(html, status_code=status, headers={**HEADERS, **(headers or {})})
    if new:
        set_cookie(request, response, CSRF_COOKIE, nonce, max_age=None)
    return response


def fragment(template: str, **context: Any) -> str:
    """A piece of a page (e.g. the live part of an instance), rendered alone."""
    return _env.get_template(template).render(**context)


def static_file(name: str) -> tuple[bytes, str] | None:
    """A vendored asset's bytes and media type, or None for a name not shipped."""
    media = STATIC_FILES.get(name)
    if media is None:
        return None
    return files("stepline.api").joinpath("static", name).read_bytes(), media
