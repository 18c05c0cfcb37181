"""Parse and validate batch documents (YAML, JSON or dicts). Nothing is written here.

Every problem is collected and reported together, each with the file and step it is in,
so that one `stepline validate` run shows everything that needs fixing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from stepline.core.dag import find_cycle
from stepline.core.definition import (
    NAME_PATTERN,
    QUEUE_PATTERN,
    STEP_KEY_PATTERN,
    BatchDefinition,
    MapSpec,
    RetryPolicy,
    StepDefinition,
)
from stepline.core.durations import parse_duration
from stepline.core.expressions import ExpressionError, check_expression
from stepline.core.runners import main_module_problem, resolve_runner
from stepline.core.states import TriggerRule
from stepline.core.templates import check_templates
from stepline.errors import DefinitionError, Problem, shown

DEFINITION_SUFFIXES = (".yaml", ".yml", ".json")
_STEP_FIELDS = {
    "key", "runner", "next_steps", "nextSteps", "with", "retry", "timeout",
    "trigger_rule", "triggerRule", "condition", "map", "queue",
}  # fmt: skip
_BATCH_FIELDS = {
    "name", "cron", "timezone", "max_active_instances", "params", "steps", "alerts",
    "description", "queue",
}  # fmt: skip
# Options read by the scheduler and API layers; the core only carries them.
_EXTRA_FIELDS = {"misfire", "misfire_grace", "misfire_cap", "on_busy"}
# Names Airflow has since retired, named in the error so a migrated DAG is easy to fix.
_OLD_AIRFLOW_RULES = {"dummy": "always", "none_failed_or_skipped": "none_failed_min_one_success"}


class _Collector:
    def __init__(self, source: str | None) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def add(self, message: str, step: str | None = None) -> None:
        self.problems.append(Problem(message, self.source, step))


def parse_definition(
    doc: object, source: str | None = None, *, check_runners: bool = True
) -> BatchDefinition:
    """Validate a document and return the definition, or raise DefinitionError with all problems."""
    out = _Collector(source)
    if doc is None:
        out.add("the definition is empty (a batch needs at least name and steps)")
        raise DefinitionError(out.problems)
    if not isinstance(doc, Mapping):
        out.add(f"a batch definition must be a mapping, got {type(doc).__name__}")
        raise DefinitionError(out.problems)
    known = ", ".join(sorted(_BATCH_FIELDS | _EXTRA_FIELDS))
    for unknown in sorted(set(doc) - _BATCH_FIELDS - _EXTRA_FIELDS):
        out.add(f"unknown field {shown(unknown)} (known: {known})")

    name = doc.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        out.add(f"name {shown(name)} must be 1-200 characters of a-z, 0-9, '_' and '-'")
    cron = doc.get("cron")
    timezone = doc.get("timezone")
    if timezone is not None:
        try:
            ZoneInfo(str(timezone))
        except (ZoneInfoNotFoundError, ValueError, OSError):
            out.add(f"unknown timezone {shown(timezone)}: use an IANA name such as Asia/Seoul")
            timezone = None
    if cron is not None:
        from stepline.scheduling.cron import CronError, CronSchedule

        try:
            CronSchedule.parse(str(cron), str(timezone or "UTC"))
        except CronError as exc:
            out.add(str(exc))
    max_active = doc.get("max_active_instances", 1)
    if not isinstance(max_active, int) or isinstance(max_active, bool) or max_active < 1:
        out.add(f"max_active_instances {shown(max_active)} must be a whole number >= 1")
        max_active = 1
    params = doc.get("params") or {}
    if not isinstance(params, Mapping):
        out.add(f"params must be a mapping, got {type(params).__name__}")
        params = {}
    alerts = doc.get("alerts") or []
    if not isinstance(alerts, list) or not all(isinstance(a, Mapping) for a in alerts):
        out.add("alerts must be a list of mappings such as {type: webhook, url: ...}")
        alerts = []

    _check_scheduling_options(doc, out)
    queue = _parse_queue(doc.get("queue"), None, out)
    raw_steps = doc.get("steps")
    steps: list[StepDefinition] = []
    if not isinstance(raw_steps, list) or not raw_steps:
        out.add("steps must be a non-empty list")
    else:
        seen: set[str] = set()
        for index, raw in enumerate(raw_steps):
            parsed = _parse_step(raw, index, out, check_runners)
            if parsed is None:
                continue
            if parsed.key in seen:
                out.add(f"duplicate step key {shown(parsed.key)}", parsed.key)
                continue
            seen.add(parsed.key)
            steps.append(parsed)
        _check_graph(steps, params, out)

    if out.problems:
        raise DefinitionError(out.problems)
    assert isinstance(name, str)
    return BatchDefinition(
        name=name,
        steps=tuple(steps),
        cron=str(cron) if cron is not None else None,
        timezone=str(timezone) if timezone is not None else None,
        max_active_instances=max_active,
        params=dict(params),
        alerts=tuple(dict(a) for a in alerts),
        description=doc.get("description"),
        queue=queue,
        extra={k: doc[k] for k in _EXTRA_FIELDS if k in doc},
    )


def _check_scheduling_options(doc: Mapping[str, Any], out: _Collector) -> None:
    if doc.get("misfire", "once") not in ("once", "all", "skip"):
        out.add(f"misfire {shown(doc['misfire'])} must be once, all or skip")
    if doc.get("on_busy", "queue") not in ("queue", "skip"):
        out.add(f"on_busy {shown(doc['on_busy'])} must be queue or skip")
    if "misfire_grace" in doc:
        try:
            parse_duration(doc["misfire_grace"])
        except ValueError as exc:
            out.add(f"misfire_grace: {exc}")
    cap = doc.get("misfire_cap", 100)
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        out.add(f"misfire_cap {shown(cap)} must be a whole number >= 1")


def _parse_step(
    raw: object, index: int, out: _Collector, check_runners: bool
) -> StepDefinition | None:
    if not isinstance(raw, Mapping):
        out.add(f"step #{index + 1} must be a mapping with at least 'key' and 'runner'")
        return None
    key = raw.get("key")
    if not isinstance(key, str) or not STEP_KEY_PATTERN.match(key):
        out.add(
            f"step #{index + 1} has an invalid key {shown(key)} (letters, digits, '_', '-', '.')"
        )
        return None
    for unknown in sorted(set(raw) - _STEP_FIELDS):
        out.add(f"unknown field {shown(unknown)} (known: {', '.join(sorted(_STEP_FIELDS))})", key)
    runner = raw.get("runner")
    if runner is None or runner == "":
        out.add("missing 'runner' (e.g. runner: mypackage.steps:collect)", key)
        runner = ""
    elif not isinstance(runner, str):
        out.add(
            f"runner {shown(runner)} must be a string 'module:function' "
            "(e.g. runner: mypackage.steps:collect)",
            key,
        )
        runner = ""
    elif check_runners:
        problem = main_module_problem(runner)
        try:
            if problem is None:
                resolve_runner(runner)
        except ImportError as exc:
            problem = str(exc)
        if problem:
            out.add(problem, key)
    nexts = raw.get("next_steps", raw.get("nextSteps", []))
    if isinstance(nexts, str):
        nexts = [nexts]
    if not isinstance(nexts, list) or not all(isinstance(n, str) for n in nexts):
        out.add("next_steps must be a list of step keys", key)
        nexts = []
    args = raw.get("with") or {}
    if not isinstance(args, Mapping):
        out.add("'with' must be a mapping of argument names to values", key)
        args = {}
    retry = _parse_retry(raw.get("retry"), key, out)
    timeout = None
    if raw.get("timeout") is not None:
        try:
            timeout = parse_duration(raw["timeout"])
        except ValueError as exc:
            out.add(f"timeout: {exc}", key)
    rule_text = raw.get("trigger_rule", raw.get("triggerRule", TriggerRule.ALL_SUCCESS.value))
    try:
        rule = TriggerRule(rule_text)
    except ValueError:
        known = ", ".join(r.value for r in TriggerRule)
        renamed = _OLD_AIRFLOW_RULES.get(rule_text) if isinstance(rule_text, str) else None
        hint = f"Airflow's old name for {renamed!r}; " if renamed else ""
        out.add(f"unknown trigger_rule {shown(rule_text)} ({hint}known: {known})", key)
        rule = TriggerRule.ALL_SUCCESS
    condition = raw.get("condition")
    if condition is not None and not isinstance(condition, str | bool):
        out.add("condition must be an expression string", key)
        condition = None
    elif isinstance(condition, str):
        try:
            check_expression(condition, names=("params", "results"))
        except ExpressionError as exc:
            out.add(f"condition: {exc}", key)
    names = ("params", "results", "item") if raw.get("map") is not None else ("params", "results")
    for message in check_templates(args, names=names):
        out.add(f"with: {message}", key)
    return StepDefinition(
        key=key,
        runner=runner,
        next_steps=tuple(nexts),
        args=dict(args),
        retry=retry,
        timeout=timeout,
        trigger_rule=rule,
        condition=None if condition is None else str(condition),
        map=_parse_map(raw.get("map"), key, out),
        queue=_parse_queue(raw.get("queue"), key, out),
    )


def _parse_queue(raw: object, key: str | None, out: _Collector) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not QUEUE_PATTERN.match(raw):
        out.add(
            f"queue {raw!r} must be 1-100 characters of letters, digits, '_', '-', '.' and ':'",
            key,
        )
        return None
    return raw


def _parse_retry(raw: object, key: str, out: _Collector) -> RetryPolicy:
    if raw is None:
        return RetryPolicy()
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = {"attempts": raw}
    if not isinstance(raw, Mapping):
        out.add("retry must be a mapping like {attempts: 3, backoff: 2s, max_backoff: 1m}", key)
        return RetryPolicy()
    attempts = raw.get("attempts", 1)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        out.add(f"retry.attempts {shown(attempts)} must be a whole number >= 1", key)
        attempts = 1
    policy = RetryPolicy(
        attempts=attempts, jitter=bool(raw.get("jitter", True)), on=_retry_on(raw, key, out)
    )
    for name in ("backoff", "max_backoff"):
        if name in raw:
            try:
                policy = _replace(policy, name, parse_duration(raw[name]))
            except ValueError as exc:
                out.add(f"retry.{name}: {exc}", key)
    return policy


def _retry_on(raw: Mapping[str, Any], key: str, out: _Collector) -> tuple[str, ...]:
    value = raw.get("on")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        out.add(
            "retry.on must be a list of error codes or exception class names, "
            "like [ORA-00060, ORA-12541, TimeoutError]",
            key,
        )
        return ()
    bad = [i for i in items if not isinstance(i, str) or not re.fullmatch(r"[\w.-]{1,100}", i)]
    if bad:
        out.add(
            f"retry.on: {bad[0]!r} is not an error code or exception class name "
            "(letters, digits, '_', '-', '.')",
            key,
        )
        return ()
    return tuple(items)


def _replace(policy: RetryPolicy, name: str, value: Any) -> RetryPolicy:
    from dataclasses import replace

    return replace(policy, **{name: value})


def _parse_map(raw: object, key: str, out: _Collector) -> MapSpec | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"over": raw}
    if not isinstance(raw, Mapping) or not isinstance(raw.get("over"), str):
        out.add(
            "map must be {over: <upstream step or params key>, concurrency: N, label: ...}", key
        )
        return None
    concurrency = raw.get("concurrency", 16)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        out.add(f"map.concurrency {shown(concurrency)} must be a whole number >= 1", key)
        concurrency = 16
    label = raw.get("label")
    if label is not None:
        if not isinstance(label, str) or not label.strip():
            out.add("map.label must be a template such as '{{ item.farm_id }}'", key)
            label = None
        else:
            for message in check_templates(label, names=("item", "params")):
                out.add(f"map.label: {message}", key)
    for unknown in sorted(set(raw) - {"over", "concurrency", "label"}):
        out.add(f"unknown map field {unknown!r} (known: concurrency, label, over)", key)
    return MapSpec(over=raw["over"], concurrency=concurrency, label=label)


def _check_graph(steps: list[StepDefinition], params: Mapping[str, Any], out: _Collector) -> None:
    keys = {s.key for s in steps}
    predecessors: dict[str, set[str]] = {k: set() for k in keys}
    for s in steps:
        for nxt in s.next_steps:
            if nxt not in keys:
                out.add(f"next_steps names unknown step {shown(nxt)}", s.key)
            else:
                predecessors[nxt].add(s.key)
            if nxt == s.key:
                out.add("a step cannot follow itself", s.key)
    cycle = find_cycle({s.key: [n for n in s.next_steps if n != s.key] for s in steps})
    if cycle:
        out.add("cycle: " + " -> ".join(cycle))
    for s in steps:
        if s.map is not None and s.map.over not in predecessors[s.key] and s.map.over not in params:
            out.add(
                f"map.over {shown(s.map.over)} is neither an upstream step of this step "
                "nor a key of params",
                s.key,
            )
        elif (
            s.map is not None and s.trigger_rule is TriggerRule.ALWAYS and s.map.over not in params
        ):
            out.add(
                f"map.over {s.map.over!r}: an 'always' step starts without waiting for its "
                "upstream steps, so it has no result to map over (use trigger_rule all_done)",
                s.key,
            )


class _UniqueKeys(yaml.constructor.SafeConstructor):
    """YAML's safe constructor, refusing a key that a mapping repeats (YAML 1.2 forbids it;
    PyYAML would keep the last value silently, so a half-edited step would run unnoticed)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *base" keys may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=True)
            try:
                first = first_line.get(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {shown(key, 80)} (first on line {first})",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


class _UniqueKeyLoader(_UniqueKeys, yaml.SafeLoader):
    """PyYAML's safe loader with :class:`_UniqueKeys`; its errors show the offending line."""


_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = _UniqueKeyLoader
if yaml.__with_libyaml__:

    class _FastUniqueKeyLoader(_UniqueKeys, yaml.CSafeLoader):
        """The same on libyaml's parser, which PyYAML's wheels include: a tenth of the time
        on a large definition (half a second for 500 steps in pure Python)."""

    _LOADER = _FastUniqueKeyLoader


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"duplicate key {shown(key, 80)}")
        document[key] = value
    return document


def _load_yaml(text: str) -> object:
    try:
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError:
        if _LOADER is _UniqueKeyLoader:
            raise
    # libyaml's marks carry no copy of the line: parse again for PyYAML's own message.
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_document(path: Path) -> object:
    """Read a YAML or JSON file; raise DefinitionError naming the file and the line.

    A mapping that repeats a key is refused (naming the key and its lines), in both formats.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionError([Problem(f"cannot read file: {exc.strerror}", str(path))]) from exc
    except UnicodeDecodeError as exc:
        problem = Problem(
            f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}); "
            "save the file as UTF-8",
            str(path),
        )
        raise DefinitionError([problem]) from None
    try:
        if path.suffix == ".json":
            return json.loads(text, object_pairs_hook=_unique_pairs)
        return _load_yaml(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        for mark in (getattr(exc, "context_mark", None), getattr(exc, "problem_mark", None)):
            if mark is not None:  # not "<unicode string>": the file the mark is in
                mark.name = path.name
        problem = Problem(f"not valid {path.suffix[1:].upper()}: {exc}", str(path))
        raise DefinitionError([problem]) from None
    except ValueError as exc:  # from _unique_pairs
        problem = Problem(f"not valid JSON: {exc}", str(path))
        raise DefinitionError([problem]) from None


def definition_files(path: Path) -> list[Path]:
    """A file, or every definition file under a directory (recursively), sorted.

    Hidden directories (``.git``, ``.venv``) and ``__pycache__`` are not entered.
    """
    try:
        if path.is_dir():
            return sorted(
                p
                for p in path.rglob("*")
                if p.suffix in DEFINITION_SUFFIXES
                and p.is_file()
                and not any(_skipped(part) for part in p.relative_to(path).parts[:-1])
            )
        if not path.exists():
            raise DefinitionError([Problem("no such file or directory", str(path))])
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise DefinitionError([Problem(f"cannot read: {exc.strerror}", str(path))]) from None
    return [path]


def _skipped(directory: str) -> bool:
    return directory.startswith(".") or directory == "__pycache__"


def load_definitions(
    path: Path, *, check_runners: bool = True
) -> Iterator[tuple[Path, BatchDefinition | DefinitionError]]:
    """Each definition file under ``path`` with its definition or its problems."""
    for file in definition_files(path):
        try:
            yield (
                file,
                parse_definition(read_document(file), str(file), check_runners=check_runners),
            )
        except DefinitionError as exc:
            yield file, exc


def load_definition(path: Path, *, check_runners: bool = True) -> BatchDefinition:
    return parse_definition(read_document(path), str(path), check_runners=check_runners)
