"""``{{ ... }}`` templates in a step's ``with`` arguments, resolved just before the runner call.

The inside of a template is an expression (see :mod:`stepline.core.expressions`):
``{{ params.period }}``, ``{{ results.check.count }}``, ``{{ item.lat }}``,
``{{ len(results.farms) }}``.

* A string that is exactly one template (``"{{ params.limit }}"``; spaces inside the braces are
  fine) becomes the value itself, with its type: an int stays an int, a list stays a list.
* A string with text around its templates stays a string: each value is rendered with
  ``str()``, except ``None``, which renders as ``""`` so an absent optional value leaves no
  ``"None"`` behind.
* Dicts, lists and tuples are walked recursively and always copied, so a runner that mutates its
  arguments cannot change the definition. Dict keys are not templated.

A template ends at the first ``}}``. Values produced by templates are never resolved again: a
param whose value contains ``{{`` is data, not a template.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterator, Mapping
from typing import Any, NamedTuple

from stepline.core.expressions import NAMES, ExpressionError, check_expression, evaluate
from stepline.errors import shown

__all__ = ["TemplateError", "check_templates", "has_templates", "resolve"]

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


class TemplateError(ValueError):
    """A template that does not parse, or whose expression fails on the given namespace."""


class _Slot(NamedTuple):
    source: str
    expression: str


def resolve(value: Any, namespace: Mapping[str, Any]) -> Any:
    """``value`` with every template replaced; raises TemplateError naming the template."""
    if isinstance(value, str):
        # Most arguments are plain strings: skip the parser cache for them.
        return _resolve_string(value, namespace) if "{{" in value else value
    if isinstance(value, Mapping):
        return {key: resolve(item, namespace) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, namespace) for item in value]
    if isinstance(value, tuple):
        return tuple(resolve(item, namespace) for item in value)
    return value


def has_templates(value: Any) -> bool:
    """Whether any string inside ``value`` contains a template, so resolving can be skipped."""
    return any("{{" in text for _, text in _strings(value, ""))


def check_templates(value: Any, *, names: Collection[str] | None = NAMES) -> list[str]:
    """Problems with the templates inside ``value``, each located like ``args[0]``; [] if none.

    ``names`` is passed to :func:`~stepline.core.expressions.check_expression`.
    """
    problems: list[str] = []
    for where, text in _strings(value, ""):
        if "{{" not in text:
            continue
        try:
            slots = [part for part in _parse(text) if isinstance(part, _Slot)]
        except TemplateError as exc:
            problems.append(_at(where, str(exc)))
            continue
        for slot in slots:
            try:
                check_expression(slot.expression, names=names)
            except ExpressionError as exc:
                problems.append(_at(where, f"template {shown(slot.source)}: {exc}"))
    return problems


def _resolve_string(text: str, namespace: Mapping[str, Any]) -> Any:
    parts = _parse(text)
    if len(parts) == 1 and isinstance(parts[0], _Slot):
        return _evaluate(parts[0], namespace)
    return "".join(
        part if isinstance(part, str) else _render(_evaluate(part, namespace)) for part in parts
    )


def _evaluate(slot: _Slot, namespace: Mapping[str, Any]) -> Any:
    try:
        return evaluate(slot.expression, namespace)
    except ExpressionError as exc:
        raise TemplateError(f"template {shown(slot.source)}: {exc}") from None


def _render(value: Any) -> str:
    return "" if value is None else str(value)


@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> tuple[str | _Slot, ...]:
    """Split ``text`` into literal strings and templates, in order; empty literals are dropped."""
    parts: list[str | _Slot] = []
    position = 0
    for match in _TEMPLATE.finditer(text):
        parts.append(text[position : match.start()])
        parts.append(_Slot(match.group(0), match.group(1).strip()))
        position = match.end()
    parts.append(text[position:])
    for part in parts:
        if isinstance(part, str) and "{{" in part:
            raise TemplateError(f"{shown(text)}: '{{{{' without a closing '}}}}'")
    return tuple(part for part in parts if part)


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string inside ``value`` with its location (``args[0]``, ``options.url``)."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")


def _at(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message
