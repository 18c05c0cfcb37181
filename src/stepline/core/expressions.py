"""Safe expressions over params and upstream results, for ``condition`` and ``{{ }}`` templates.

The text is parsed with :mod:`ast` and interpreted from a whitelist; nothing is ever passed to
``eval``. Allowed:

* constants (str, int, float, bool, None) and the aliases ``true``, ``false``, ``null``;
* the names in the namespace (``params``, ``results``, ``item`` for mapped steps);
* ``a.b`` and ``a["b"]`` on mappings (both are key lookups), ``a[0]`` on lists, tuples, strings.
  Step keys that are not identifiers need the subscript form: ``results["collect-stats"]``;
* ``== != < <= > >= in, not in, is, is not``, ``and or not``, unary ``-``,
  ``+ - * /`` and ``%`` on numbers, list and tuple literals;
* calls of ``len int float str bool any all min max sum`` with positional arguments.

Everything else (lambdas, comprehensions, ``x if c else y``, slices, dict literals, ``**``,
keyword arguments, dunder names, attributes of non-mappings, other calls) is rejected when the
text is compiled, so a definition can be validated before any instance runs. An expression may
span several lines and end with a ``# comment``.
"""

from __future__ import annotations

import ast
import functools
import operator
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

__all__ = ["NAMES", "ExpressionError", "check_expression", "evaluate", "evaluate_condition"]

NAMES: tuple[str, ...] = ("item", "params", "results")
"""Names a step's expressions may use; ``item`` exists only in mapped steps."""

_ALIASES: dict[str, Any] = {"true": True, "false": False, "null": None}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    f.__name__: f for f in (len, int, float, str, bool, any, all, min, max, sum)
}
_COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_CONSTRUCTS: dict[type[ast.AST], str] = {
    ast.Lambda: "lambda",
    ast.ListComp: "list comprehension",
    ast.SetComp: "set comprehension",
    ast.DictComp: "dict comprehension",
    ast.GeneratorExp: "generator expression",
    ast.IfExp: "conditional expression (x if c else y)",
    ast.Dict: "dict literal",
    ast.Set: "set literal",
    ast.JoinedStr: "f-string",
    ast.NamedExpr: "assignment (:=)",
    ast.Starred: "unpacking (*x)",
    ast.Slice: "slice",
}
_OPERATOR_SYMBOLS: dict[type[ast.AST], str] = {
    ast.Pow: "**",
    ast.FloorDiv: "//",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.Invert: "~",
    ast.UAdd: "unary +",
}

_Run = Callable[[Mapping[str, Any]], Any]


class ExpressionError(ValueError):
    """An expression that is not allowed, does not parse, or fails on the given namespace."""


class _Compiled(NamedTuple):
    run: _Run
    names: frozenset[str]


def check_expression(text: str, *, names: Collection[str] | None = NAMES) -> None:
    """Raise ExpressionError unless ``text`` parses and uses only allowed constructs.

    ``names`` lists the names the expression may use (``None``: do not check names); pass
    ``("params", "results")`` for a step that is not mapped.
    """
    unknown = sorted(_compile(text).names - set(names)) if names is not None else []
    if unknown:
        available = ", ".join(sorted(names or ())) or "none"
        raise ExpressionError(
            f"expression {text!r}: unknown name {unknown[0]!r} (available: {available})"
        )


def evaluate(text: str, namespace: Mapping[str, Any]) -> Any:
    """The value of ``text`` over ``namespace``; raises ExpressionError naming what failed."""
    try:
        return _compile(text).run(namespace)
    except RecursionError:
        raise ExpressionError(f"expression {text!r}: nested too deeply") from None


def evaluate_condition(text: str, namespace: Mapping[str, Any]) -> bool:
    """Whether a step's ``condition`` holds (Python truthiness of its value)."""
    return bool(evaluate(text, namespace))


@functools.lru_cache(maxsize=1024)
def _compile(text: str) -> _Compiled:
    if not isinstance(text, str):
        raise ExpressionError(f"an expression must be a string, got {text!r}")
    if not text.strip():
        raise ExpressionError(f"expression {text!r}: it is empty")
    try:
        # "[text\n]" lets an expression span lines and end with a comment. Text that closes our
        # bracket early ("a] + [b") cannot leave a list as the whole body, so it is caught.
        body = ast.parse(f"[{text}\n]", mode="eval").body
        if isinstance(body, ast.ListComp):
            raise _NotAllowed("comprehension")
        if not isinstance(body, ast.List):
            raise SyntaxError("unbalanced brackets")
        root = body.elts[0] if len(body.elts) == 1 else ast.Tuple(body.elts, ast.Load())
        run = _build(root)
    except (RecursionError, MemoryError):
        # CPython's parser reports its own stack overflow as MemoryError, not RecursionError.
        raise ExpressionError(f"expression {text!r}: nested too deeply") from None
    except (SyntaxError, ValueError, _NotAllowed) as exc:
        reason = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise ExpressionError(f"expression {text!r}: {reason}") from None
    names = frozenset(
        node.id
        for node in ast.walk(root)
        if isinstance(node, ast.Name) and node.id not in _ALIASES and node.id not in _FUNCTIONS
    )
    return _Compiled(run, names)


class _NotAllowed(Exception):
    """Internal: a rejected construct, reported by _compile with the expression's text."""

    def __init__(self, construct: str, hint: str = "") -> None:
        super().__init__(f"{construct} is not allowed" + (f"; {hint}" if hint else ""))


def _build(node: ast.expr) -> _Run:
    """Turn a whitelisted node into a closure; compiling once keeps evaluation cheap."""
    builder = _BUILDERS.get(type(node))
    if builder is None:
        raise _NotAllowed(_CONSTRUCTS.get(type(node), type(node).__name__))
    return builder(node)


def _build_constant(node: ast.Constant) -> _Run:
    value = node.value
    if value is not None and not isinstance(value, str | int | float):
        raise _NotAllowed(f"constant {value!r}")
    return lambda ns: value


def _build_name(node: ast.Name) -> _Run:
    name = node.id
    if name.startswith("__"):
        raise _NotAllowed(f"dunder name {name!r}")
    if name in _FUNCTIONS:
        raise _NotAllowed(f"function {name!r} without a call")
    if name in _ALIASES:
        value = _ALIASES[name]
        return lambda ns: value

    def load(ns: Mapping[str, Any]) -> Any:
        try:
            return ns[name]
        except KeyError:
            available = ", ".join(sorted(ns)) or "none"
            raise ExpressionError(
                f"{name}: {name!r} is not defined; available names: {available}"
            ) from None

    return load


def _build_lookup(node: ast.Attribute | ast.Subscript) -> _Run:
    is_attribute = isinstance(node, ast.Attribute)
    if isinstance(node, ast.Attribute) and node.attr.startswith("__"):
        raise _NotAllowed(f"dunder attribute {node.attr!r}")
    key_node = ast.Constant(node.attr) if isinstance(node, ast.Attribute) else node.slice
    owner, path = ast.unparse(node.value), ast.unparse(node)
    target, index = _build(node.value), _build(key_node)

    def lookup(ns: Mapping[str, Any]) -> Any:
        obj, key = target(ns), index(ns)
        try:
            if isinstance(obj, Mapping):
                return obj[key]
            if is_attribute or not isinstance(obj, list | tuple | str):
                needs = "a mapping" if is_attribute else "a mapping or a list"
                raise ExpressionError(f"{path}: needs {needs}, but {owner} is {_kind(obj)}")
            if not isinstance(key, int) or isinstance(key, bool):
                raise ExpressionError(f"{path}: a list index must be an integer, got {_kind(key)}")
            return obj[key]
        except KeyError:
            raise ExpressionError(f"{path}: {key!r} is not in {owner}") from None
        except IndexError:
            raise ExpressionError(
                f"{path}: index {key} is out of range for {owner} (length {len(obj)})"
            ) from None
        except TypeError:
            raise ExpressionError(f"{path}: {_kind(key)} cannot be a mapping key") from None

    return lookup


def _build_compare(node: ast.Compare) -> _Run:
    source, first = ast.unparse(node), _build(node.left)
    steps = [
        (_COMPARISONS[type(op)], _build(right))
        for op, right in zip(node.ops, node.comparators, strict=True)
    ]

    def compare(ns: Mapping[str, Any]) -> Any:
        left, result = first(ns), True
        for op, right in steps:
            value = right(ns)
            result = _apply(source, op, left, value)
            if not result:
                return result
            left = value
        return result

    return compare


def _build_boolop(node: ast.BoolOp) -> _Run:
    operands, is_and = [_build(value) for value in node.values], isinstance(node.op, ast.And)

    def boolop(ns: Mapping[str, Any]) -> Any:
        # Returns the deciding operand, as Python does, so "a or default" works in templates.
        value: Any = None
        for operand in operands:
            value = operand(ns)
            if bool(value) is not is_and:
                return value
        return value

    return boolop


def _build_unaryop(node: ast.UnaryOp) -> _Run:
    if not isinstance(node.op, ast.Not | ast.USub):
        raise _NotAllowed(f"operator {_OPERATOR_SYMBOLS.get(type(node.op), '?')}")
    operand, source = _build(node.operand), ast.unparse(node)
    if isinstance(node.op, ast.Not):
        return lambda ns: not operand(ns)
    return lambda ns: _apply(source, operator.neg, operand(ns))


def _build_binop(node: ast.BinOp) -> _Run:
    op = _ARITHMETIC.get(type(node.op))
    if op is None:
        raise _NotAllowed(f"operator {_OPERATOR_SYMBOLS.get(type(node.op), '?')}")
    source, left, right = ast.unparse(node), _build(node.left), _build(node.right)
    return lambda ns: _apply(source, op, left(ns), right(ns))


def _build_sequence(node: ast.List | ast.Tuple) -> _Run:
    items, kind = [_build(element) for element in node.elts], type(node)
    if kind is ast.List:
        return lambda ns: [item(ns) for item in items]
    return lambda ns: tuple(item(ns) for item in items)


def _numeric_mod(a: Any, b: Any) -> Any:
    # "%" on a str is printf-style formatting; "%999999999d" would build a gigabyte string.
    if isinstance(a, str | bytes):
        raise TypeError("% is only allowed on numbers; string formatting is not supported")
    return a % b


# Caps "x" * n and [..] * n: one short condition must not be able to exhaust memory.
_MAX_REPEAT = 100_000


def _bounded_mul(a: Any, b: Any) -> Any:
    seq, times = (b, a) if isinstance(a, int) else (a, b)
    repeats = isinstance(seq, str | list | tuple) and isinstance(times, int)
    if repeats and len(seq) * times > _MAX_REPEAT:
        raise ValueError(f"the result would be longer than {_MAX_REPEAT}")
    return a * b


def _build_call(node: ast.Call) -> _Run:
    func = node.func
    if not isinstance(func, ast.Name) or func.id not in _FUNCTIONS:
        allowed = ", ".join(sorted(_FUNCTIONS))
        raise _NotAllowed(f"call of {ast.unparse(func)}()", f"allowed functions: {allowed}")
    if node.keywords:
        raise _NotAllowed(f"keyword argument in {func.id}()")
    function, args, source = _FUNCTIONS[func.id], [_build(a) for a in node.args], ast.unparse(node)
    return lambda ns: _apply(source, function, *(arg(ns) for arg in args))


def _apply(source: str, function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ExpressionError(f"{source}: {exc}") from None


def _kind(value: object) -> str:
    name = type(value).__name__
    return "None" if value is None else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


_ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _bounded_mul,
    ast.Div: operator.truediv,
    ast.Mod: _numeric_mod,
}
_BUILDERS: dict[type[ast.AST], Callable[[Any], _Run]] = {
    ast.Constant: _build_constant,
    ast.Name: _build_name,
    ast.Attribute: _build_lookup,
    ast.Subscript: _build_lookup,
    ast.Compare: _build_compare,
    ast.BoolOp: _build_boolop,
    ast.UnaryOp: _build_unaryop,
    ast.BinOp: _build_binop,
    ast.List: _build_sequence,
    ast.Tuple: _build_sequence,
    ast.Call: _build_call,
}
