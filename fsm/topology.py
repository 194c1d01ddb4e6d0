"""Host topology: the PCIe tree under the NUMA nodes, and the distance between two devices.

Distance is the tier of the lowest common ancestor (LCA), the idea behind Volcano HyperNode tiers
and `nvidia-smi topo -m` relations:

    tier 0  same device (X)
    tier 1  same PCIe switch (PIX / PXB)
    tier 2  same root complex / host bridge (PHB)
    tier 3  same NUMA node (NODE)
    tier 4  across the SMP interconnect (SYS)

Discovery (sysfs, `nvidia-smi topo -m`) lives in controller/topology.py; this module only holds the
model and the queries the decision core needs, with constructors usable from tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum


class Tier(IntEnum):
    SELF = 0
    SWITCH = 1
    ROOT_COMPLEX = 2
    NUMA = 3
    SYSTEM = 4


class NodeKind(StrEnum):
    HOST = "host"  # the root of the tree (the SMP interconnect)
    NUMA = "numa"
    ROOT_COMPLEX = "root_complex"
    SWITCH = "switch"
    GPU = "gpu"
    NVME = "nvme"
    NIC = "nic"
    OTHER = "other"


# The tier that a common ancestor of each kind stands for.
_TIER_OF_KIND = {
    NodeKind.HOST: Tier.SYSTEM,
    NodeKind.NUMA: Tier.NUMA,
    NodeKind.ROOT_COMPLEX: Tier.ROOT_COMPLEX,
    NodeKind.SWITCH: Tier.SWITCH,
}

HOST_ID = "host"


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    kind: NodeKind
    parent: str | None
    # Capacity of the link from this node up to its parent, bytes/s (None: not modelled).
    link_bps: float | None = None
    numa: int | None = None
    cpus: tuple[int, ...] = ()
    bdf: str | None = None  # PCI bus id, e.g. 0000:10:1c.0
    model: str | None = None  # GPU model key or device model
    aliases: tuple[str, ...] = ()  # other names: block device names, MAJ:MIN, NIC names


@dataclass(frozen=True, slots=True)
class Topology:
    nodes: tuple[Node, ...]
    _index: dict[str, Node] = field(default_factory=dict, compare=False, repr=False)
    _alias: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    _chain: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)
    _dist: dict[tuple[str, str], Tier | None] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        index: dict[str, Node] = {}
        for n in self.nodes:
            if n.id in index:
                raise ValueError(f"topology: duplicate node id {n.id!r}")
            index[n.id] = n
        for n in self.nodes:
            if n.parent is not None and n.parent not in index:
                raise ValueError(f"topology: node {n.id!r} has unknown parent {n.parent!r}")
        alias: dict[str, str] = {}
        for n in self.nodes:
            for a in n.aliases:
                alias.setdefault(a, n.id)
        chain: dict[str, tuple[str, ...]] = {}
        for n in self.nodes:
            seen: list[str] = []
            cur: Node | None = n
            while cur is not None:
                if cur.id in seen:
                    raise ValueError(f"topology: cycle through {cur.id!r}")
                seen.append(cur.id)
                cur = index[cur.parent] if cur.parent is not None else None
            chain[n.id] = tuple(seen)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_alias", alias)
        object.__setattr__(self, "_chain", chain)

    # -- lookups ---------------------------------------------------------------------------
    def resolve(self, name: str) -> str | None:
        """Node id for a node id or alias (block device name, MAJ:MIN, NIC name), else None."""
        if name in self._index:
            return name
        return self._alias.get(name)

    def node(self, name: str) -> Node:
        nid = self.resolve(name)
        if nid is None:
            raise KeyError(f"topology has no device {name!r}")
        return self._index[nid]

    def has(self, name: str) -> bool:
        return self.resolve(name) is not None

    def ancestors(self, name: str) -> tuple[str, ...]:
        """The chain from the device up to the root, the device itself first."""
        return self._chain[self.node(name).id]

    def children(self, node_id: str) -> list[Node]:
        return [n for n in self.nodes if n.parent == node_id]

    def of_kind(self, kind: NodeKind) -> list[Node]:
        return [n for n in self.nodes if n.kind == kind]

    @property
    def gpus(self) -> list[Node]:
        return self.of_kind(NodeKind.GPU)

    def numa_of(self, name: str) -> int | None:
        for nid in self.ancestors(name):
            n = self._index[nid]
            if n.numa is not None:
                return n.numa
        return None

    def cpus_of(self, name: str) -> tuple[int, ...]:
        for nid in self.ancestors(name):
            n = self._index[nid]
            if n.cpus:
                return n.cpus
        return ()

    def enclosing(self, name: str, kind: NodeKind) -> str | None:
        for nid in self.ancestors(name):
            if self._index[nid].kind == kind:
                return nid
        return None

    # -- distance ----------------------------------------------------------------------------
    def lca(self, a: str, b: str) -> str | None:
        chain_a = self.ancestors(a)
        in_b = set(self.ancestors(b))
        for nid in chain_a:
            if nid in in_b:
                return nid
        return None

    def distance(self, a: str, b: str) -> Tier | None:
        """Tier of the lowest common ancestor; None when either device is unknown."""
        key = (a, b)
        if key not in self._dist:
            if len(self._dist) > 100_000:  # names come from observations: keep the memo bounded
                self._dist.clear()
            self._dist[key] = self._distance(a, b)  # a pure memo: the tree never changes
        return self._dist[key]

    def _distance(self, a: str, b: str) -> Tier | None:
        if not (self.has(a) and self.has(b)):
            return None
        ida, idb = self.node(a).id, self.node(b).id
        if ida == idb:
            return Tier.SELF
        common = self.lca(ida, idb)
        if common is None:
            return Tier.SYSTEM
        kind = self._index[common].kind
        if kind in _TIER_OF_KIND:
            return _TIER_OF_KIND[kind]
        # The LCA is a device itself (one is under the other), e.g. a bridge modelled as OTHER.
        return Tier.SWITCH

    def path_links(self, name: str, stop_at: str | None = None) -> list[str]:
        """Nodes whose uplink a transfer from `name` to the CPU crosses (device to root complex)."""
        out = []
        for nid in self.ancestors(name):
            n = self._index[nid]
            if nid == stop_at or n.kind in (NodeKind.NUMA, NodeKind.HOST):
                break
            out.append(nid)
        return out

    def devices_near(self, name: str, max_tier: Tier) -> Iterator[Node]:
        for n in self.nodes:
            if n.kind in (NodeKind.GPU, NodeKind.NVME, NodeKind.NIC):
                d = self.distance(name, n.id)
                if d is not None and d <= max_tier and n.id != self.node(name).id:
                    yield n


class TopologyBuilder:
    """Fluent constructor for tests and scenarios:

    TopologyBuilder().numa(0, cpus=range(0, 24)).root_complex("rc0", numa=0)
        .switch("sw0", "rc0").gpu("gpu0", "sw0", model="A100-SXM4-40GB").build()
    """

    def __init__(self) -> None:
        self._nodes: list[Node] = [Node(HOST_ID, NodeKind.HOST, None)]

    def _add(self, node: Node) -> TopologyBuilder:
        self._nodes.append(node)
        return self

    def numa(self, index: int, cpus: Iterable[int] = (), node_id: str | None = None) -> TopologyBuilder:
        return self._add(Node(node_id or f"numa{index}", NodeKind.NUMA, HOST_ID, numa=index, cpus=tuple(cpus)))

    def root_complex(self, node_id: str, numa: int | str, link_bps: float | None = None) -> TopologyBuilder:
        parent = numa if isinstance(numa, str) else f"numa{numa}"
        return self._add(Node(node_id, NodeKind.ROOT_COMPLEX, parent, link_bps=link_bps))

    def switch(self, node_id: str, parent: str, link_bps: float | None = None) -> TopologyBuilder:
        return self._add(Node(node_id, NodeKind.SWITCH, parent, link_bps=link_bps))

    def gpu(
        self,
        node_id: str,
        parent: str,
        model: str | None = None,
        link_bps: float | None = None,
        bdf: str | None = None,
        aliases: Iterable[str] = (),
    ) -> TopologyBuilder:
        return self._add(
            Node(node_id, NodeKind.GPU, parent, link_bps=link_bps, bdf=bdf, model=model, aliases=tuple(aliases))
        )

    def nvme(
        self, node_id: str, parent: str, link_bps: float | None = None, aliases: Iterable[str] = ()
    ) -> TopologyBuilder:
        return self._add(Node(node_id, NodeKind.NVME, parent, link_bps=link_bps, aliases=tuple(aliases)))

    def nic(
        self, node_id: str, parent: str, link_bps: float | None = None, aliases: Iterable[str] = ()
    ) -> TopologyBuilder:
        return self._add(Node(node_id, NodeKind.NIC, parent, link_bps=link_bps, aliases=tuple(aliases)))

    def node(self, node: Node) -> TopologyBuilder:
        return self._add(node)

    def build(self) -> Topology:
        return Topology(tuple(self._nodes))


def empty_topology() -> Topology:
    """A host we know nothing about (e.g. a VM without sysfs PCIe detail)."""
    return Topology((Node(HOST_ID, NodeKind.HOST, None),))
