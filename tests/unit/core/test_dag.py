"""Graph construction, cycle detection and topological order of a batch's steps."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import pytest

from stepline.core.dag import Graph, find_cycle, topological_order

# The SPEC's weekly_report: two collectors fan in to check; alert_admin stands alone.
WEEKLY = Graph.from_edges(
    [
        ("collect_stats", ["check"]),
        ("collect_weather", ["check"]),
        ("check", ["run_report"]),
        ("run_report", []),
        ("alert_admin", []),
    ]
)
DIAMOND = Graph.from_edges([("a", ["b", "c"]), ("b", ["d"]), ("c", ["d"]), ("d", [])])


@pytest.mark.parametrize(
    ("graph", "roots"),
    [
        pytest.param(WEEKLY, ("collect_stats", "collect_weather", "alert_admin"), id="weekly"),
        pytest.param(DIAMOND, ("a",), id="diamond"),
        pytest.param(Graph.from_edges([("x", []), ("y", [])]), ("x", "y"), id="no-edges"),
        pytest.param(Graph.from_edges([]), (), id="empty"),
    ],
)
def test_roots_are_steps_nothing_points_to_in_definition_order(
    graph: Graph, roots: tuple[str, ...]
) -> None:
    assert graph.roots == roots


@pytest.mark.parametrize(
    ("graph", "key", "predecessors", "successors"),
    [
        pytest.param(
            WEEKLY,
            "check",
            ("collect_stats", "collect_weather"),
            ("run_report",),
            id="weekly-fan-in",
        ),
        pytest.param(WEEKLY, "collect_stats", (), ("check",), id="weekly-root"),
        pytest.param(WEEKLY, "alert_admin", (), (), id="weekly-isolated"),
        pytest.param(DIAMOND, "a", (), ("b", "c"), id="diamond-fan-out"),
        pytest.param(DIAMOND, "d", ("b", "c"), (), id="diamond-fan-in"),
    ],
)
def test_predecessors_and_successors(
    graph: Graph, key: str, predecessors: tuple[str, ...], successors: tuple[str, ...]
) -> None:
    assert graph.predecessors[key] == predecessors
    assert graph.successors[key] == successors


def test_from_edges_keeps_definition_order_and_drops_duplicate_edges() -> None:
    graph = Graph.from_edges([("z", ["a", "a", "m"]), ("m", ["a"]), ("a", [])])
    assert graph.keys == ("z", "m", "a")
    assert graph.successors["z"] == ("a", "m")
    assert graph.predecessors["a"] == ("z", "m")


def test_from_edges_accepts_any_iterable_of_successors() -> None:
    graph = Graph.from_edges([("a", iter(["b"])), ("b", ())])
    assert graph.successors == {"a": ("b",), "b": ()}
    assert graph.predecessors == {"a": (), "b": ("a",)}


@pytest.mark.parametrize(
    ("graph", "key", "ancestors"),
    [
        pytest.param(
            WEEKLY, "run_report", {"check", "collect_stats", "collect_weather"}, id="transitive"
        ),
        pytest.param(WEEKLY, "check", {"collect_stats", "collect_weather"}, id="direct"),
        pytest.param(WEEKLY, "collect_stats", set(), id="root"),
        pytest.param(WEEKLY, "alert_admin", set(), id="isolated"),
        pytest.param(DIAMOND, "d", {"a", "b", "c"}, id="diamond-counts-shared-once"),
        pytest.param(DIAMOND, "unknown", set(), id="unknown-key"),
    ],
)
def test_ancestors(graph: Graph, key: str, ancestors: set[str]) -> None:
    assert graph.ancestors(key) == ancestors


@pytest.mark.parametrize(
    ("successors", "cycle"),
    [
        pytest.param({}, None, id="empty"),
        pytest.param({"a": []}, None, id="single"),
        pytest.param({"a": ["b"], "b": ["c"], "c": []}, None, id="chain"),
        pytest.param({"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}, None, id="diamond"),
        pytest.param({"a": ["b"], "b": ["a"]}, ["a", "b", "a"], id="two-step"),
        pytest.param({"a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"], id="three-step"),
        pytest.param(
            {"s1": ["s2"], "s2": ["s3"], "s3": ["s4"], "s4": ["s5"], "s5": ["s6"], "s6": ["s2"]},
            ["s2", "s3", "s4", "s5", "s6", "s2"],
            id="long-cycle-entered-from-a-tail",
        ),
        pytest.param(
            {"p": ["q"], "q": [], "x": ["y"], "y": ["z"], "z": ["x"]},
            ["x", "y", "z", "x"],
            id="cycle-in-second-component",
        ),
        pytest.param(
            {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": ["c"]},
            ["d", "c", "d"],
            id="cycle-reached-through-a-branch",
        ),
        pytest.param(
            {"a": ["b", "c"], "b": [], "c": ["a"]}, ["a", "c", "a"], id="after-finished-sibling"
        ),
        pytest.param({"a": ["a"]}, ["a", "a"], id="self-loop"),
        pytest.param({"a": ["ghost"], "b": ["a", "phantom"]}, None, id="unknown-keys-ignored"),
        pytest.param({"a": ["ghost", "a"]}, ["a", "a"], id="self-loop-next-to-unknown-key"),
    ],
)
def test_find_cycle(successors: Mapping[str, Sequence[str]], cycle: list[str] | None) -> None:
    found = find_cycle(successors)
    assert found == cycle
    if found is not None:
        assert found[0] == found[-1]
        assert all(b in successors[a] for a, b in itertools.pairwise(found))


@pytest.mark.parametrize(
    ("graph", "order"),
    [
        pytest.param(
            WEEKLY,
            ["collect_stats", "collect_weather", "check", "run_report", "alert_admin"],
            id="weekly",
        ),
        pytest.param(DIAMOND, ["a", "b", "c", "d"], id="diamond"),
        pytest.param(
            Graph.from_edges([("last", []), ("first", ["middle"]), ("middle", ["last"])]),
            ["first", "middle", "last"],
            id="definition-order-not-topological",
        ),
        pytest.param(Graph.from_edges([]), [], id="empty"),
        pytest.param(
            Graph.from_edges([("a", ["d"]), ("b", ["c"]), ("c", []), ("d", [])]),
            ["a", "b", "c", "d"],
            id="already-sorted-definition-is-kept",
        ),
    ],
)
def test_topological_order(graph: Graph, order: list[str]) -> None:
    result = topological_order(graph)
    assert result == order
    position = {k: i for i, k in enumerate(result)}
    assert all(position[k] < position[n] for k in graph.keys for n in graph.successors[k])
