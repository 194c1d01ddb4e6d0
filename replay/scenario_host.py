"""A scenario's host ([[hosts]] of the file) resolved into HostModels: its PCIe tree, GPUs with their
MIG layouts, tenants as the decision core sees them, and the cross-checks of what refers to what
(parents, paths, devices, CPU lists, GPU models, MIG profiles and placements from fsm.mig). Every
problem names the dotted key, e.g.
`hosts[0](p4d).nodes[4](gpu0).layout[1]: GPU model A100-SXM4-40GB has no MIG profile '1g.10gb'`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from fsm.mig import GpuModel, Slot, layout_problems, model_by_name
from fsm.observation import InstanceRef
from fsm.spec import HostSpec, Policy, TenantSpec
from fsm.topology import HOST_ID, Node, NodeKind, Topology
from replay.scenario_schema import CPU, FlowConfig, HostConfig, Requests, ScenarioMeta, TenantConfig
from schema.names import NAME_PATTERN, NAME_RULE


@dataclass(frozen=True, slots=True)
class HostModel:
    name: str
    spec: HostSpec  # levers all on; the runner switches them per policy
    layouts: dict[str, tuple[Slot, ...]]
    models: dict[str, GpuModel]
    tenants: dict[str, TenantConfig]
    base_dir: Path  # for relative trace paths
    # PCIe is full duplex: (node id, "up" | "down") -> bytes/s of that node's uplink in that direction.
    capacity: dict[tuple[str, str], float] = field(default_factory=dict)
    # The host's PCIe tree, which the simulator's physics runs on; spec.topology is what the
    # controller sees of it ([scenario.signals] topology). None: the same.
    physical: Topology | None = None

    @property
    def topology(self) -> Topology:
        return self.physical if self.physical is not None else self.spec.topology


def cpu_list(text: str) -> tuple[int, ...]:
    """A Linux CPU list ("0-23,48-71") as CPU numbers."""
    return _cpus(text)


# The bound of the daemon's topology readers (controller/topology.py MAX_CPUS, which replay may not
# import): far above any host (Linux's NR_CPUS tops out at 8192). "0-4000000000" was a MemoryError.
MAX_CPUS = 65536


def _cpus(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)  # ASCII digits (\d took "١")
        if not m:
            raise ValueError(f"bad CPU list {text[:40]!r}: expected e.g. 0-23,48-71")
        big = next((g for g in m.groups() if g is not None and (len(g) > 6 or int(g) >= MAX_CPUS)), None)
        if big is not None:  # at most 6 digits before int(): int() of 5,000 digits raises its own error
            raise ValueError(f"CPU {big[:20]} in {part[:40]!r}: CPU numbers go up to {MAX_CPUS - 1}")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise ValueError(f"bad CPU range {part!r}: the first CPU is past the last")
        out.extend(range(a, b + 1))
        if len(out) > MAX_CPUS:  # each range is bounded, their number is not
            raise ValueError(f"more than {MAX_CPUS} CPUs in {text[:40]!r}...")
    return tuple(out)


# What each kind of node may hang off: kinds nest host > numa > root_complex > switch* > device. A
# level may be skipped, as the daemon's topology readers skip it (a device alone on its root port
# hangs off its NUMA node: controller/topology.py), and `scenario from-trace` writes their trees.
_PARENT_KINDS = {
    "numa": ("host",),
    "root_complex": ("host", "numa"),
    "switch": ("host", "numa", "root_complex", "switch"),
    "gpu": ("host", "numa", "root_complex", "switch"),
    "nvme": ("host", "numa", "root_complex", "switch"),
    "nic": ("host", "numa", "root_complex", "switch"),
}
_DEVICE_KINDS = ("gpu", "nvme", "nic")  # what a flow may end at (or `cpu`)


def resolve_host(h: HostConfig, i: int, file: str, problems: list[str]) -> list[HostModel]:
    where = f"hosts[{i}]({h.name})"
    nodes: list[Node] = [Node(HOST_ID, NodeKind.HOST, None)]
    ids = {HOST_ID}
    kinds = {HOST_ID: "host"}
    numa_at: dict[int, str] = {}  # numa index -> node id
    alias_of: dict[str, str] = {}  # alias -> node id
    layouts: dict[str, tuple[Slot, ...]] = {}
    models: dict[str, GpuModel] = {}
    capacity: dict[tuple[str, str], float] = {}
    for j, n in enumerate(h.nodes):
        nw = f"{where}.nodes[{j}]({n.id})"
        if n.id in ids or n.id == CPU:
            problems.append(f"{nw}.id: duplicate or reserved node id {n.id!r}")
            continue
        parent = n.parent if n.kind != "numa" else (n.parent or HOST_ID)
        if parent is None:
            problems.append(f"{nw}.parent: a {n.kind} needs a parent")
            continue
        if parent not in ids:
            problems.append(f"{nw}.parent: unknown node {parent!r} (parents must come first)")
            continue
        if kinds[parent] not in _PARENT_KINDS[n.kind]:
            problems.append(
                f"{nw}.parent: a {kinds[parent]} ({parent!r}): a {n.kind} hangs off a "
                f"{' or '.join(_PARENT_KINDS[n.kind]).replace(' or ', ', ', len(_PARENT_KINDS[n.kind]) - 2)}"
                " (kinds nest host > numa > root_complex > switch > device)"
            )  # kept in the tree all the same: what refers to it is not refused for it
        if n.kind == "numa" and n.index is not None:
            if n.index in numa_at:
                problems.append(f"{nw}.index: NUMA node {n.index} is {numa_at[n.index]!r} already")
            numa_at.setdefault(n.index, n.id)
        for k, a in enumerate(n.aliases):
            other = alias_of.get(a, a if a in ids else None)
            if other is not None and other != n.id:
                problems.append(f"{nw}.aliases[{k}]: {a!r} already names node {other!r}")
            alias_of.setdefault(a, n.id)
        cpus: tuple[int, ...] = ()
        if n.cpus:
            try:
                cpus = _cpus(n.cpus)
            except ValueError as e:
                problems.append(f"{nw}.cpus: {e}")
        if n.kind == "numa" and n.index is None:
            problems.append(f"{nw}.index: a numa node needs its index")
        if n.kind == "gpu":
            if n.model is None:
                problems.append(f"{nw}.model: a gpu needs its model")
                continue
            try:
                model = model_by_name(n.model)
            except KeyError as e:
                problems.append(f"{nw}.model: {e.args[0]}")
                continue
            models[n.id] = model
            slots: list[Slot] = []
            for k, text in enumerate(n.layout or []):
                try:
                    s = Slot.parse(text)
                except ValueError as e:
                    problems.append(f"{nw}.layout[{k}]: {e}")
                    continue
                if not model.has_profile(s.profile):
                    problems.append(f"{nw}.layout[{k}]: GPU model {model.key} has no MIG profile {s.profile!r}")
                    continue
                slots.append(s)
            for p in layout_problems(model, slots):
                problems.append(f"{nw}.layout: {p}")
            layouts[n.id] = tuple(sorted(slots))
        elif n.model is not None or n.layout is not None:
            problems.append(f"{nw}: model and layout are for gpu nodes only")
        link = n.link_gbps * 1e9 if n.link_gbps is not None else None
        if link is None and (n.up_gbps is not None or n.down_gbps is not None or n.duplex_gbps is not None):
            problems.append(f"{nw}.link_gbps: up_gbps / down_gbps / duplex_gbps refine link_gbps, which is missing")
        elif link is not None:
            up = capacity[(n.id, "up")] = n.up_gbps * 1e9 if n.up_gbps is not None else link
            down = capacity[(n.id, "down")] = n.down_gbps * 1e9 if n.down_gbps is not None else link
            if n.duplex_gbps is not None:
                both = n.duplex_gbps * 1e9
                if not max(up, down) <= both <= up + down:
                    problems.append(
                        f"{nw}.duplex_gbps: {n.duplex_gbps:g} must lie between the larger direction "
                        f"({max(up, down) / 1e9:g}) and both together ({(up + down) / 1e9:g})"
                    )
                capacity[(n.id, "both")] = both
        kind = NodeKind(n.kind)
        nodes.append(
            Node(
                n.id,
                kind,
                parent,
                link_bps=link,
                numa=n.index if kind is NodeKind.NUMA else None,
                cpus=cpus,
                bdf=n.bdf,
                model=models[n.id].key if n.id in models else None,
                aliases=tuple(n.aliases),
            )
        )
        ids.add(n.id)
        kinds[n.id] = n.kind
    for nid in kinds:
        if alias_of.get(nid, nid) != nid:  # an alias given before the node of that id
            problems.append(f"{where}.nodes: node id {nid!r} is also an alias of node {alias_of[nid]!r}")
    try:
        topo = Topology(tuple(nodes))
    except ValueError as e:
        problems.append(f"{where}.nodes: {e}")
        return []
    tenants: dict[str, TenantSpec] = {}
    used: dict[InstanceRef, str] = {}
    for j, t in enumerate(h.tenants):
        tw = f"{where}.tenants[{j}]({t.name})"
        if t.name in tenants:
            problems.append(f"{tw}.name: duplicate tenant name")
            continue
        inst = None
        if t.instance is not None:
            try:
                inst = InstanceRef.parse(t.instance)
            except ValueError as e:
                problems.append(f"{tw}.instance: {e}")
            if inst is not None:
                if inst.gpu not in models:
                    problems.append(f"{tw}.instance: no gpu {inst.gpu!r} on this host")
                elif not models[inst.gpu].has_profile(inst.profile):
                    problems.append(
                        f"{tw}.instance: GPU model {models[inst.gpu].key} has no MIG profile {inst.profile!r}"
                    )
                elif inst.slot not in layouts.get(inst.gpu, ()):
                    problems.append(f"{tw}.instance: {inst.slot} is not in {inst.gpu}'s layout")
                elif inst in used:
                    problems.append(f"{tw}.instance: {inst} is already {used[inst]}'s")
                else:
                    used[inst] = t.name
                    _check_kv(t.requests, models[inst.gpu], inst.profile, f"{tw}.requests", problems)
        for k, f in enumerate(t.flows):
            _check_flow(f, topo, f"{tw}.flows[{k}].path", problems)
        for r, rr in enumerate(t.reroute):
            for k, f in enumerate(rr.flows):
                _check_flow(f, topo, f"{tw}.reroute[{r}].flows[{k}].path", problems)
        for k, d in enumerate(t.devices):
            if not topo.has(d):
                problems.append(f"{tw}.devices[{k}]: unknown device {d!r}")
            elif (dkind := topo.node(d).kind.value) not in _DEVICE_KINDS:
                problems.append(f"{tw}.devices[{k}]: {d!r} is a {dkind}, not a device (gpu, nvme, nic)")
        if t.cpus is not None:
            _check_cpus(t.cpus, topo, f"{tw}.cpus", problems)
        tenants[t.name] = TenantSpec(
            name=t.name,
            role=t.role,
            cgroup=t.cgroup,
            gpu=inst.gpu if inst else None,
            instance=inst,
            slo_s=t.slo_ms / 1000.0 if t.slo_ms is not None else None,
            quantile=t.quantile,
            devices=tuple(t.devices),
            mps=t.mps,
        )
    out = []
    for c in range(h.copies):
        name = h.name if h.copies == 1 else f"{h.name}-{c}"
        if c == h.copies - 1 and not NAME_PATTERN.match(name):  # the copies' names too: p4d-63
            problems.append(f"{where}.name: with copies = {h.copies}, {name!r}: {NAME_RULE}")
            return []
        spec = HostSpec(topo, tenants, Policy(), {g: m.key for g, m in models.items()})
        out.append(
            HostModel(
                name,
                spec,
                dict(layouts),
                dict(models),
                {t.name: t for t in h.tenants},
                Path(file).parent,
                dict(capacity),
            )
        )
    return out


def _check_flow(f: FlowConfig, topo: Topology, where: str, problems: list[str]) -> None:
    """A flow runs between two devices, or a device and host memory (`cpu`)."""
    ends = []
    for end in f.path:
        if end == CPU:
            ends.append(CPU)
            continue
        if not topo.has(end):
            problems.append(f"{where}: unknown device {end!r}")
            return
        node = topo.node(end)
        if node.kind.value not in _DEVICE_KINDS:
            problems.append(f"{where}: {end!r} is a {node.kind.value}: a flow ends at a device (gpu, nvme, nic) or cpu")
            return
        ends.append(node.id)
    if ends[0] == ends[1]:
        what = "host memory at both ends" if ends[0] == CPU else f"{f.path[0]!r} at both ends"
        problems.append(f"{where}: {what}: a flow runs between two devices, or a device and cpu")


def kv_fits(req: Requests | None, model: GpuModel, profile: str) -> bool:
    """Whether the KV cache has room for one block on an instance of `profile` (vLLM starts)."""
    if req is None or req.kv_bytes_per_token <= 0:
        return True
    mem = model.profile(profile).gib * 2**30 * req.gpu_memory_utilization
    return mem - (req.weights_gb + req.overhead_gb) * 1e9 >= req.kv_bytes_per_token * req.kv_block_tokens


def _check_cpus(text: str, topo: Topology, where: str, problems: list[str]) -> None:
    try:
        cpus = _cpus(text)
    except ValueError as e:
        problems.append(f"{where}: {e}")
        return
    if not cpus:
        problems.append(f"{where}: no CPUs")
        return
    host = {c for n in topo.of_kind(NodeKind.NUMA) for c in n.cpus}
    stray = sorted(set(cpus) - host) if host else []
    if stray:
        problems.append(f"{where}: CPU {stray[0]} is on no NUMA node of this host")


def _check_kv(req: Requests | None, model: GpuModel, profile: str, where: str, problems: list[str]) -> None:
    """The KV cache must have room on the tenant's home instance (vLLM would not start otherwise)."""
    if req is None or kv_fits(req, model, profile):
        return
    mem = model.profile(profile).gib * 2**30 * req.gpu_memory_utilization
    problems.append(
        f"{where}.weights_gb: weights_gb + overhead_gb = {req.weights_gb + req.overhead_gb:g} GB leave no KV "
        f"cache on {profile} ({mem / 1e9:.1f} GB at gpu_memory_utilization {req.gpu_memory_utilization:g})"
    )


def tenant_outages(h: HostModel, meta: ScenarioMeta) -> dict[str, TenantSpec]:
    """What a move costs each tenant in this simulator, told to the decision core in the same terms
    (the simulator charges fsm.outage.move_timeline with the same figures)."""
    out = {}
    for name, ts in h.spec.tenants.items():
        cfg = h.tenants[name]
        relaunch = cfg.relaunch_s if cfg.relaunch_s is not None else meta.relaunch_s
        wait = meta.actuation.readiness_wait(relaunch)
        out[name] = replace(
            ts,
            relaunch_s=relaunch,
            reconfig_s=meta.reconfig_s,
            handover=cfg.handover or meta.handover,
            handover_gap_s=meta.handover_gap_s,
            # the simulated launcher's wait (replay.actuation); none set: it waits out the relaunch
            readiness_timeout_s=wait if wait is not None else relaunch,
        )
    return out
