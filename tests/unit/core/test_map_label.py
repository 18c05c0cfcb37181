"""``map.label``: how a mapped step's items are named for users."""

from __future__ import annotations

from typing import Any

import pytest

from stepline.core.definition import MapSpec
from stepline.core.loader import parse_definition
from stepline.errors import DefinitionError


def _doc(**map_options: Any) -> dict[str, Any]:
    return {
        "name": "labels",
        "params": {"farms": []},
        "steps": [{"key": "each", "runner": "x:y", "map": {"over": "farms", **map_options}}],
    }


def test_a_label_is_parsed_and_stored() -> None:
    definition = parse_definition(_doc(label="{{ item.farm_id }}"), check_runners=False)

    spec = definition.step("each").map
    assert spec == MapSpec(over="farms", label="{{ item.farm_id }}")
    assert definition.to_document()["steps"][0]["map"]["label"] == "{{ item.farm_id }}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"label": "{{ results.x }}"}, "map.label:"),
        ({"label": ""}, "map.label must be a template"),
        ({"labels": "{{ item }}"}, "unknown map field 'labels'"),
    ],
)
def test_a_bad_label_is_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError) as raised:
        parse_definition(_doc(**options), check_runners=False)

    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("label", "item", "expected"),
    [
        ("{{ item.farm_id }}", {"farm_id": "F002"}, "F002"),
        ("{{ item.farm_id }} ({{ params.period }})", {"farm_id": "F002"}, "F002 (WEEK)"),
        ("{{ item.missing }}", {"farm_id": "F002"}, "1"),  # cannot render: the position
        (None, "F002", "F002"),
        (None, 42, "42"),
        (None, {"farm_id": "F002"}, "1"),
        (None, True, "1"),
        (None, "", "1"),
    ],
)
def test_item_labels(label: str | None, item: Any, expected: str) -> None:
    assert MapSpec(over="farms", label=label).item_label(item, 1, {"period": "WEEK"}) == expected
