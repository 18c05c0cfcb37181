"""The DAG of a batch: successors, predecessors, roots, cycles. Pure functions only."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Graph:
    """Adjacency of a validated batch, in definition order."""

    keys: tuple[str, ...]
    successors: Mapping[str, tuple[str, ...]]
    predecessors: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_edges(cls, edges: Sequence[tuple[str, Iterable[str]]]) -> Graph:
        keys = tuple(k for k, _ in edges)
        successors = {k: tuple(dict.fromkeys(nexts)) for k, nexts in edges}
        predecessors: dict[str, list[str]] = {k: [] for k in keys}
        for key, nexts in successors.items():
            for nxt in nexts:
                predecessors.setdefault(nxt, []).append(key)
        return cls(keys, successors, {k: tuple(v) for k, v in predecessors.items()})

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(k for k in self.keys if not self.predecessors.get(k))

    def ancestors(self, key: str) -> set[str]:
        return self._reach(key, self.predecessors)

    def descendants(self, key: str) -> set[str]:
        return self._reach(key, self.successors)

    @staticmethod
    def _reach(key: str, edges: Mapping[str, tuple[str, ...]]) -> set[str]:
        seen: set[str] = set()
        stack = list(edges.get(key, ()))
        while stack:
            k = stack.pop()
            if k not in seen:
                seen.add(k)
                stack.extend(edges.get(k, ()))
        return seen


def find_cycle(successors: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one cycle as ``[a, b, c, a]``, or None. Unknown successor keys are ignored."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(successors, white)
    for start in successors:
        if colour[start] != white:
            continue
        colour[start] = grey
        path = [start]
        # One iterator per node on the path: each edge is looked at once (a step with
        # thousands of successors must not rescan them for every child it returns from).
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(successors[start]))]
        while stack:
            node, nexts = stack[-1]
            for nxt in nexts:
                state = colour.get(nxt)
                if state == grey:
                    return [*path[path.index(nxt) :], nxt]
                if state == white:
                    colour[nxt] = grey
                    path.append(nxt)
                    stack.append((nxt, iter(successors[nxt])))
                    break
            else:
                colour[node] = black
                path.pop()
                stack.pop()
    return None


def topological_order(graph: Graph) -> list[str]:
    """Kahn's algorithm; among ready steps, the one defined first comes first."""
    position = {k: i for i, k in enumerate(graph.keys)}
    remaining = {k: len(graph.predecessors.get(k, ())) for k in graph.keys}
    ready = [position[k] for k in graph.keys if remaining[k] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        key = graph.keys[heapq.heappop(ready)]
        order.append(key)
        for nxt in graph.successors.get(key, ()):
            remaining[nxt] -= 1
            if remaining[nxt] == 0:
                heapq.heappush(ready, position[nxt])
    return order
