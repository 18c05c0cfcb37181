"""Built-in HTTP runner: one JSON request with retries and backoff (httpx, synchronous).

Usable from YAML without code::

    - key: collect_stats
      runner: stepline.http:request
      with:
        url: https://apis.data.go.kr/.../getStats
        params: {serviceKey: "${STATS_API_KEY}", baseDate: "{{ params.base_date }}"}
        timeout: 10s
        retries: 3
        backoff: 1s

``{{ }}`` templates are resolved by the engine from params and upstream results, which are
stored in Stepline's database. ``${NAME}`` references in ``url``, ``params`` and ``headers``
are read from the environment at run time instead, so keys never enter a stored definition;
their values are masked in every log line and error message, like any secret-looking query
parameter (``serviceKey``, ``api_key``, ``token``...) and every header value.

Retries happen inside one step attempt: timeouts, connection errors, HTTP 429 (honouring
``Retry-After`` up to a cap) and 5xx are retried with exponential backoff; other 4xx answers
fail the step at once (:class:`~stepline.DoNotRetry`), because asking again cannot fix them.
When the retries are used up the step fails with :class:`HttpError`, and the step's own
``retry:`` policy (if any) decides whether it is attempted again later.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog

from stepline.core.context import DoNotRetry, StepContext
from stepline.core.durations import parse_duration
from stepline.core.environment import UnsetVariable, expand_env
from stepline.errors import SteplineError
from stepline.redact import redact_text, redact_url, url_secrets

__all__ = [
    "HttpError",
    "http_request",
    "is_retryable_error",
    "is_retryable_status",
    "parse_retry_after",
    "request",
    "retry_delay",
]

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 1.0
DEFAULT_MAX_BACKOFF = 30.0
DEFAULT_RETRY_AFTER_CAP = 60.0
MAX_TEXT_CHARS = 65_536
_ERROR_BODY_CHARS = 200
_ARGS = frozenset(
    {
        "method",
        "url",
        "params",
        "json",
        "data",
        "headers",
        "timeout",
        "retries",
        "backoff",
        "max_backoff",
        "retry_after_cap",
        "verify",
        "follow_redirects",
    }
)

_log = structlog.get_logger("stepline.http")


class HttpError(SteplineError):
    """The request failed after its retries (timeouts, connection errors, 429 or 5xx).

    ``status`` is the last HTTP status, or None if no answer came. The message names the
    request with its secrets masked.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# -- retry decisions (pure) ---------------------------------------------------------------


def is_retryable_status(status: int) -> bool:
    """Whether an answer with ``status`` may succeed if asked again: 429 and every 5xx."""
    return status == 429 or 500 <= status <= 599


def is_retryable_error(error: BaseException) -> bool:
    """Whether a transport error is transient: timeouts, network and remote protocol errors.

    An unsupported scheme, an invalid URL or a local protocol error is a bug in the request
    and fails at once.
    """
    return isinstance(
        error, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
    )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None.

    Unparseable values give None (the caller falls back to its backoff); dates in the past
    give 0.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def retry_delay(
    retry: int,
    *,
    backoff: float = DEFAULT_BACKOFF,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    retry_after: float | None = None,
    retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...).

    The server's ``Retry-After`` wins when given, capped at ``retry_after_cap`` so a server
    asking for an hour cannot hold a step (and its thread) that long; otherwise
    ``backoff * 2**(retry-1)``, capped at ``max_backoff``.
    """
    if retry_after is not None:
        return max(0.0, min(retry_after, retry_after_cap))
    exponent = min(max(retry - 1, 0), 32)  # bounded: 2**big would overflow a float
    return float(max(0.0, min(backoff * (2**exponent), max_backoff)))


# -- the request ----------------------------------------------------------------------------


def http_request(
    method: str,
    url: str,
    *,
    params: Mapping[str, Any] | None = None,
    json: Any = None,
    data: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
    verify: bool = True,
    follow_redirects: bool = True,
    secrets: Iterable[str] = (),
    log: Any = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Send one request, retrying transient failures; return the parsed JSON answer.

    Makes at most ``1 + retries`` requests. A 2xx/3xx answer with a JSON body returns the
    parsed value; any other body returns ``{"status": code, "text": body}`` (text cut at
    64 KiB, with ``"truncated": true``). Raises :class:`~stepline.DoNotRetry` for a 4xx
    other than 429 and for an invalid URL, :class:`HttpError` when retries are used up.
    ``secrets`` are extra strings to mask (besides secret query values and header values);
    no message or log line contains them or the URL's secret parts.
    """
    logger = log if log is not None else _log
    method = method.upper()
    header_values = [str(v) for v in (headers or {}).values()]
    try:
        full_url = httpx.URL(url)
        if params:
            # Merged as the client will send it (httpx.URL(url, params=...) would replace).
            full_url = full_url.copy_merge_params(_query(params) or {})
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        hidden = [*secrets, *url_secrets(url), *header_values]
        raise DoNotRetry(_mask(f"invalid URL {redact_url(url)}: {exc}", hidden)) from None
    hidden = [*secrets, *url_secrets(url), *url_secrets(str(full_url)), *header_values]
    # Masked twice: redact_url knows secret-looking names, ``hidden`` the values themselves.
    shown = _mask(f"{method} {redact_url(str(full_url))}", hidden)
    retries = max(0, int(retries))
    with httpx.Client(timeout=timeout, verify=verify, follow_redirects=follow_redirects) as client:
        for attempt in range(1, retries + 2):
            retry_after: float | None = None
            try:
                response = client.request(
                    method, url, params=_query(params), json=json, data=data, headers=headers
                )
            except httpx.HTTPError as exc:
                # `from None` everywhere: httpx exceptions carry the request and its full URL.
                reason = _mask(f"{type(exc).__name__}: {exc}", hidden)
                if not is_retryable_error(exc):
                    raise DoNotRetry(f"{shown} failed: {reason}") from None
                failure, status = f"{shown} failed: {reason}", None
            else:
                status = response.status_code
                if not is_retryable_status(status):
                    if status >= 400:
                        raise DoNotRetry(f"{shown} answered {_status(response, hidden)}") from None
                    logger.info("http request done", request=shown, status=status)
                    return _parse(response)
                failure = f"{shown} answered {_status(response, hidden)}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if attempt > retries:
                tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                raise HttpError(f"{failure} (gave up after {tries})", status) from None
            delay = retry_delay(
                attempt,
                backoff=backoff,
                max_backoff=max_backoff,
                retry_after=retry_after,
                retry_after_cap=retry_after_cap,
            )
            logger.warning("http request retried", error=failure, attempt=attempt, delay=delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def request(ctx: StepContext) -> Any:
    """The ``stepline.http:request`` runner: :func:`http_request` with the step's ``with``.

    ``with``: ``url`` (required), ``method`` (GET), ``params``, ``json``, ``data``,
    ``headers``, ``timeout`` (10s), ``retries`` (3), ``backoff`` (1s), ``max_backoff``
    (30s), ``retry_after_cap`` (60s), ``verify`` (true), ``follow_redirects`` (true).
    Durations accept ``500ms``, ``10s``, ``1m`` or seconds. ``${NAME}`` in url, params and
    headers reads the environment variable NAME (a missing one fails the step at once).
    """
    args = ctx.args
    unknown = sorted(str(k) for k in args if k not in _ARGS)
    if unknown:
        raise DoNotRetry(
            f"stepline.http:request: unknown argument(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(_ARGS))}"
        )
    secrets: list[str] = []
    url = args.get("url")
    if not isinstance(url, str) or not url:
        raise DoNotRetry("stepline.http:request: 'with.url' is required")
    url = _expand(url, "url", secrets)
    params = _expand_mapping(args.get("params"), "params", secrets)
    headers = _expand_mapping(args.get("headers"), "headers", secrets)
    try:
        timeout = parse_duration(args.get("timeout", DEFAULT_TIMEOUT)).total_seconds()
        backoff = parse_duration(args.get("backoff", DEFAULT_BACKOFF)).total_seconds()
        max_backoff = parse_duration(args.get("max_backoff", DEFAULT_MAX_BACKOFF)).total_seconds()
        cap = parse_duration(args.get("retry_after_cap", DEFAULT_RETRY_AFTER_CAP)).total_seconds()
        retries = int(args.get("retries", DEFAULT_RETRIES))
    except (TypeError, ValueError) as exc:
        raise DoNotRetry(f"stepline.http:request: {exc}") from None
    if timeout <= 0:
        raise DoNotRetry("stepline.http:request: timeout must be positive")
    return http_request(
        str(args.get("method", "GET")),
        url,
        params=params,
        json=args.get("json"),
        data=args.get("data"),
        headers={k: str(v) for k, v in headers.items()} if headers else None,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        max_backoff=max_backoff,
        retry_after_cap=cap,
        verify=bool(args.get("verify", True)),
        follow_redirects=bool(args.get("follow_redirects", True)),
        secrets=secrets,
        log=ctx.log,
    )


# -- helpers --------------------------------------------------------------------------------


def _query(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not params:
        return None
    # httpx would send None as an empty value; an absent optional param is left out instead.
    return {str(k): v for k, v in params.items() if v is not None}


def _parse(response: httpx.Response) -> Any:
    body = response.content
    if body.strip():
        try:
            return response.json()
        except ValueError:
            pass
    text = response.text
    result: dict[str, Any] = {"status": response.status_code, "text": text[:MAX_TEXT_CHARS]}
    if len(text) > MAX_TEXT_CHARS:
        result["truncated"] = True
    return result


def _status(response: httpx.Response, hidden: list[str]) -> str:
    detail = _mask(response.text[:_ERROR_BODY_CHARS].strip(), hidden)
    reason = f" {response.reason_phrase}" if response.reason_phrase else ""
    return f"HTTP {response.status_code}{reason}" + (f": {detail}" if detail else "")


def _mask(text: str, secrets: Iterable[str]) -> str:
    return redact_text(text, [s for s in secrets if s])


def _expand(value: str, where: str, secrets: list[str]) -> str:
    try:
        return expand_env(value, on_value=secrets.append)
    except UnsetVariable as exc:
        raise DoNotRetry(f"stepline.http:request: {where} {exc}") from None


def _expand_mapping(value: Any, where: str, secrets: list[str]) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise DoNotRetry(f"stepline.http:request: '{where}' must be a mapping")
    return {
        str(k): _expand(v, f"{where}.{k}", secrets) if isinstance(v, str) else v
        for k, v in value.items()
    }
