"""The PCIe tree a controller inside a VM sees, as against the host's ([scenario.signals] topology).

A hypervisor passes GPUs, NVMe drives and NICs through to a VM on virtual root ports: the guest's
sysfs and `nvidia-smi topo -m` show the virtual tree, not the host's switches (cloud VMs commonly
report PHB or SYS between every pair of GPUs). What the devices share on the host, and so who
slows whom, is then invisible or wrong. Two views, both keeping every device's id, kind, aliases,
NUMA node and its own link:

- `one-root`: every device behind one root complex (everything looks shared: PHB everywhere);
- `apart`: every device on a root complex of its own (nothing looks shared below the host: SYS).

The simulator keeps the host's tree for its physics; only the decision core gets the view.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from fsm.topology import HOST_ID, Node, NodeKind, Topology

TopologyView = Literal["exact", "one-root", "apart"]
_LEAVES = (NodeKind.GPU, NodeKind.NVME, NodeKind.NIC, NodeKind.OTHER)


def controller_view(topo: Topology, view: TopologyView) -> Topology:
    """`topo` as a VM of that kind shows it ("exact": as it is)."""
    if view == "exact":
        return topo
    leaves = [n for n in topo.nodes if n.kind in _LEAVES]
    cpus = tuple(sorted({c for n in topo.of_kind(NodeKind.NUMA) for c in n.cpus}))
    # one NUMA node: a VM's vNUMA rarely mirrors the host's, and its devices' affinity is its own
    nodes = [Node(HOST_ID, NodeKind.HOST, None), Node("vnuma0", NodeKind.NUMA, HOST_ID, numa=0, cpus=cpus)]
    if view == "one-root":
        nodes.append(Node("vrc0", NodeKind.ROOT_COMPLEX, "vnuma0", numa=0))
        nodes += [replace(n, parent="vrc0", numa=0) for n in leaves]
    else:
        for k, n in enumerate(leaves):
            nodes.append(Node(f"vrc{k}", NodeKind.ROOT_COMPLEX, "vnuma0", numa=0))
            nodes.append(replace(n, parent=f"vrc{k}", numa=0))
    return Topology(tuple(nodes))
