"""Finding the Python callable a step names: ``module:function`` or a registered name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from stepline.errors import import_failure, shown

Runner = Callable[..., Any]

_registry: dict[str, Runner] = {}


def register(name: str) -> Callable[[Runner], Runner]:
    """Decorator: make ``fn`` callable from definitions as ``runner: <name>``."""

    def decorate(fn: Runner) -> Runner:
        _registry[name] = fn
        return fn

    return decorate


def runner_reference(fn: Runner) -> str:
    """The ``module:qualname`` a stored definition uses for a Python callable."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ValueError(
            f"runner {fn!r} is not importable by name; define it at module level "
            "or register it with stepline.register(name)"
        )
    reference = f"{module}:{qualname}"
    problem = main_module_problem(reference)
    if problem:
        raise ValueError(problem)
    return reference


def main_module_problem(reference: str) -> str | None:
    """Why a runner in ``__main__`` cannot be stored, or None for any other reference.

    ``__main__`` is whichever script a process was started with: in ``stepline serve``,
    ``stepline recover`` or a worker it is not the user's script, so the reference breaks.
    """
    module, sep, attr = reference.partition(":")
    if not sep or module != "__main__":
        return None
    return (
        f"runner {reference!r} is defined in the script being run (__main__), which other "
        "processes (stepline serve, recover, workers) cannot import: move it into a module "
        f"of its own, e.g. steps.py, and name it by that module: runner: steps:{attr}"
    )


def resolve_runner(reference: str) -> Runner:
    """Import the runner; raise ImportError naming what is missing and how to fix it."""
    if reference in _registry:
        return _registry[reference]
    module_name, sep, attr_path = reference.partition(":")
    if not sep or not module_name or not attr_path:
        raise ImportError(
            f"runner {shown(reference)} is neither a registered name nor 'module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"runner {shown(reference)}: cannot import module {shown(module_name)} ({exc}); runner "
            "modules are imported with the current directory on sys.path"
        ) from exc
    except (Exception, SystemExit) as exc:
        # A module that raises on import (a syntax error, a failing top-level call, even
        # sys.exit()) is a problem with the definition's runner, reported like a missing one.
        raise ImportError(
            f"runner {shown(reference)}: importing module {shown(module_name)} failed: "
            f"{import_failure(exc)}"
        ) from exc
    target: Any = module
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise ImportError(
                f"runner {shown(reference)}: module {shown(module_name)} "
                f"has no attribute {shown(attr_path)}"
            ) from None
    if not callable(target):
        raise ImportError(f"runner {shown(reference)} is not callable")
    fn: Runner = target
    return fn
