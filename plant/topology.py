"""The plant's topology: which asset feeds or drives which (``Edge``), resolved from a plant
file's ``topology:`` list and checked: both ends are declared assets, and there is no cycle (an
alert names a suspected upstream cause by walking it)."""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path

from plant.errors import PlantError
from plant.schema import EdgeSpec

__all__ = ["Edge", "resolve_topology"]


@dataclass(frozen=True)
class Edge:
    """``source`` feeds or drives ``target`` (``kind``: ``feeds`` | ``drives``)."""

    source: str
    target: str
    kind: str  # feeds | drives
    description: str = ""


def resolve_topology(
    path: Path, specs: Sequence[EdgeSpec], assets: Container[str], inherited: tuple[Edge, ...] = ()
) -> tuple[Edge, ...]:
    """``inherited`` (the included files' edges) and the file's own ``specs``, whose ends must
    be ``assets``; ``PlantError`` on an unknown asset or a cycle."""
    edges = list(inherited)
    lines: list[int | None] = [None] * len(edges)
    for i, e in enumerate(specs):
        for end, key in ((e.source, "from"), (e.target, "to")):
            if end not in assets:
                raise PlantError(
                    path, e.line(key), f"topology[{i}].{key}", f"unknown asset {end!r}"
                )
        edges.append(Edge(e.source, e.target, e.kind, e.description))
        lines.append(e.line())
    _check_acyclic(path, edges, lines)
    return tuple(edges)


def _check_acyclic(path: Path, edges: Sequence[Edge], lines: list[int | None]) -> None:
    graph: dict[str, list[tuple[str, int]]] = {}
    for i, e in enumerate(edges):
        graph.setdefault(e.source, []).append((e.target, i))
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt, i in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], node, nxt] if nxt in trail else [node, nxt]
                raise PlantError(
                    path,
                    lines[i],
                    f"topology[{i}]",
                    f"topology cycle {' -> '.join(dict.fromkeys(cycle[:-1]))} -> {nxt}",
                )
            if state.get(nxt) is None:
                visit(nxt, [*trail, node])
        state[node] = 2

    for start in list(graph):
        if state.get(start) is None:
            visit(start, [])
