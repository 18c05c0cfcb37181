"""The dashboard of ``stepline serve``: server-rendered HTML pages over the same service.

Plain HTML with a little inline CSS: no JavaScript, no external assets. Every dynamic value
goes through :func:`html.escape`; params, results and errors are masked as in API answers
(SPEC guarantee 7) before they are shortened or escaped.

Access follows the API's rule (:func:`require_token`): open to this machine when no token is
configured, else the token is required. A browser cannot send a bearer header, so HTTP Basic
with the token as the password (any user name) is accepted too, and a refusal asks for it.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.security.utils import get_authorization_scheme_param

from stepline.api.dependencies import ServiceDep
from stepline.api.routes import MAX_ID
from stepline.api.security import require_token
from stepline.api.views import instance_secrets
from stepline.core.definition import NAME_PATTERN
from stepline.core.states import InstanceStatus, StepStatus
from stepline.errors import NotFound
from stepline.errors import shown as quoted
from stepline.redact import redact_text, redact_value
from stepline.scheduling.cron import CronSchedule
from stepline.service import Stepline
from stepline.stores.base import AttemptRecord, StepResultRecord

__all__ = ["CHALLENGE", "router"]

CHALLENGE = 'Basic realm="stepline"'
INSTANCES_SHOWN = 50
ITEMS_SHOWN = 50  # the first items of a mapped step, plus failed ones up to FAILED_SHOWN
FAILED_SHOWN = 200
SHORT = 100  # characters of a result or error line shown in a table cell
FULL_LIMIT = 100_000  # characters of a full text kept in a page

_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em} th{background:#f4f4f4} .items{margin-left:2em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
pre{white-space:pre-wrap;word-break:break-all;margin:0;max-width:80em}
details pre{background:#f8f8f8;padding:4px}
.st{font-weight:600;padding:1px 6px;border-radius:3px;color:#fff;background:#777}
.succeeded{background:#2e7d32} .failed,.upstream_failed{background:#c62828}
.running{background:#1565c0} .cancelled,.skipped{background:#ef6c00}
"""
_FAILED_LIKE = frozenset({StepStatus.FAILED, StepStatus.UPSTREAM_FAILED})
_INSTANCE_HEAD = "id|batch|status|trigger|scheduled for (UTC)|created (UTC)|duration|error"
_STEP_HEAD = "step|map index|status|attempt|started (UTC)|duration|outcome"
Headers = Mapping[str, str] | None

router = APIRouter(include_in_schema=False)


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str, status: int = 200, headers: Headers = None) -> Response:
    document = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)} · Stepline</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers={**_HEADERS, **(headers or {})})


def _base(request: Request) -> str:
    """Where the app is mounted (uvicorn's --root-path), the prefix of every link."""
    return str(request.scope.get("root_path", ""))


def _message(
    request: Request, service: Stepline, status: int, title: str, text: str, headers: Headers = None
) -> Response:
    """A page that says what went wrong, with no secret (the text may echo the request)."""
    body = f"<h1>{_e(title)}</h1><p>{_e(redact_text(text, service.secrets()))}</p>"
    home = f'<p><a href="{_e(_base(request))}/ui">Dashboard</a></p>'
    return _page(title, body + home, status, headers)


def _offered_token(request: Request) -> str | None:
    """The token a request carries: a bearer token, or the password of HTTP Basic."""
    scheme, value = get_authorization_scheme_param(request.headers.get("authorization"))
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        _user, colon, password = decoded.partition(":")
        return password if colon else None
    return None


def _refusal(request: Request, service: Stepline) -> Response | None:
    """A 401/403 page if the API's rule refuses this request, else None."""
    token = _offered_token(request)
    offered = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token) if token else None
    try:
        require_token(request, service, offered)  # compares with hmac.compare_digest
    except HTTPException as exc:
        if exc.status_code == 401:
            text = "Sign in with any user name and the API token (STEPLINE_API_TOKEN) as password."
            challenge = {"WWW-Authenticate": CHALLENGE}
            return _message(request, service, 401, "Sign in", text, challenge)
        return _message(request, service, exc.status_code, "Refused", str(exc.detail))
    return None


def _when(value: datetime | None) -> str:
    return "" if value is None else _e(_utc(value).strftime("%Y-%m-%d %H:%M:%S"))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _duration(start: datetime | None, end: datetime | None) -> str:
    """How long from ``start`` to ``end`` (or until now, while it runs), as HTML."""
    if start is None:
        return ""
    seconds = max((_utc(end or datetime.now(UTC)) - _utc(start)).total_seconds(), 0.0)
    minutes, rest = divmod(int(seconds), 60)
    if seconds < 60:
        return _e(f"{seconds:.1f}s")
    return _e(
        f"{minutes}m {rest:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"
    )


def _status(value: str) -> str:
    return f'<span class="st {_e(value)}">{_e(value)}</span>'


def _json(value: Any, secrets: list[str], indent: int | None = None) -> str:
    text = json.dumps(redact_value(value, secrets), ensure_ascii=False, default=str, indent=indent)
    return redact_text(text, secrets)


def _text_cell(text: str | None) -> str:
    """The first line of an already redacted text, the whole of it in a <details>."""
    if not text:
        return ""
    first = next((line for line in text.splitlines() if line.strip()), text)
    short = first if len(first) <= SHORT else first[: SHORT - 1] + "…"
    if short == text:
        return f"<pre>{_e(text)}</pre>"
    full = text if len(text) <= FULL_LIMIT else text[:FULL_LIMIT] + "\n… (truncated)"
    return f"<details><summary>{_e(short)}</summary><pre>{_e(full)}</pre></details>"


def _table(head: str, rows: list[str], empty: str = "none") -> str:
    """A table with ``head``'s |-separated titles, and ``rows`` (HTML) or ``empty``."""
    titles = head.split("|")
    cells = "".join(f"<th>{_e(h)}</th>" for h in titles)
    rows = rows or [f'<tr><td colspan="{len(titles)}">{_e(empty)}</td></tr>']
    return f"<table><tr>{cells}</tr>{''.join(rows)}</table>"


def _row(*cells: str) -> str:
    """A table row of cells that are HTML already."""
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _select(name: str, values: Iterable[str], chosen: str | None) -> str:
    options = "".join(f"<option{' selected' * (v == chosen)}>{_e(v)}</option>" for v in values)
    return f'{name} <select name="{name}"><option value="">any</option>{options}</select>'


def _next_fire(cron: str | None, timezone: str) -> str:
    if not cron:
        return "on demand"
    try:
        fire = CronSchedule.parse(cron, timezone).next_fire_time(datetime.now(UTC))
        return fire.astimezone(ZoneInfo(timezone)).isoformat(sep=" ")
    except (ValueError, StopIteration) as exc:
        return f"cannot schedule: {exc}"


@router.get("/")
def root(request: Request) -> Response:
    return RedirectResponse(f"{_base(request)}/ui", status_code=307)


@router.get("/ui")
def overview(
    request: Request, service: ServiceDep, status: str | None = None, batch: str | None = None
) -> Response:
    """Batches with their next fire time, and the latest instances (filterable)."""
    refusal = _refusal(request, service)
    if refusal is not None:
        return refusal
    try:
        wanted = InstanceStatus(status) if status else None
    except ValueError:
        allowed = ", ".join(s.value for s in InstanceStatus)
        text = f"unknown status {quoted(status)}; use one of {allowed}"
        return _message(request, service, 422, "Invalid filter", text)
    if batch and not NAME_PATTERN.fullmatch(batch):
        text = f"{quoted(batch)} is not a batch name ([a-z0-9_-], 1-200 characters)"
        return _message(request, service, 422, "Invalid filter", text)
    base = _e(_base(request))
    secrets = service.secrets()
    definitions = service.store.definitions()
    batch_rows = []
    for stored in definitions:
        d = stored.definition
        timezone = d.timezone or service.settings.timezone
        link = base + _e(f"/ui?{urlencode({'batch': stored.name})}")
        name = f'<a href="{link}">{_e(stored.name)}</a>'
        fire = _e(_next_fire(d.cron, timezone))
        batch_rows.append(_row(name, _e(stored.version), _e(d.cron), _e(timezone), fire))
    instance_rows = [
        _row(
            f'<a href="{base}/ui/instances/{_e(i.id)}">{_e(i.id)}</a>',
            _e(i.batch),
            _status(i.status.value),
            _e(i.trigger),
            _when(i.scheduled_for),
            _when(i.created_at),
            _duration(i.started_at, i.finished_at),
            _text_cell(redact_text(i.error, instance_secrets(i, secrets)) if i.error else None),
        )
        for i in service.store.instances(batch or None, wanted, INSTANCES_SHOWN)
    ]
    form = (
        f'<form method="get" action="{base}/ui">{_select("status", InstanceStatus, status)} '
        f"{_select('batch', [d.name for d in definitions], batch)} "
        '<button type="submit">Filter</button></form>'
    )
    body = (
        "<h1>Stepline</h1><h2>Batches</h2>"
        + _table("name|version|cron|timezone|next fire", batch_rows, "no batches")
        + f"<h2>Latest instances</h2>{form}"
        + _table(_INSTANCE_HEAD, instance_rows, "no instances")
    )
    return _page("Dashboard", body)


def _step_row(r: StepResultRecord | AttemptRecord, secrets: list[str]) -> str:
    """A step result or past attempt: its error's first line, else a short result."""
    index = "" if r.map_index < 0 else str(r.map_index)
    shown = redact_text(r.error, secrets) if r.error else None
    if shown is None and isinstance(r, StepResultRecord) and r.result_payload is not None:
        shown = _json(r.result_payload, secrets)
    return _row(
        _e(r.step_key),
        _e(index),
        _status(r.status.value),
        _e(r.attempt),
        _when(r.started_at),
        _duration(r.started_at, r.finished_at),
        _text_cell(shown),
    )


def _items(items: list[StepResultRecord], secrets: list[str]) -> str:
    """A mapped step's items: counts by status, the first ones and the failed ones."""
    counts = Counter(i.status.value for i in items)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    failed = [i for i in items[ITEMS_SHOWN:] if i.status in _FAILED_LIKE][:FAILED_SHOWN]
    shown = items[:ITEMS_SHOWN] + failed
    note = f"{len(items)} items: {summary}"
    if len(shown) < len(items):
        note += f" (showing the first {ITEMS_SHOWN} and {len(failed)} failed)"
    table = _table(_STEP_HEAD, [_step_row(i, secrets) for i in shown])
    return f'<tr><td colspan="7"><div class="items">{_e(note)}{table}</div></td></tr>'


@router.get("/ui/instances/{instance_id}")
def instance_page(request: Request, service: ServiceDep, instance_id: str) -> Response:
    """An instance: its header, its step results (map items summarised) and past attempts."""
    refusal = _refusal(request, service)
    if refusal is not None:
        return refusal
    number = int(instance_id) if instance_id.isascii() and instance_id.isdigit() else 0
    if not 1 <= number <= MAX_ID:
        text = f"{quoted(instance_id)} is not an instance id (a whole number from 1)"
        return _message(request, service, 404, "Not found", text)
    try:
        instance = service.store.instance(number)
    except NotFound as exc:
        return _message(request, service, 404, "Not found", str(exc))
    secrets = instance_secrets(instance, service.secrets())
    results = service.store.step_results(number)
    parents = {r.step_key: r for r in results if r.map_index < 0}
    items: dict[str, list[StepResultRecord]] = {}
    for r in results:
        if r.map_index >= 0:
            items.setdefault(r.step_key, []).append(r)
    step_rows = []
    for key in dict.fromkeys(r.step_key for r in results):
        if key in parents:
            step_rows.append(_step_row(parents[key], secrets))
        if key in items:
            step_rows.append(_items(sorted(items[key], key=lambda r: r.map_index), secrets))
    # The history records every failed attempt; the last one is already the step's row.
    shown = {(r.step_key, r.map_index, r.attempt) for r in results if r.status is StepStatus.FAILED}
    attempts = [
        _step_row(a, secrets)
        for a in service.store.attempts(number)
        if (a.step_key, a.map_index, a.attempt) not in shown
    ]
    i = instance
    base = _e(_base(request))
    link = base + _e(f"/ui?{urlencode({'batch': i.batch})}")
    header = [
        ("batch", f'<a href="{link}">{_e(i.batch)}</a> version {_e(i.definition_version)}'),
        ("status", _status(i.status.value) + (" (cancel requested)" * i.cancel_requested)),
        ("trigger", _e(i.trigger)),
        ("scheduled for (UTC)", _when(i.scheduled_for)),
        ("created (UTC)", _when(i.created_at)),
        ("started (UTC)", _when(i.started_at)),
        ("finished (UTC)", _when(i.finished_at)),
        ("duration", _duration(i.started_at, i.finished_at)),
        ("params", f"<pre>{_e(_json(dict(i.params), secrets, indent=2))}</pre>"),
        ("error", f"<pre>{_e(redact_text(i.error, secrets))}</pre>" if i.error else ""),
    ]
    body = (
        f'<p><a href="{base}/ui">← Dashboard</a></p><h1>Instance {_e(i.id)} of {_e(i.batch)}</h1>'
        + "<table>"
        + "".join(f"<tr><th>{_e(name)}</th><td>{cell}</td></tr>" for name, cell in header)
        + "</table><h2>Steps</h2>"
        + _table(_STEP_HEAD, step_rows, "no step results")
        + "<h2>Earlier attempts</h2>"
        + _table(_STEP_HEAD, attempts, "none")
    )
    return _page(f"Instance {i.id}", body)
