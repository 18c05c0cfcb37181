"""A batch's DAG drawn as SVG on the server, in a layered (Sugiyama-style) layout.

:func:`layout` places the steps left to right: a step's layer is the longest path to it
from a root, edges that span several layers pass through invisible waypoints, and a few
barycenter sweeps order each layer to keep edges from crossing. It is linear in steps and
edges per sweep (a 200-step DAG lays out in milliseconds). :func:`render_svg` draws the
result with each step coloured by its status (CSS classes ``st-<status>``, styled by the
dashboard's stylesheet), a mapped step's item counts, and the reason a step was skipped.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Layout", "NodeView", "layout", "render_svg"]

NODE_WIDTH = 180
NODE_HEIGHT = 46
GAP_X = 60
GAP_Y = 18
MARGIN = 10
SWEEPS = 4
LABEL_CHARS = 24


@dataclass
class Layout:
    """Where each step (and each waypoint of a long edge) is drawn."""

    layers: list[list[str]]
    """Node names per layer, in drawing order; waypoints are named ``\\0<edge>#<n>``."""
    position: dict[str, tuple[int, int]]
    """Top-left corner of each node."""
    routes: dict[tuple[str, str], list[str]]
    """Each edge's chain of nodes: source, waypoints..., target."""
    width: int
    height: int


@dataclass(frozen=True)
class NodeView:
    """What a step shows in the drawing."""

    status: str
    detail: str = ""
    """A second line: item counts of a mapped step, or a short note."""
    reason: str = ""
    """Why a skipped step was skipped (shown on hover and under the name)."""
    skipped_by: str = ""
    """'condition' or 'trigger rule' when the step was skipped by one: labels its edges."""
    link: str = ""
    title: str = ""


def _layers(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Longest-path layering (Kahn's order): a node sits one past its deepest predecessor."""
    incoming = {n: 0 for n in nodes}
    successors: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        successors[a].append(b)
        incoming[b] += 1
    layer = dict.fromkeys(nodes, 0)
    ready = [n for n in nodes if incoming[n] == 0]
    seen = 0
    while ready:
        node = ready.pop()
        seen += 1
        for nxt in successors[node]:
            layer[nxt] = max(layer[nxt], layer[node] + 1)
            incoming[nxt] -= 1
            if incoming[nxt] == 0:
                ready.append(nxt)
    if seen != len(nodes):
        raise ValueError("the graph has a cycle; a batch's steps form a DAG")
    return layer


def layout(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> Layout:
    """Lay ``nodes`` out in layers, left to right, following ``edges`` (source, target).

    Raises ValueError for an edge naming an unknown node or for a cycle.
    """
    known = set(nodes)
    for a, b in edges:
        if a not in known or b not in known:
            raise ValueError(f"edge {a!r} -> {b!r} names an unknown step")
    level = _layers(nodes, edges)
    depth = max(level.values(), default=-1) + 1
    layers: list[list[str]] = [[] for _ in range(depth)]
    for node in nodes:
        layers[level[node]].append(node)
    routes: dict[tuple[str, str], list[str]] = {}
    up: dict[str, list[str]] = {n: [] for n in nodes}
    down: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        chain = [a]
        for lv in range(level[a] + 1, level[b]):
            waypoint = f"\0{a}>{b}#{lv}"
            layers[lv].append(waypoint)
            up[waypoint], down[waypoint] = [], []
            chain.append(waypoint)
        chain.append(b)
        routes[(a, b)] = chain
        for src, dst in itertools.pairwise(chain):
            down[src].append(dst)
            up[dst].append(src)
    _order(layers, up, down)
    tallest = max((len(layer) for layer in layers), default=0)
    position: dict[str, tuple[int, int]] = {}
    for lv, layer in enumerate(layers):
        offset = (tallest - len(layer)) * (NODE_HEIGHT + GAP_Y) // 2
        left = MARGIN + lv * (NODE_WIDTH + GAP_X)
        for i, node in enumerate(layer):
            position[node] = (left, MARGIN + offset + i * (NODE_HEIGHT + GAP_Y))
    width = 2 * MARGIN + max(depth * (NODE_WIDTH + GAP_X) - GAP_X, 0)
    height = 2 * MARGIN + max(tallest * (NODE_HEIGHT + GAP_Y) - GAP_Y, 0)
    return Layout(layers, position, routes, width, height)


def _order(
    layers: list[list[str]], up: Mapping[str, list[str]], down: Mapping[str, list[str]]
) -> None:
    """Barycenter sweeps, down then up: each node moves toward its neighbours' mean rank."""
    for sweep in range(SWEEPS):
        downward = sweep % 2 == 0
        indexes = range(1, len(layers)) if downward else range(len(layers) - 2, -1, -1)
        for lv in indexes:
            fixed = layers[lv - 1] if downward else layers[lv + 1]
            rank = {n: i for i, n in enumerate(fixed)}
            neighbours = up if downward else down
            weight: dict[str, float] = {}
            for i, node in enumerate(layers[lv]):
                near = [rank[n] for n in neighbours[node] if n in rank]
                weight[node] = sum(near) / len(near) if near else float(i)
            layers[lv].sort(key=weight.__getitem__)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_svg(
    nodes: Sequence[str], edges: Sequence[tuple[str, str]], views: Mapping[str, NodeView]
) -> str:
    """The DAG as an inline ``<svg>`` element; every text is escaped."""
    placed = layout(nodes, edges)
    parts = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="DAG of {len(nodes)} steps" width="{placed.width}" '
        f'height="{placed.height}" viewBox="0 0 {placed.width} {placed.height}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'class="arrowhead"/></marker></defs>',
    ]
    for (a, b), chain in placed.routes.items():
        points = []
        for i, node in enumerate(chain):
            x, y = placed.position[node]
            mid = y + NODE_HEIGHT // 2
            if i == 0:
                points.append((x + NODE_WIDTH, mid))
            elif i == len(chain) - 1:
                points.append((x, mid))
            else:
                points.extend([(x, mid), (x + NODE_WIDTH, mid)])
        path = _curve(points)
        target = views.get(b)
        cls = "edge"
        label = ""
        if target is not None and target.skipped_by:
            cls += " edge-skip"
            (x1, y1), (x2, y2) = points[-2], points[-1]
            label = (
                f'<text class="edge-label" x="{(x1 + x2) // 2}" y="{(y1 + y2) // 2 - 4}" '
                f'text-anchor="middle">{_e(target.skipped_by)}</text>'
            )
        parts.append(
            f'<path class="{cls}" d="{path}" marker-end="url(#arrow)"><title>{_e(a)} → '
            f"{_e(b)}</title></path>{label}"
        )
    for node in nodes:
        view = views.get(node, NodeView(status="pending"))
        x, y = placed.position[node]
        hover = view.title or f"{node}: {view.status}" + (
            f" ({view.detail})" if view.detail else ""
        )
        if view.reason:
            hover += f"\nskipped: {view.reason}"
        second = view.reason if view.reason and not view.detail else view.detail or view.status
        body = (
            f'<rect x="{x}" y="{y}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="6"/>'
            f'<text class="name" x="{x + 10}" y="{y + 19}">{_e(_short(node))}</text>'
            f'<text class="sub" x="{x + 10}" y="{y + 36}">{_e(_short(second, 27))}</text>'
            f"<title>{_e(hover)}</title>"
        )
        group = (
            f'<g class="node st-{_e(view.status)}" data-step="{_e(node)}" '
            f'data-status="{_e(view.status)}">{body}</g>'
        )
        if view.link:
            group = f'<a href="{_e(view.link)}">{group}</a>'
        parts.append(group)
    parts.append("</svg>")
    return "".join(parts)


def _curve(points: Sequence[tuple[int, int]]) -> str:
    """A smooth path through ``points``: horizontal cubic segments between pairs."""
    (x0, y0), rest = points[0], points[1:]
    out = [f"M {x0} {y0}"]
    for x, y in rest:
        if y == y0:
            out.append(f"L {x} {y}")
        else:
            bend = (x - x0) / 2
            out.append(f"C {x0 + bend:.0f} {y0} {x - bend:.0f} {y} {x} {y}")
        x0, y0 = x, y
    return " ".join(out)
