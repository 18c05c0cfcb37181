"""Running one attempt of one step: build the context, call the runner, encode the result.

Shared by every dispatcher, so a step behaves the same in a thread here or on a Celery
worker elsewhere. Nothing here touches a database transaction while the runner runs.
"""

from __future__ import annotations

import inspect
import json
import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from stepline.core.context import DoNotRetry, StepContext
from stepline.core.runners import Runner, resolve_runner
from stepline.core.templates import has_templates, resolve
from stepline.dispatchers.base import StepWork
from stepline.engine import steplogs
from stepline.engine.steplogs import AttemptLog, RunnerLogger
from stepline.stores.base import StepOutcome

ResultLoader = Callable[[int, tuple[str, ...]], Mapping[str, Any]]

_runners: dict[str, Runner] = {}
_MAX_ERROR = 8000


def runner_for(reference: str) -> Runner:
    runner = _runners.get(reference)
    if runner is None:
        runner = _runners[reference] = resolve_runner(reference)
    return runner


def is_async(reference: str) -> bool:
    return inspect.iscoroutinefunction(runner_for(reference))


def build_context(
    work: StepWork, load: ResultLoader | None, sink: AttemptLog | None = None
) -> StepContext:
    results: Mapping[str, Any] = work.results
    if work.missing_results and load is not None:
        results = {**results, **load(work.instance_id, work.missing_results)}
    args: Mapping[str, Any] = work.step.args
    if args and has_templates(args):
        namespace = {"params": work.params, "results": results, "item": work.item}
        args = resolve(args, namespace)
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
    )


def outcome(
    work: StepWork,
    started: datetime,
    value: Any = None,
    error: BaseException | None = None,
    log: AttemptLog | None = None,
) -> StepOutcome:
    """The outcome of an attempt that returned ``value`` or raised ``error``."""
    claimed = work.claimed
    payload: str | None = None
    retryable = True
    message: str | None = None
    if error is None:
        try:
            payload = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            message = (
                f"runner {work.step.runner!r} returned a value that is not "
                f"JSON-serialisable ({type(value).__name__}): {exc}"
            )
            retryable = False
    else:
        message = describe(error)
        retryable = not isinstance(error, DoNotRetry | ImportError)
    text, truncated = log.text() if log is not None else (None, False)
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
        log=text,
        log_truncated=truncated,
    )


def describe(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error))
    head = f"{type(error).__name__}: {error}"
    if len(text) > _MAX_ERROR:
        text = text[: _MAX_ERROR // 2] + "\n...\n" + text[-_MAX_ERROR // 2 :]
    return f"{head}\n{text}"


def run_sync(work: StepWork, load: ResultLoader | None) -> StepOutcome:
    started = datetime.now(UTC)
    log = steplogs.capture(work.params)
    token = steplogs.active(log)
    try:
        context = build_context(work, load, log)
        value = runner_for(work.step.runner)(context)
        if inspect.isawaitable(value):
            raise TypeError(
                f"runner {work.step.runner!r} returned an awaitable from a plain "
                "def; declare it `async def`"
            )
    except BaseException as exc:  # SystemExit in a runner must still end its attempt
        return outcome(work, started, error=exc, log=log)
    finally:
        steplogs.release(token)
    return outcome(work, started, value, log=log)


async def run_async(work: StepWork, load: ResultLoader | None) -> StepOutcome:
    started = datetime.now(UTC)
    log = steplogs.capture(work.params)
    token = steplogs.active(log)  # the task's own context: other tasks are not affected
    try:
        context = build_context(work, load, log)
        value = await runner_for(work.step.runner)(context)
    except Exception as exc:
        return outcome(work, started, error=exc, log=log)
    finally:
        steplogs.release(token)
    return outcome(work, started, value, log=log)
