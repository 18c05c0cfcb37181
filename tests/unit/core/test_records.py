"""quick_init: the per-step records keep what dataclass gives them, built faster."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field

import pytest

from stepline.core.context import StepContext
from stepline.core.records import quick_init
from stepline.dispatchers.base import StepWork
from stepline.stores.base import ClaimedStep, StepOutcome


@quick_init
@dataclass(frozen=True)
class _Sample:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)
    d: tuple[int, ...] = field(default=(), kw_only=True)


def test_a_quick_record_behaves_as_the_dataclass() -> None:
    one = _Sample(1)
    assert one == _Sample(1, "b", [], d=()) and one.c == [] and one.c is not _Sample(1).c
    assert repr(one) == "_Sample(a=1, b='b', c=[], d=())"
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.a = 2  # type: ignore[misc]
    assert dataclasses.replace(one, b="x") == _Sample(1, "x")
    assert pickle.loads(pickle.dumps(one)) == one
    with pytest.raises(TypeError):
        _Sample(1, "b", [], ())  # type: ignore[misc]  # d is keyword-only
    with pytest.raises(TypeError):
        _Sample()  # type: ignore[call-arg]


@pytest.mark.parametrize("cls", [StepContext, StepWork, ClaimedStep, StepOutcome])
def test_the_per_step_records_are_quick(cls: type) -> None:
    assert cls.__init__.__code__.co_filename == "<string>"
    assert "object.__setattr__" not in repr(cls.__init__.__code__.co_names)


def test_what_it_cannot_do_is_refused() -> None:
    @dataclass(frozen=True)
    class Later:
        a: int

        def __post_init__(self) -> None:
            pass

    with pytest.raises(TypeError):
        quick_init(Later)
