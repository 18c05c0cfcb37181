"""Table tests for stepline.core.expressions: every allowed construct, every rejected one."""

from __future__ import annotations

import ast
import builtins
from types import MappingProxyType
from typing import Any

import pytest

from stepline.core.expressions import (
    ExpressionError,
    check_expression,
    evaluate,
    evaluate_condition,
)

NAMESPACE: dict[str, Any] = {
    "params": {"period": "WEEK", "limit": 5, "ratio": 0.5, "tags": ["a", "b"], "empty": None},
    # The runner contract makes results a read-only mapping, not a dict.
    "results": MappingProxyType(
        {
            "check": {"ok": True, "rows": 3},
            "collect": [10, 20, 30],
            "collect-stats": {"rows": 7},
            "pair": (1, 2),
        }
    ),
    "item": {"lat": 37.5, "farm": {"id": "F1"}},
}

ALLOWED = [
    # Constants and aliases.
    ("'WEEK'", "WEEK"),
    ('"double"', "double"),
    ("42", 42),
    ("1.5", 1.5),
    ("True", True),
    ("False", False),
    ("None", None),
    ("true", True),
    ("false", False),
    ("null", None),
    # Names, attributes on mappings, subscripts.
    ("params", NAMESPACE["params"]),
    ("item.lat", 37.5),
    ("item.farm.id", "F1"),
    ("results.check.rows", 3),
    ("params['period']", "WEEK"),
    ('results["collect-stats"].rows', 7),
    ("results.collect[0]", 10),
    ("results.collect[-1]", 30),
    ("results.pair[1]", 2),
    ("params.tags[params.limit - 4]", "b"),
    ("params.period[0]", "W"),
    # Comparisons, including chains.
    ("params.period == 'WEEK'", True),
    ("params.period != 'WEEK'", False),
    ("params.limit < 5", False),
    ("params.limit <= 5", True),
    ("params.limit > 4", True),
    ("params.limit >= 6", False),
    ("1 < params.limit <= 5", True),
    ("'a' in params.tags", True),
    ("'c' not in params.tags", True),
    ("'check' in results", True),
    ("'missing' in results", False),
    ("params.empty is None", True),
    ("params.empty is not null", False),
    # Boolean operators return the deciding operand, as in Python.
    ("results.check.ok and params.limit", 5),
    ("params.empty or 'default'", "default"),
    ("0 and 1 / 0", 0),
    ("1 or 1 / 0", 1),
    ("not results.check.ok", False),
    ("not params.empty", True),
    # Arithmetic.
    ("-params.limit", -5),
    ("params.limit + 1", 6),
    ("params.limit - 7", -2),
    ("params.limit * params.ratio", 2.5),
    ("params.limit / 2", 2.5),
    ("params.limit % 3", 2),
    ("params.period + '-1'", "WEEK-1"),
    ("params.tags + ['c']", ["a", "b", "c"]),
    ("'ab' * 2", "abab"),
    # List and tuple literals.
    ("[1, params.limit]", [1, 5]),
    ("(1, 'x')", (1, "x")),
    ("[]", []),
    ("()", ()),
    ("1, 2", (1, 2)),
    # Whitelisted functions.
    ("len(results.collect)", 3),
    ("int('7')", 7),
    ("float('1.5')", 1.5),
    ("str(params.limit)", "5"),
    ("bool(0)", False),
    ("any([0, params.limit])", True),
    ("all([1, params.empty])", False),
    ("min(results.collect)", 10),
    ("max(3, params.limit)", 5),
    ("sum(results.collect)", 60),
    # Layout: spaces, several lines, a trailing comment.
    ("  params.limit  ", 5),
    ("results.check.ok\n  and params.limit > 1\n", True),
    ("params.limit  # how many rows", 5),
]


@pytest.mark.parametrize(("text", "expected"), ALLOWED, ids=[t for t, _ in ALLOWED])
def test_allowed_constructs_evaluate_like_python(text: str, expected: Any) -> None:
    check_expression(text)
    value = evaluate(text, NAMESPACE)
    assert value == expected
    assert type(value) is type(expected)


REJECTED = [
    ("__import__('os')", "call of __import__() is not allowed"),
    ("__import__('os').system('true')", "call of __import__('os').system() is not allowed"),
    ("params.__class__", "dunder attribute '__class__' is not allowed"),
    ("().__class__.__bases__", "dunder attribute"),
    ("results.check.__len__()", "call of results.check.__len__()"),
    ("__builtins__", "dunder name '__builtins__' is not allowed"),
    ("lambda: 1", "lambda is not allowed"),
    ("[t for t in params.tags]", "list comprehension is not allowed"),
    ("t for t in params.tags", "comprehension is not allowed"),
    ("{t for t in params.tags}", "set comprehension is not allowed"),
    ("{t: 1 for t in params.tags}", "dict comprehension is not allowed"),
    ("any(t for t in params.tags)", "generator expression is not allowed"),
    ("1 if true else 2", "conditional expression (x if c else y) is not allowed"),
    ("{'a': 1}", "dict literal is not allowed"),
    ("{1}", "set literal is not allowed"),
    ("f'{params}'", "f-string is not allowed"),
    ("(x := 1)", "assignment (:=) is not allowed"),
    ("len(*params.tags)", "unpacking (*x) is not allowed"),
    ("results.collect[0:2]", "slice is not allowed"),
    ("2 ** 3", "operator ** is not allowed"),
    ("7 // 2", "operator // is not allowed"),
    ("1 << 2", "operator << is not allowed"),
    ("1 & 1", "operator & is not allowed"),
    ("~1", "operator ~ is not allowed"),
    ("+1", "operator unary + is not allowed"),
    ("open('/etc/passwd')", "call of open() is not allowed"),
    ("eval('1')", "call of eval() is not allowed"),
    ("getattr(params, 'period')", "call of getattr() is not allowed"),
    ("params.get('period')", "call of params.get() is not allowed"),
    ("params.period.upper()", "call of params.period.upper() is not allowed"),
    ("[len][0](params)", "call of [len][0]() is not allowed"),
    ("len", "function 'len' without a call is not allowed"),
    ("max(params.tags, key=len)", "keyword argument in max() is not allowed"),
    ("b'x'", "constant b'x' is not allowed"),
    ("1j", "constant 1j is not allowed"),
    ("...", "constant Ellipsis is not allowed"),
    ("params ==", "invalid syntax"),
    ("params.limit) or (1", "does not match"),
    ("params.limit] + [1", "unbalanced brackets"),
    ("", "it is empty"),
    ("   ", "it is empty"),
    ("-" * 100_000 + "1", "nested too deeply"),
    ("not " * 3000 + "1", "nested too deeply"),
]


@pytest.mark.parametrize(("text", "message"), REJECTED, ids=[t[:40] for t, _ in REJECTED])
def test_rejected_constructs_name_the_construct(text: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=r"^expression ") as checked:
        check_expression(text)
    assert message in str(checked.value)
    with pytest.raises(ExpressionError) as evaluated:
        evaluate(text, NAMESPACE)
    assert str(evaluated.value) == str(checked.value)


def test_allowed_function_list_is_in_the_message() -> None:
    with pytest.raises(ExpressionError, match="allowed functions: all, any, bool, float, int"):
        check_expression("exec('1')")


def test_non_string_expression_is_rejected() -> None:
    with pytest.raises(ExpressionError, match="must be a string"):
        check_expression(5)  # type: ignore[arg-type]


MISSING = [
    ("results.check.count", "results.check.count: 'count' is not in results.check"),
    ("results.missing.count", "results.missing: 'missing' is not in results"),
    ("params['nope'] == 1", "params['nope']: 'nope' is not in params"),
    ("results.collect[3]", "results.collect[3]: index 3 is out of range for results.collect"),
    ("item.farm.name", "item.farm.name: 'name' is not in item.farm"),
    ("params.empty.x", "params.empty.x: needs a mapping, but params.empty is None"),
    ("params.period.upper", "params.period.upper: needs a mapping, but params.period is a str"),
    ("results.collect.first", "results.collect.first: needs a mapping, but results.collect is a"),
    ("params.limit[0]", "params.limit[0]: needs a mapping or a list, but params.limit is an int"),
    ("results.collect['a']", "results.collect['a']: a list index must be an integer, got a str"),
    ("results.collect[true]", "results.collect[true]: a list index must be an integer, got a bool"),
    ("params[params.tags]", "params[params.tags]: a list cannot be a mapping key"),
    ("undefined > 1", "undefined: 'undefined' is not defined; available names: item, params"),
]


@pytest.mark.parametrize(("text", "message"), MISSING, ids=[t for t, _ in MISSING])
def test_missing_keys_name_the_full_path(text: str, message: str) -> None:
    check_expression(text, names=None)
    with pytest.raises(ExpressionError) as raised:
        evaluate(text, NAMESPACE)
    assert str(raised.value).startswith(message)


def test_item_outside_a_mapped_step_is_not_defined() -> None:
    without_item: dict[str, Any] = {"params": {}, "results": {}}
    with pytest.raises(ExpressionError, match=r"^item: 'item' is not defined; .*params, results"):
        evaluate("item.lat > 0", without_item)


FAILING_OPERATIONS = [
    ("params.period + 1", "params.period + 1: "),
    ("params.limit / 0", "params.limit / 0: division by zero"),
    ("int('x')", "int('x'): invalid literal"),
    ("len(params.limit)", "len(params.limit): "),
    ("min([])", "min([]): "),
    ("-params.period", "-params.period: bad operand type"),
    ("params.limit < 'a'", "params.limit < 'a': '<' not supported"),
    ("'a' in params.limit", "'a' in params.limit: "),
    ("'%d' % 1", "% is only allowed on numbers"),
    ("'ab' * 100000", "the result would be longer than 100000"),
    ("100000 * [1, 2]", "the result would be longer than 100000"),
]


@pytest.mark.parametrize(
    ("text", "message"), FAILING_OPERATIONS, ids=[t for t, _ in FAILING_OPERATIONS]
)
def test_failing_operations_raise_expression_error_with_the_operation(
    text: str, message: str
) -> None:
    with pytest.raises(ExpressionError) as raised:
        evaluate(text, NAMESPACE)
    assert message in str(raised.value)


def test_check_expression_rejects_unknown_names_before_any_run() -> None:
    with pytest.raises(ExpressionError, match=r"unknown name 'paramz' .*item, params, results"):
        check_expression("paramz.period == 'WEEK'")
    with pytest.raises(ExpressionError, match="unknown name 'item'"):
        check_expression("item.lat > 0", names=("params", "results"))
    check_expression("item.lat > 0")
    check_expression("anything.goes", names=None)


def test_function_names_and_aliases_are_not_namespace_names() -> None:
    check_expression("len(params) > 0 and true", names=("params",))


def test_evaluate_condition_returns_a_bool() -> None:
    assert evaluate_condition("results.check.rows", NAMESPACE) is True
    assert evaluate_condition("params.tags and params.empty", NAMESPACE) is False
    assert evaluate_condition("[]", NAMESPACE) is False
    assert evaluate_condition("null", NAMESPACE) is False
    assert evaluate_condition("True", NAMESPACE) is True


def test_values_from_the_namespace_are_data_never_code() -> None:
    namespace = {"params": {"x": "__import__('os').system('false')"}}
    assert evaluate("params.x", namespace) == "__import__('os').system('false')"


def test_evaluation_never_calls_eval_or_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval/exec must not be used")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert evaluate("params.limit * 3 == 15 and 'x' not in params.tags # fresh", NAMESPACE)


def test_an_expression_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_parse = ast.parse

    def counting_parse(source: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(source)
        return real_parse(source, *args, **kwargs)

    monkeypatch.setattr(ast, "parse", counting_parse)
    text = "results.check.rows >= 3 and params.period == 'WEEK'  # parsed once"
    for limit in range(5):
        namespace = {**NAMESPACE, "params": {**NAMESPACE["params"], "limit": limit}}
        assert evaluate_condition(text, namespace)
    assert len(calls) == 1
