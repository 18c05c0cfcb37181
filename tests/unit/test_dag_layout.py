"""The dashboard's layered DAG layout and its SVG."""

from __future__ import annotations

import itertools

import pytest

from stepline.api.graph import NODE_HEIGHT, NODE_WIDTH, NodeView, layout, render_svg


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return abs(a[0] - b[0]) < NODE_WIDTH and abs(a[1] - b[1]) < NODE_HEIGHT


def test_a_step_sits_one_layer_past_its_deepest_upstream() -> None:
    edges = [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d"), ("x", "d")]
    placed = layout(["a", "b", "c", "d", "x"], edges)
    column = {n: placed.position[n][0] for n in "abcdx"}
    assert column["a"] == column["x"] < column["b"] < column["c"] < column["d"]
    for a, b in edges:
        assert placed.position[a][0] < placed.position[b][0]  # every edge points right


def test_long_edges_pass_through_waypoints_and_nothing_overlaps() -> None:
    placed = layout(["a", "b", "c", "d"], [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d")])
    route = placed.routes[("a", "d")]
    assert route[0] == "a" and route[-1] == "d" and len(route) == 4  # two waypoints
    for p, q in itertools.combinations(placed.position, 2):
        assert not _overlap(placed.position[p], placed.position[q]), (p, q)


def test_barycenter_ordering_uncrosses_edges() -> None:
    # Declared so that, in order, both edges cross; the layout puts them side by side.
    placed = layout(["a", "b", "y", "x"], [("a", "x"), ("b", "y")])
    assert (placed.position["a"][1] < placed.position["b"][1]) == (
        placed.position["x"][1] < placed.position["y"][1]
    )


def test_unknown_steps_and_cycles_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown step"):
        layout(["a"], [("a", "zz")])
    with pytest.raises(ValueError, match="cycle"):
        layout(["a", "b"], [("a", "b"), ("b", "a")])


def test_the_svg_colours_steps_labels_skips_and_escapes_text() -> None:
    views = {
        "load": NodeView(status="succeeded"),
        "<b>evil</b>": NodeView(status="failed", detail="3 items: 1 failed 2 succeeded"),
        "notify": NodeView(
            status="skipped", reason="condition 'x > 1' was false", skipped_by="condition"
        ),
    }
    svg = render_svg(
        ["load", "<b>evil</b>", "notify"], [("load", "<b>evil</b>"), ("load", "notify")], views
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'class="node st-succeeded" data-step="load"' in svg
    assert 'class="node st-failed" data-step="&lt;b&gt;evil&lt;/b&gt;"' in svg
    assert "<b>" not in svg
    assert ">3 items: 1 failed 2 succee…</text>" in svg  # cut to fit the box
    assert "(3 items: 1 failed 2 succeeded)</title>" in svg  # whole on hover
    assert 'class="edge edge-skip"' in svg and ">condition</text>" in svg
    assert "skipped: condition &#x27;x &gt; 1&#x27; was false" in svg


def test_200_steps_with_long_edges_lay_out_without_overlap() -> None:
    nodes = [f"s{n}" for n in range(200)]
    edges = [(f"s{n}", f"s{m}") for n in range(200) for m in (n + 1, n + 7) if m < 200]
    placed = layout(nodes, edges)
    for p, q in itertools.combinations(placed.position, 2):
        assert not _overlap(placed.position[p], placed.position[q]), (p, q)
    right, bottom = zip(*placed.position.values(), strict=True)
    assert max(right) + NODE_WIDTH <= placed.width and max(bottom) + NODE_HEIGHT <= placed.height
