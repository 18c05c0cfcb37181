"""Definitions named on the command line: files and directories, or ``package.module:attribute``.

A Python target names a module attribute that holds a :class:`BatchDefinition` (built with
:func:`stepline.batch`) or a list of them, the way uvicorn and celery name an app. Batch
names cannot contain ``:``, so the two forms never collide.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from pathlib import Path

from stepline.core.definition import BatchDefinition
from stepline.errors import DefinitionError, Problem, import_failure, shown

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_TARGET = re.compile(rf"^{_IDENTIFIER}(\.{_IDENTIFIER})*:{_IDENTIFIER}(\.{_IDENTIFIER})*$")


def is_python_target(text: str) -> bool:
    """``package.module:attribute`` (and not an existing file of that name)."""
    if not _TARGET.match(text):
        return False
    try:
        return not Path(text).exists()
    except OSError:
        return True


def load_python_definitions(target: str) -> list[BatchDefinition]:
    """Import ``package.module`` and return the definition(s) its ``attribute`` holds.

    Raises DefinitionError naming the target for a module that does not import, a missing
    attribute, or an attribute that is not a batch definition (or a list of them).
    """
    module_name, _, attr_path = target.partition(":")

    def problem(message: str) -> DefinitionError:
        return DefinitionError([Problem(message, target)])

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise problem(
                f"no module named {shown(exc.name)}; modules are imported with the current "
                "directory on sys.path"
            ) from None
        raise problem(f"importing module {shown(module_name)} failed: {exc}") from None
    except DefinitionError as exc:  # a stepline.batch(...) call at import time was invalid
        raise DefinitionError(
            [Problem(p.message, _located(p.source, target), p.step) for p in exc.problems]
        ) from None
    except (Exception, SystemExit) as exc:  # sys.exit() at import time too
        raise problem(
            f"importing module {shown(module_name)} failed: {import_failure(exc)}"
        ) from None
    value: object = module
    for attr in attr_path.split("."):
        try:
            value = getattr(value, attr)
        except AttributeError:
            raise problem(
                f"module {shown(module_name)} has no attribute {shown(attr_path)}"
            ) from None
    if isinstance(value, BatchDefinition):
        return [value]
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str | bytes)
        and value
        and all(isinstance(v, BatchDefinition) for v in value)
    ):
        return list(value)
    raise problem(
        f"{shown(attr_path)} is a {type(value).__name__}, not a batch definition: it must hold "
        "stepline.batch(...) or a non-empty list of them"
    )


def _located(source: str | None, target: str) -> str:
    return target if source in (None, "<python>") else str(source)
