"""One batch definition per DBMS_SCHEDULER job, and a report of what changed.

A job becomes a batch named after it: its schedule a cron expression in the start date's
time zone (see :mod:`stepline.oracle.calendar`), its action ``stepline.sql`` steps, a chain
its steps with ``next_steps`` and trigger rules. Whatever cannot be carried over exactly is
refused for that job, with the reason and what to do instead; attributes without an
equivalent are listed as dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from stepline.oracle.calendar import (
    CalendarRule,
    Unconvertible,
    parse_calendar,
    rrule_fire_times,
    to_cron,
)
from stepline.oracle.catalog import Catalog, Row
from stepline.scheduling.cron import CronSchedule

__all__ = ["JobConversion", "convert_catalog", "convert_job"]

_UNSUPPORTED_TYPES = ("EXECUTABLE", "EXTERNAL_SCRIPT", "SQL_SCRIPT", "BACKUP_SCRIPT")
_JOB_VARIABLES = re.compile(
    r"\b(job_name|job_owner|job_start|job_subname|job_scheduled_start|window_start|"
    r"window_end|event_message)\b",
    re.IGNORECASE,
)
_RULES = {
    ("AND", "SUCCEEDED"): "all_success",
    ("AND", "FAILED"): "all_failed",
    ("AND", "COMPLETED"): "all_done",
    ("OR", "SUCCEEDED"): "one_success",
    ("OR", "FAILED"): "one_failed",
    ("OR", "COMPLETED"): "one_done",
}
_NUMBER_TYPES = {"NUMBER", "INTEGER", "PLS_INTEGER", "BINARY_INTEGER", "FLOAT", "BINARY_DOUBLE"}


@dataclass
class JobConversion:
    """The outcome for one job: a batch document, or the reasons it was refused."""

    owner: str
    job: str
    batch: str
    document: dict[str, Any] | None = None
    refused: list[str] = field(default_factory=list)
    mapped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    timezone: str | None = None
    fire_times: list[tuple[datetime | None, datetime | None]] = field(default_factory=list)

    @property
    def disable_statement(self) -> str:
        return f"EXEC DBMS_SCHEDULER.DISABLE('{self.owner}.{self.job}');"

    @property
    def disagreements(self) -> int:
        return sum(1 for ours, theirs in self.fire_times if ours != theirs)

    def yaml(self) -> str:
        assert self.document is not None
        header = [
            f"# Imported from the Oracle DBMS_SCHEDULER job {self.owner}.{self.job}",
            "# by `stepline import-oracle`. Once this batch runs in production, disable the job:",
            f"#   {self.disable_statement}",
        ]
        header += [f"# dropped: {d}" for d in self.dropped]
        body = yaml.safe_dump(self.document, sort_keys=False, allow_unicode=True, width=100)
        return "\n".join(header) + "\n" + body


def convert_catalog(
    catalog: Catalog,
    *,
    connection: str = "oracle",
    qualify: bool = False,
    now: datetime | None = None,
    jobs: list[str] | None = None,
) -> list[JobConversion]:
    """Convert every job of ``catalog`` (or the named ``jobs``), one result per job."""
    wanted = {j.upper() for j in jobs} if jobs else None
    return [
        convert_job(catalog, row, connection=connection, qualify=qualify, now=now)
        for row in catalog.jobs
        if wanted is None or row["job_name"] in wanted
    ]


def convert_job(
    catalog: Catalog,
    job: Row,
    *,
    connection: str = "oracle",
    qualify: bool = False,
    now: datetime | None = None,
) -> JobConversion:
    owner, name = str(job.get("owner") or catalog.owner), str(job["job_name"])
    result = JobConversion(owner, name, batch_name(name))
    context = _Context(catalog, owner, connection, qualify, result)
    try:
        schedule = _schedule(context, job)
        steps = _steps(context, job)
    except Unconvertible as exc:
        result.refused.append(f"{exc.reason}. Instead: {exc.instead}.")
        return result
    document: dict[str, Any] = {"name": result.batch}
    if job.get("comments"):
        document["description"] = str(job["comments"])
        result.mapped.append("comments -> description")
    if schedule is not None:
        cron, timezone, rule, start = schedule
        result.timezone = timezone
        if _flag(job.get("enabled"), True):
            document["cron"] = cron
            result.mapped.append(f"repeat_interval -> cron {cron!r} in {timezone}")
        else:
            result.mapped.append(f'enabled=FALSE -> no cron (add `cron: "{cron}"` to schedule it)')
        document["timezone"] = timezone
        result.fire_times = _side_by_side(rule, cron, start, timezone, now)
    document["max_active_instances"] = 1
    document["steps"] = steps
    _report_attributes(job, result, single_step=len(steps) == 1, document=document)
    result.document = document
    return result


def batch_name(job: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "_", job.lower())[:200]


@dataclass
class _Context:
    catalog: Catalog
    owner: str
    connection: str
    qualify: bool
    result: JobConversion


# -- schedule ------------------------------------------------------------------------------


def _schedule(context: _Context, job: Row) -> tuple[str, str, CalendarRule, datetime] | None:
    interval, start_text, region = job.get("repeat_interval"), job.get("start_date"), None
    region = job.get("start_timezone")
    if job.get("schedule_name") and not interval:
        named = context.catalog.schedule(job.get("schedule_owner"), str(job["schedule_name"]))
        if named is None:
            raise Unconvertible(
                f"the job uses schedule {job['schedule_name']}, which is not in the export",
                "export the schedule's owner too, or write the cron by hand",
            )
        if named.get("schedule_type") not in (None, "CALENDAR"):
            raise Unconvertible(
                f"schedule {job['schedule_name']} is of type {named['schedule_type']}",
                "only calendaring schedules become cron; trigger the batch from the "
                "event's source (HTTP API) instead",
            )
        interval = named.get("repeat_interval")
        start_text, region = named.get("start_date"), named.get("start_timezone")
        context.result.mapped.append(f"schedule {job['schedule_name']} -> cron")
    schedule_type = job.get("schedule_type")
    if schedule_type in ("EVENT", "WINDOW", "WINDOW_GROUP", "FILE_WATCHER"):
        raise Unconvertible(
            f"schedule type {schedule_type} runs on events or windows, not a calendar",
            "trigger the batch through the HTTP API from the event's source",
        )
    if not interval:
        context.result.mapped.append("no repeat_interval -> no cron (run with `stepline run`)")
        return None
    rule = parse_calendar(str(interval))
    if not start_text:
        return _without_start(context, rule)
    timezone, start = _start(str(start_text), region)
    return to_cron(rule, start), timezone, rule, start


def _without_start(
    context: _Context, rule: CalendarRule
) -> tuple[str, str, CalendarRule, datetime]:
    """A job without start_date: convertible if the rule names every field itself (two very
    different start dates give the same cron) and the scheduler's time zone is known."""
    probes = [datetime(2001, 1, 1, 0, 0, 0), datetime(2002, 7, 17, 13, 47, 29)]
    crons = {to_cron(rule, probe) for probe in probes}
    default = context.catalog.default_timezone
    if len(crons) > 1 or not default:
        raise Unconvertible(
            "the job has no start_date, from which Oracle takes the time zone and the "
            "fields the rule leaves out",
            "set a start_date on the job (or its schedule), or name every field "
            "(BYHOUR, BYMINUTE, BYSECOND...) in the rule, and export again",
        )
    timezone = _zone_name(str(default), probes[0])
    context.result.mapped.append(f"no start_date: time zone {timezone} (DEFAULT_TIMEZONE)")
    return crons.pop(), timezone, rule, probes[0]


def _start(text: str, region: str | None) -> tuple[str, datetime]:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Unconvertible(f"start_date {text!r} is not an ISO timestamp", "fix it") from None
    timezone = _zone_name(region, moment)
    return timezone, moment.astimezone(ZoneInfo(timezone)).replace(tzinfo=None)


def _zone_name(region: str | None, moment: datetime) -> str:
    """An IANA name for ``region``, or for a fixed offset (``region`` or ``moment``'s)."""
    if region and region.upper() not in ("UNKNOWN", ""):
        try:
            ZoneInfo(region)
            return region
        except (ZoneInfoNotFoundError, ValueError):
            pass
    offset = _offset(region) if region else None
    offset = offset if offset is not None else moment.utcoffset()
    if offset is None:
        raise Unconvertible(
            f"no time zone (a start_date without offset, scheduler time zone {region!r})",
            "give the job's start_date a region such as Asia/Seoul",
        )
    hours, rest = divmod(int(offset.total_seconds()), 3600)
    if rest:
        raise Unconvertible(
            f"the time zone is a fixed offset of {offset}, which no whole-hour Etc/GMT zone holds",
            "give the job's start_date a region name (e.g. Asia/Kolkata)",
        )
    # POSIX-style names: Etc/GMT-9 is nine hours ahead of UTC.
    return "UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"


def _offset(text: str) -> timedelta | None:
    match = re.fullmatch(r"\s*([+-])(\d{1,2}):(\d{2})\s*", text)
    if match is None:
        return None
    sign = -1 if match.group(1) == "-" else 1
    return sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3)))


def _side_by_side(
    rule: CalendarRule, cron: str, start: datetime, timezone: str, now: datetime | None
) -> list[tuple[datetime | None, datetime | None]]:
    zone = ZoneInfo(timezone)
    after = max(now or datetime.now(UTC), start.replace(tzinfo=zone))
    ours = [t.astimezone(zone) for t in CronSchedule.parse(cron, timezone).fire_times(after, 10)]
    theirs = rrule_fire_times(rule, start, timezone, after, 10)
    pairs: list[tuple[datetime | None, datetime | None]] = []
    for i in range(max(len(ours), len(theirs))):
        pairs.append((ours[i] if i < len(ours) else None, theirs[i] if i < len(theirs) else None))
    return pairs


# -- actions -------------------------------------------------------------------------------


def _steps(context: _Context, job: Row) -> list[dict[str, Any]]:
    catalog = context.catalog
    kind, action = job.get("job_type"), job.get("job_action")
    args = catalog.args_of_job(str(job["job_name"]))
    program_args: list[Row] = []
    if job.get("program_name"):
        program = catalog.program(job.get("program_owner"), str(job["program_name"]))
        if program is None:
            raise Unconvertible(
                f"the job runs program {job['program_name']}, which is not in the export",
                "export the program's owner too",
            )
        kind, action = program.get("program_type"), program.get("program_action")
        program_args = catalog.args_of_program(str(program["owner"]), str(program["program_name"]))
        context.result.mapped.append(f"program {program['program_name']} -> step")
    if kind == "CHAIN":
        return _chain(context, str(action))
    step = _action_step(context, kind, action, args, program_args, "run")
    return [step]


def _action_step(
    context: _Context,
    kind: Any,
    action: Any,
    job_args: list[Row],
    program_args: list[Row],
    key: str,
) -> dict[str, Any]:
    if kind in _UNSUPPORTED_TYPES:
        raise Unconvertible(
            f"job type {kind} runs a program on the database host through the scheduler",
            "write a Python runner step (e.g. subprocess) for it",
        )
    if not action:
        raise Unconvertible(f"the {kind or 'job'} has no action", "check the job in Oracle")
    if kind == "STORED_PROCEDURE":
        values = _procedure_args(job_args, program_args)
        procedure = _qualified(context, str(action))
        return _call(context, key, procedure, values)
    if kind == "PLSQL_BLOCK":
        text = str(action).strip()
        if _JOB_VARIABLES.search(text):
            raise Unconvertible(
                "the PL/SQL block uses the scheduler's job variables (job_name, job_start...)",
                "pass the values as params (e.g. {{ params... }}) in a stepline.sql step",
            )
        call = _simple_call(text)
        if call is not None:
            context.result.mapped.append("PL/SQL block calling one procedure -> call_procedure")
            return _call(context, key, _qualified(context, call[0]), call[1])
        block = text if re.match(r"(?is)\s*(declare|begin)\b", text) else f"BEGIN {text} END;"
        context.result.mapped.append("PL/SQL block -> stepline.sql:run_block")
        return {
            "key": key,
            "runner": "stepline.sql:run_block",
            "with": {"connection": context.connection, "block": block},
        }
    raise Unconvertible(f"job type {kind} is not known", "write the step by hand")


def _call(context: _Context, key: str, procedure: str, args: list[Any]) -> dict[str, Any]:
    return {
        "key": key,
        "runner": "stepline.sql:call_procedure",
        "with": {"connection": context.connection, "procedure": procedure, "args": args},
    }


def _qualified(context: _Context, name: str) -> str:
    name = name.strip()
    return f"{context.owner}.{name}" if context.qualify and "." not in name else name


def _procedure_args(job_args: list[Row], program_args: list[Row]) -> list[Any]:
    by_position: dict[int, Any] = {}
    types: dict[int, str] = {}
    for arg in program_args:
        position = int(arg["argument_position"])
        types[position] = str(arg.get("argument_type") or "").upper()
        if _flag(arg.get("out_argument"), False):
            raise Unconvertible(
                "the program has an OUT argument", "write the call with `out:` by hand"
            )
        by_position[position] = arg.get("default_value")
    for arg in job_args:
        position = int(arg["argument_position"])
        by_position[position] = arg.get("value")
        types.setdefault(position, str(arg.get("argument_type") or "").upper())
    values: list[Any] = []
    for position in range(1, max(by_position, default=0) + 1):
        value, kind = by_position.get(position), types.get(position, "")
        if value is not None and kind in _NUMBER_TYPES:
            values.append({"value": value, "type": "number"})
        elif value is not None and kind in ("DATE", "TIMESTAMP"):
            values.append({"value": value, "type": kind.lower()})
        else:
            values.append(value)
    return values


_LITERAL = re.compile(r"\s*('(?:[^']|'')*'|[+-]?\d+(?:\.\d+)?|NULL)\s*(?:,|$)", re.IGNORECASE)


def _simple_call(block: str) -> tuple[str, list[Any]] | None:
    """``BEGIN proc('a', 1, NULL); END;`` (or without BEGIN/END) -> (proc, ['a', 1, None])."""
    match = re.fullmatch(
        r"(?is)\s*(?:begin\s+)?([A-Za-z_][\w$#]*(?:\.[A-Za-z_][\w$#]*){0,2})\s*"
        r"(?:\((.*)\))?\s*;\s*(?:end\s*;)?\s*",
        block,
    )
    if match is None or (
        block.strip().lower().startswith("begin") is not bool(re.search(r"(?i)end\s*;\s*$", block))
    ):
        return None
    text = (match.group(2) or "").strip()
    values: list[Any] = []
    position = 0
    while position < len(text):
        literal = _LITERAL.match(text, position)
        if literal is None:
            return None
        token = literal.group(1)
        if token.upper() == "NULL":
            values.append(None)
        elif token.startswith("'"):
            values.append(token[1:-1].replace("''", "'"))
        else:
            values.append({"value": token, "type": "number"})
        position = literal.end()
    return match.group(1), values


# -- chains --------------------------------------------------------------------------------

_CONDITION = re.compile(
    r"^\s*:?\"?([A-Za-z_][\w$#]*)\"?(?:\.state\s*=\s*'(\w+)'|\s+(\w+))\s*$", re.IGNORECASE
)


def _chain(context: _Context, name: str) -> list[dict[str, Any]]:
    catalog, owner = context.catalog, context.owner
    chain_owner, chain = name.split(".", 1) if "." in name else (owner, name)
    chain_owner, chain = chain_owner.strip('"').upper(), chain.strip('"').upper()
    if not catalog.has_chain(chain_owner, chain):
        raise Unconvertible(f"chain {name} is not in the export", "export its owner too")
    steps: dict[str, dict[str, Any]] = {}
    for row in catalog.chain_steps_of(chain_owner, chain):
        if row.get("step_type") not in (None, "PROGRAM"):
            raise Unconvertible(
                f"chain step {row['step_name']} is of type {row['step_type']}",
                "only program steps convert; write event waits or subchains as their own batches",
            )
        program = catalog.program(row.get("program_owner"), str(row["program_name"]))
        if program is None:
            raise Unconvertible(
                f"chain step {row['step_name']} runs program {row['program_name']}, which is "
                "not in the export",
                "export the program's owner too",
            )
        key = _step_key(str(row["step_name"]))
        steps[row["step_name"]] = _action_step(
            context,
            program.get("program_type"),
            program.get("program_action"),
            [],
            catalog.args_of_program(str(program["owner"]), str(program["program_name"])),
            key,
        )
    started: dict[str, str] = {}
    for rule in catalog.chain_rules_of(chain_owner, chain):
        condition, action = str(rule.get("condition") or ""), str(rule.get("action") or "")
        verb, _, targets = action.strip().partition(" ")
        if verb.upper() == "END":
            context.result.dropped.append(
                f"chain rule {rule['rule_name']} ({condition} -> {action}): an instance ends "
                "when its last step is final"
            )
            continue
        if verb.upper() != "START":
            raise Unconvertible(
                f"chain rule {rule['rule_name']} action {action!r} is not START or END",
                "write the flow by hand",
            )
        predecessors, trigger = _condition(str(rule["rule_name"]), condition, steps)
        for target in (t.strip().strip('"').upper() for t in targets.split(",") if t.strip()):
            if target not in steps:
                raise Unconvertible(
                    f"chain rule {rule['rule_name']} starts unknown step {target}", "fix the chain"
                )
            if target in started:
                raise Unconvertible(
                    f"step {target} is started by two rules ({started[target]} and "
                    f"{rule['rule_name']}): Oracle runs it when either holds",
                    "merge them into one rule whose condition maps to one trigger rule",
                )
            started[target] = str(rule["rule_name"])
            for predecessor in predecessors:
                steps[predecessor].setdefault("next_steps", []).append(steps[target]["key"])
            if trigger != "all_success":
                steps[target]["trigger_rule"] = trigger
    for step_name in [s for s in steps if s not in started]:
        context.result.dropped.append(
            f"chain step {step_name}: no rule starts it, so Oracle never runs it"
        )
        del steps[step_name]
        for step in steps.values():
            if _step_key(step_name) in step.get("next_steps", []):
                step["next_steps"].remove(_step_key(step_name))
    if not steps:
        raise Unconvertible(f"chain {chain} has no step that a rule starts", "check the chain")
    context.result.mapped.append(f"chain {chain} -> {len(steps)} steps with next_steps")
    return list(steps.values())


def _condition(rule: str, condition: str, steps: dict[str, Any]) -> tuple[list[str], str]:
    text = condition.strip()
    if text.upper() in ("TRUE", "1=1"):
        return [], "all_success"
    if "(" in text or re.search(r"\bNOT\b", text, re.I):
        raise Unconvertible(
            f"chain rule {rule} condition {condition!r} uses parentheses or NOT",
            "write the trigger rule by hand",
        )
    joins = {j.upper() for j in re.findall(r"\b(AND|OR)\b", text, re.I)}
    if len(joins) > 1:
        raise Unconvertible(
            f"chain rule {rule} mixes AND and OR in {condition!r}; no trigger rule matches",
            "split the step, or write the trigger rule by hand",
        )
    join = joins.pop() if joins else "AND"
    names: list[str] = []
    states: set[str] = set()
    for part in re.split(r"\b(?:AND|OR)\b", text, flags=re.I):
        match = _CONDITION.match(part)
        if match is None:
            raise Unconvertible(
                f"chain rule {rule} condition part {part.strip()!r} is not `STEP STATE`",
                "write the trigger rule by hand",
            )
        step, state = match.group(1).upper(), (match.group(2) or match.group(3)).upper()
        if step not in steps:
            raise Unconvertible(f"chain rule {rule} names unknown step {step}", "fix the chain")
        names.append(step)
        states.add(state)
    if len(states) != 1 or (join, next(iter(states))) not in _RULES:
        raise Unconvertible(
            f"chain rule {rule} condition {condition!r} combines states "
            f"{', '.join(sorted(states))}; trigger rules need one of SUCCEEDED, FAILED or "
            "COMPLETED for all named steps",
            "write the trigger rule by hand",
        )
    return names, _RULES[(join, states.pop())]


def _step_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name.lower())


# -- attributes ----------------------------------------------------------------------------


def _report_attributes(
    job: Row, result: JobConversion, *, single_step: bool, document: dict[str, Any]
) -> None:
    if job.get("max_runs") not in (None, ""):
        result.dropped.append(
            f"max_runs={job['max_runs']}: a batch has no run limit; remove its cron after the "
            "last run"
        )
    if job.get("max_failures") not in (None, ""):
        result.dropped.append(
            f"max_failures={job['max_failures']}: a batch is not disabled after failures; "
            "alert on failure instead (alerts: or a one_failed step)"
        )
    if _flag(job.get("auto_drop"), False):
        result.dropped.append("auto_drop=TRUE: a batch is kept after it runs")
    job_class = job.get("job_class")
    if job_class and str(job_class).upper() != "DEFAULT_JOB_CLASS":
        result.dropped.append(
            f"job_class={job_class}: resource consumer group and logging have no equivalent"
        )
    if job.get("end_date"):
        result.dropped.append(f"end_date={job['end_date']}: remove the batch's cron then")
    duration = _duration(job.get("max_run_duration"))
    if duration is not None:
        if single_step:
            document["steps"][0]["timeout"] = f"{int(duration.total_seconds())}s"
            result.mapped.append("max_run_duration -> step timeout")
        else:
            result.dropped.append("max_run_duration: set a timeout on the chain's steps by hand")


def _duration(value: Any) -> timedelta | None:
    """``+000 01:30:00.000000`` (INTERVAL DAY TO SECOND as text) -> timedelta."""
    if not value:
        return None
    match = re.fullmatch(r"\s*\+?(\d+)\s+(\d+):(\d+):(\d+)(?:\.\d+)?\s*", str(value))
    if match is None:
        return None
    days, hours, minutes, seconds = (int(g) for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def _flag(value: Any, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().upper() in ("TRUE", "Y", "YES", "1")
