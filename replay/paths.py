"""Which PCIe resources a transfer crosses: (link, direction) pairs for replay.fabric.max_min."""

from __future__ import annotations

from fsm.topology import NodeKind, Topology
from replay.scenario import CPU

UP, DOWN = "up", "down"  # toward the root complex (device -> host), and away from it
BOTH = "both"  # a link's two directions together, where the scenario caps their sum (duplex_gbps)
LinkDir = tuple[str, str]  # (node whose uplink it is, UP | DOWN | BOTH): a fabric resource


def flow_links(topo: Topology, a: str, b: str) -> dict[tuple[str, str], int]:
    """(link, direction) resources a transfer from `a` to `b` crosses; "cpu" is host memory.

    A link is named by the node whose uplink it is. From a device toward host memory the bytes go
    up every link to its root complex (an NVMe read); from host memory to a device, down (a
    host-to-GPU copy). Between two devices under one switch: up from the source to the switch, then
    down to the destination (peer-to-peer); under different root complexes: through host memory.
    """
    if a == CPU and b == CPU:
        return {}
    if a == CPU:
        return {(n, DOWN): 1 for n in topo.path_links(b)}
    if b == CPU:
        return {(n, UP): 1 for n in topo.path_links(a)}
    ida, idb = topo.node(a).id, topo.node(b).id
    common = topo.lca(ida, idb)
    kind = topo.node(common).kind if common else None
    out: dict[tuple[str, str], int] = {}
    if common is None or kind in (NodeKind.NUMA, NodeKind.HOST):
        legs = [(n, UP) for n in topo.path_links(ida)] + [(n, DOWN) for n in topo.path_links(idb)]
    else:
        legs = []
        for dev, way in ((ida, UP), (idb, DOWN)):
            for n in topo.ancestors(dev):
                if n == common:
                    break
                legs.append((n, way))
    for leg in legs:
        out[leg] = out.get(leg, 0) + 1
    return out


def legs(path: list[str] | tuple[str, ...], way: str, capped: set[str] | frozenset[str]) -> dict[LinkDir, int]:
    """The resources of a transfer along `path` (nodes whose uplinks it crosses) in one direction,
    plus each link's both-directions resource where the scenario caps it (`capped`)."""
    out: dict[LinkDir, int] = {(n, way): 1 for n in path}
    for n in path:
        if n in capped:
            out[(n, BOTH)] = 1
    return out


def with_both(links: dict[LinkDir, int], capped: set[str] | frozenset[str]) -> dict[LinkDir, int]:
    """`links` plus the both-directions resource of every capped link they cross (once per crossing)."""
    if not capped:
        return links
    out = dict(links)
    for (n, way), m in links.items():
        if way != BOTH and n in capped:
            out[(n, BOTH)] = out.get((n, BOTH), 0) + m
    return out
