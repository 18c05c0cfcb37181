"""Running one attempt of one step: build the context, call the runner, encode the result.

Shared by every dispatcher, so a step behaves the same in a thread here or on a Celery
worker elsewhere. Nothing here touches a database transaction while the runner runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import threading
import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from stepline.connections import Connections, default_connections
from stepline.core.context import DoNotRetry, StepContext
from stepline.core.runners import Runner, resolve_runner
from stepline.core.states import StepStatus
from stepline.core.templates import has_templates, resolve
from stepline.dispatchers.base import StepWork
from stepline.engine import steplogs
from stepline.engine.backoff import Backoff
from stepline.engine.steplogs import AttemptLog, RunnerLogger
from stepline.redact import remember_secrets, secret_values
from stepline.stores.base import StepOutcome

ResultLoader = Callable[[int, tuple[str, ...]], Mapping[str, Any]]
StatusLoader = Callable[[int, tuple[str, ...]], Mapping[str, StepStatus]]

_runners: dict[str, Runner] = {}
_MAX_ERROR = 8000
_READ_PATIENCE = 30.0
T = TypeVar("T")


def runner_for(reference: str) -> Runner:
    runner = _runners.get(reference)
    if runner is None:
        runner = _runners[reference] = resolve_runner(reference)
    return runner


_async: dict[str, bool] = {}


def is_async(reference: str) -> bool:
    found = _async.get(reference)
    if found is None:
        found = _async[reference] = inspect.iscoroutinefunction(runner_for(reference))
    return found


_remembered: dict[int, Mapping[str, Any]] = {}
_remembered_lock = threading.Lock()


def _remember_params(params: Mapping[str, Any]) -> None:
    """A runner may log its params or copy them anywhere: this process's log lines mask the
    instance's secret values from now on, whatever key or message carries them.

    Walked once per params object (the driver passes an instance's own dict to each of its
    steps): params may hold a list of 10,000 map items.
    """
    if _remembered.get(id(params)) is params:
        return
    remember_secrets(secret_values(params))
    with _remembered_lock:
        _remembered[id(params)] = params  # held, so its id is not reused while cached
        while len(_remembered) > 64:
            del _remembered[next(iter(_remembered))]


def build_context(
    work: StepWork,
    load: ResultLoader | None,
    sink: AttemptLog | None = None,
    *,
    statuses: StatusLoader | None = None,
    connections: Connections | None = None,
) -> StepContext:
    """The context of ``work``'s attempt. ``load`` reads the upstream results the driver did
    not pass; ``statuses`` the status of upstream steps that did not succeed (without it,
    ``ctx.upstream`` names only the ones that succeeded); ``connections`` defaults to the
    process-wide named connections."""
    results: Mapping[str, Any] = work.results
    if work.missing_results and load is not None:
        missing = work.missing_results
        loaded = _patiently(lambda: load(work.instance_id, missing))
        results = {**results, **loaded}
    upstream: dict[str, str] = {}
    for key in (*work.results, *work.missing_results):
        upstream[key] = StepStatus.SUCCEEDED.value if key in results else ""
    unknown = [k for k, status in upstream.items() if not status]
    if unknown and statuses is not None:
        found = _patiently(lambda: statuses(work.instance_id, tuple(unknown)))
        upstream.update({k: s.value for k, s in found.items() if k in upstream})
    upstream = {k: status for k, status in upstream.items() if status}
    args: Mapping[str, Any] = work.step.args
    if args and has_templates(args):
        namespace = {"params": work.params, "results": results, "item": work.item}
        args = resolve(args, namespace)
    _remember_params(work.params)
    claimed = work.claimed
    context = {
        "batch": work.batch,
        "instance_id": work.instance_id,
        "step": claimed.step_key,
        "attempt": claimed.attempt,
    }
    if claimed.map_index >= 0:
        context["map_index"] = claimed.map_index
    log = RunnerLogger(sink, context)
    return StepContext(
        batch=work.batch,
        instance_id=work.instance_id,
        step=claimed.step_key,
        attempt=claimed.attempt,
        params=work.params,
        results=results,
        args=args,
        log=log,
        item=work.item,
        map_index=claimed.map_index,
        connections=connections if connections is not None else default_connections(),
        upstream=upstream,
    )


def _patiently(read: Callable[[], T]) -> T:
    """A read the runner needs before it starts, waiting out a passing database error (up
    to about 30 s) rather than failing an attempt that has not started."""
    return Backoff(_READ_PATIENCE).call(read)


def outcome(
    work: StepWork,
    started: datetime,
    value: Any = None,
    error: BaseException | None = None,
    log: AttemptLog | None = None,
) -> StepOutcome:
    """The outcome of an attempt that returned ``value`` or raised ``error``.

    Never raises: a value that cannot be stored (not JSON, too deep, not valid Unicode,
    too large for the store) fails the attempt with a message that says why, without a
    retry, since the runner would return the same value again.
    """
    claimed = work.claimed
    payload: str | None = None
    retryable = True
    message: str | None = None
    codes: tuple[str, ...] = ()
    if error is None:
        try:
            payload = encode_result(value, work.max_result_bytes)
        except UnstorableResult as exc:
            message = f"runner {work.step.runner!r} {exc}"
            retryable = False
    else:
        message = describe(error)
        retryable = not isinstance(error, DoNotRetry | ImportError)
        codes = error_identifiers(error)
    text, truncated = log.text() if log is not None else (None, False)
    if text is not None:
        text = safe_text(text)
    return StepOutcome(
        row_id=claimed.row_id,
        step_key=claimed.step_key,
        map_index=claimed.map_index,
        attempt=claimed.attempt,
        succeeded=message is None,
        payload=payload,
        error=message,
        started_at=started,
        finished_at=datetime.now(UTC),
        retryable=retryable,
        first_attempt=claimed.first_attempt,
        error_codes=codes,
        log=text,
        log_truncated=truncated,
    )


_CODE = re.compile(r"\b(?:ORA|PLS|DPY)-\d{4,5}\b")


def error_identifiers(error: BaseException) -> tuple[str, ...]:
    """What ``retry.on`` can match: along the chain of causes, each exception's class names
    (its own and its bases'), its ``code`` attribute if text, and the database codes its
    message names (``ORA-00060``)."""
    found: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found += [cls.__name__ for cls in type(current).__mro__ if cls not in (object,)]
        for attribute in ("code", "sqlstate", "codes"):  # DatabaseError's, psycopg's
            code = getattr(current, attribute, None)
            if isinstance(code, str) and code:
                found.append(code)
            elif isinstance(code, tuple):
                found += [c for c in code if isinstance(c, str)]
        with contextlib.suppress(Exception):  # an exception whose __str__ raises
            found += _CODE.findall(str(current))
        wrapped = getattr(current, "orig", None)  # SQLAlchemy's wrapper of a driver error
        if isinstance(wrapped, BaseException) and id(wrapped) not in seen:
            current = wrapped
        else:
            current = current.__cause__ or current.__context__
    return tuple(dict.fromkeys(found))


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""What ``json.dumps`` with these options builds at every call (it keeps no state)."""


class UnstorableResult(ValueError):
    """A runner's return value that no store could keep; the message says why."""


def encode_result(value: Any, max_bytes: int | None = None) -> str:
    """``value`` as the JSON text stored in ``result_payload``; raises UnstorableResult."""
    if value is None and (max_bytes is None or max_bytes >= 4):
        return "null"  # a step that returns nothing: no encoder to build and run
    try:
        payload = _ENCODER.encode(value)
    except RecursionError:
        raise UnstorableResult(
            f"returned a value nested too deeply to store as JSON ({type(value).__name__})"
        ) from None
    except (TypeError, ValueError) as exc:
        raise UnstorableResult(
            f"returned a value that is not JSON-serialisable ({type(value).__name__}): {exc}"
        ) from None
    except Exception as exc:  # a __str__ or a dict key that raises: still the value's fault
        raise UnstorableResult(
            f"returned a value that could not be encoded as JSON: {safe_text(exc)}"
        ) from None
    size = len(payload)
    if not payload.isascii():
        try:
            size = len(payload.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise UnstorableResult(
                "returned text that is not valid Unicode (a lone surrogate "
                f"{payload[exc.start : exc.end]!a} at position {exc.start}); "
                "decode bytes with errors='replace' or return them base64-encoded"
            ) from None
    if max_bytes is not None and size > max_bytes:
        raise UnstorableResult(
            f"returned a result of {size:,} bytes as JSON; the store keeps at most "
            f"{max_bytes:,} (STEPLINE_MAX_RESULT_BYTES): store large data elsewhere and "
            "return a reference to it"
        )
    return payload


def describe(error: BaseException) -> str:
    """An exception as stored text: its head line, then the traceback, cut to a size that
    every database keeps, with NUL and lone surrogates (which some refuse) escaped."""
    try:
        text = "".join(traceback.format_exception(error))
        head = f"{type(error).__name__}: {error}"
    except Exception:  # an exception whose __str__ raises
        text = head = f"{type(error).__name__}: <the error's message could not be shown>"
    if len(text) > _MAX_ERROR:
        text = text[: _MAX_ERROR // 2] + "\n...\n" + text[-_MAX_ERROR // 2 :]
    return safe_text(f"{head}\n{text}")


def safe_text(text: object) -> str:
    value = str(text)
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    if not value.isascii():
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def run_sync(
    work: StepWork,
    load: ResultLoader | None,
    *,
    statuses: StatusLoader | None = None,
    connections: Connections | None = None,
    timeouts: tuple[type[BaseException], ...] = (),
) -> StepOutcome:
    """Run a ``def`` runner in this thread. ``timeouts`` are the exceptions that mean the
    attempt ran out of time (a Celery worker's soft time limit)."""
    started = datetime.now(UTC)
    log = steplogs.capture(work.params)
    token = steplogs.active(log)
    try:
        context = build_context(work, load, log, statuses=statuses, connections=connections)
        value = runner_for(work.step.runner)(context)
        if value is not None and inspect.isawaitable(value):
            raise TypeError(
                f"runner {work.step.runner!r} returned an awaitable from a plain "
                "def; declare it `async def`"
            )
    except timeouts:
        return timed_out(work, started, log)
    except BaseException as exc:  # SystemExit in a runner must still end its attempt
        return outcome(work, started, error=exc, log=log)
    finally:
        steplogs.release(token)
    return outcome(work, started, value, log=log)


async def run_async(
    work: StepWork,
    load: ResultLoader | None,
    *,
    statuses: StatusLoader | None = None,
    connections: Connections | None = None,
    timeout: float | None = None,
    timeouts: tuple[type[BaseException], ...] = (),
) -> StepOutcome:
    """Await an ``async def`` runner; with ``timeout`` (seconds) it is cancelled then, and
    the attempt fails as timed out. ``timeouts`` as for :func:`run_sync`."""
    started = datetime.now(UTC)
    log = steplogs.capture(work.params)
    token = steplogs.active(log)  # the task's own context: other tasks are not affected
    try:
        context = build_context(work, load, log, statuses=statuses, connections=connections)
        call = runner_for(work.step.runner)(context)
        value = await (call if timeout is None else asyncio.wait_for(call, timeout))
    except asyncio.CancelledError:
        raise  # the dispatcher tells an abandoned attempt from one that cancelled itself
    except timeouts:
        return timed_out(work, started, log)
    except TimeoutError as exc:
        if timeout is not None:
            return timed_out(work, started, log)
        return outcome(work, started, error=exc, log=log)
    except BaseException as exc:  # SystemExit in a runner must still end its attempt
        return outcome(work, started, error=exc, log=log)
    finally:
        steplogs.release(token)
    return outcome(work, started, value, log=log)


def timeout_error(attempt: int, timeout: timedelta) -> str:
    """The error of an attempt that ran out of its step's time, whoever noticed it."""
    return (
        f"TimeoutError: attempt {attempt} exceeded the step timeout of "
        f"{timeout.total_seconds():g} s"
    )


def timed_out(work: StepWork, started: datetime, log: AttemptLog | None = None) -> StepOutcome:
    """The outcome of an attempt that ran out of its step's time (retried per policy)."""
    assert work.step.timeout is not None
    claimed = work.claimed
    text, truncated = log.text() if log is not None else (None, False)
    return StepOutcome(
        row_id=claimed.row_id,
        step_key=claimed.step_key,
        map_index=claimed.map_index,
        attempt=claimed.attempt,
        succeeded=False,
        payload=None,
        error=timeout_error(claimed.attempt, work.step.timeout),
        started_at=started,
        finished_at=datetime.now(UTC),
        first_attempt=claimed.first_attempt,
        error_codes=("TimeoutError",),
        log=safe_text(text) if text is not None else None,
        log_truncated=truncated,
    )
