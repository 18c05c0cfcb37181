"""A faster ``__init__`` for the frozen dataclasses made once or twice per step attempt."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, TypeVar

T = TypeVar("T")

_NO_VALUE = object()


def quick_init(cls: type[T]) -> type[T]:
    """Give the frozen dataclass ``cls`` an ``__init__`` that fills ``__dict__`` directly.

    The generated one sets each field through ``object.__setattr__`` (the class's own
    ``__setattr__`` refuses): three times the cost of a dict store, paid for every field of
    the records the per-step path builds (outcomes, claims, work, contexts). The instance
    stays frozen, and the signature is checked to be the one dataclass generated.
    Fields with ``init=False``, ``__post_init__`` and ``__slots__`` are not supported.
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if (
        not dataclasses.is_dataclass(cls)
        or hasattr(cls, "__post_init__")
        or "__slots__" in cls.__dict__
        or any(not f.init for f in fields)
    ):
        raise TypeError(f"quick_init does not support {cls.__name__}")
    namespace: dict[str, Any] = {"_NO_VALUE": _NO_VALUE}
    params: list[str] = []
    body: list[str] = []
    kw_only = False
    for f in fields:
        if f.kw_only and not kw_only:
            params.append("*")
            kw_only = True
        if f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_NO_VALUE")
            body.append(f"    if {f.name} is _NO_VALUE: {f.name} = _factory_{f.name}()")
        else:
            params.append(f.name)
    if {"__quick_self__", "__quick_dict__"} & {f.name for f in fields}:
        raise TypeError(f"quick_init does not support {cls.__name__}'s field names")
    body.append("    __quick_dict__ = __quick_self__.__dict__")
    body += [f"    __quick_dict__[{f.name!r}] = {f.name}" for f in fields]
    source = f"def __init__(__quick_self__, {', '.join(params)}):\n" + "\n".join(body) + "\n"
    exec(source, namespace)
    init = namespace["__init__"]
    expected = list(inspect.signature(cls.__init__).parameters.values())
    got = list(inspect.signature(init).parameters.values())
    plain = {f.name for f in fields if f.default is not dataclasses.MISSING}
    if [(p.name, p.kind) for p in got[1:]] != [(p.name, p.kind) for p in expected[1:]] or any(
        g.default is not e.default for g, e in zip(got, expected, strict=True) if g.name in plain
    ):
        raise TypeError(f"quick_init: {cls.__name__}.__init__ would differ from dataclass's")
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses assigning to a method
    return cls
