"""Why is a sensitive tenant's tail high? Cause, evidence and the aggressors on its path.

PCIe byte counters are per physical GPU (not per MIG instance), so attribution combines the
topology (who shares the victim's switch / root complex / NUMA node) with per-tenant cgroup I/O
and, for bulk tenants alone on a GPU, that GPU's PCIe bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from operator import attrgetter
from typing import Any

from fsm.evolve import field_setters
from fsm.observation import Observation, TenantSample
from fsm.spec import HostSpec, Role, TenantSpec
from fsm.topology import Tier


class Cause(StrEnum):
    IO = "io"
    COMPUTE = "compute"
    MEMORY = "memory"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Aggressor:
    tenant: str
    bps: float  # bytes/s it moves on the shared path
    tier: Tier | None  # how close its traffic is to the victim (None: location unknown)
    devices: tuple[tuple[str, float], ...]  # (device, bytes/s) it uses on that path
    throttleable: bool  # role allows a cap and it has a cgroup


# The figures behind a diagnosis' evidence: (the victim GPU's PCIe ratio or None when unknown,
# the shared path's bytes/s, the victim's I/O pressure, its SM and DRAM activity, its CPU pressure,
# the io, compute and memory scores).
Facts = tuple[float | None, float, float | None, float | None, float | None, float | None, float, float, float]


@dataclass(frozen=True, slots=True)
class Diagnosis:
    cause: Cause
    aggressors: tuple[Aggressor, ...] = ()
    facts: Facts | None = None

    def as_event(self) -> dict[str, Any]:
        """What an event shows of the diagnosis: its cause, then the evidence. Built on demand: most
        diagnoses lead to no event (a hold that says what the last one said), and this dict was a
        tenth of a diagnosis."""
        ev: dict[str, Any] = {"cause": _CAUSE_VALUE[self.cause]}
        if self.facts is None:
            return ev
        ratio, shared, io_pressure, sm, dram, cpu_pressure, io_score, compute_score, memory_score = self.facts
        ev["aggressors"] = [
            {"tenant": a.tenant, "bps": round(a.bps), "tier": _TIER_NAME[a.tier]} for a in self.aggressors[:8]
        ]
        if ratio is not None:
            ev["victim_pcie_ratio"] = round(ratio, 3)
        ev["shared_path_bps"] = round(shared)
        if io_pressure is not None:
            ev["victim_io_pressure"] = io_pressure
        ev["victim_sm_active"] = sm
        ev["victim_dram_active"] = dram
        if cpu_pressure is not None:
            ev["victim_cpu_pressure"] = cpu_pressure
        ev["scores"] = {"io": round(io_score, 3), "compute": round(compute_score, 3), "memory": round(memory_score, 3)}
        return ev


def victim_anchor(spec: HostSpec, obs: Observation, victim: TenantSpec) -> str | None:
    """The device whose PCIe path the victim's transfers use: its GPU (actual, else home)."""
    return _gpu_of(obs.tenants.get(victim.name), victim)


def tenant_gpu(spec: HostSpec, obs: Observation, t: TenantSpec) -> str | None:
    return _gpu_of(obs.tenants.get(t.name), t)


@dataclass(frozen=True, slots=True)
class Traffic:
    """Per-tick index of who moves bytes where: built once, read by diagnosis and placement."""

    items: dict[str, tuple[tuple[str, str, float], ...]]  # tenant -> (label, device, bytes/s)
    by_device: dict[str, list[str]] = field(default_factory=dict)  # device -> tenants with traffic on it
    memo: dict[Any, Any] = field(default_factory=dict)  # per-tick results shared across victims

    @staticmethod
    def build(spec: HostSpec, obs: Observation) -> Traffic:
        tenants = obs.tenants
        per_gpu: dict[str, int] | None = None  # tenants per GPU, counted once a bulk tenant needs it
        items: dict[str, tuple[tuple[str, str, float], ...]] = {}
        by_device: dict[str, list[str]] = {}
        for name, t, bulk in spec.derived("diagnosis.traffic-plan", _traffic_plan):
            ts = tenants.get(name)
            io = ts.io if ts is not None else None
            pcie = ts.pcie_bps if ts is not None else None
            if not io and not pcie and not (bulk and pcie is None):
                continue  # nothing of it to attribute (a sensitive tenant, most ticks)
            out: list[tuple[str, str, float]] = []
            if io:
                for dev, rate in sorted(io.items()) if len(io) > 1 else io.items():
                    bps = (rate.read_bps or 0.0) + (rate.write_bps or 0.0)  # IoRate.total_bps, inline
                    if bps > 0:
                        out.append((dev, dev, bps))
            # Host<->device traffic (PCIe bytes are per GPU): the tenant's own figure when the
            # source attributes it, else its GPU's when a bulk tenant is alone on that GPU.
            if pcie or (pcie is None and bulk):
                gpu = _gpu_of(ts, t)
                if pcie is None and gpu is not None:
                    if per_gpu is None:
                        per_gpu = _tenants_per_gpu(spec, obs)
                    if per_gpu.get(gpu) == 1:
                        gs = obs.gpus.get(gpu)
                        pcie = gs.pcie_bps if gs is not None else None
                if pcie and gpu is not None:
                    out.append((f"pcie:{gpu}", gpu, pcie))
            if out:
                items[name] = tuple(out)
                for _label, dev, _bps in out:
                    names = by_device.setdefault(dev, [])
                    if not names or names[-1] != name:
                        names.append(name)
        return Traffic(items, by_device)


def _traffic_plan(spec: HostSpec) -> tuple[tuple[str, TenantSpec, bool], ...]:
    """(name, spec, is a bulk tenant) of every tenant, by name: what Traffic.build walks."""
    return tuple((name, t, t.role is Role.BULK) for name, t in sorted(spec.tenants.items()))


def _gpu_of(ts: TenantSample | None, t: TenantSpec) -> str | None:
    """The tenant's GPU from its sample and spec: where it runs, else its home instance's, else its
    configured GPU (tenant_gpu, victim_anchor)."""
    if ts is not None and ts.instance is not None:
        return ts.instance.gpu
    return t.instance.gpu if t.instance is not None else t.gpu


def _tenants_per_gpu(spec: HostSpec, obs: Observation) -> dict[str, int]:
    per_gpu: dict[str, int] = {}
    tenants = obs.tenants
    for name, t in spec.tenants.items():
        g = _gpu_of(tenants.get(name), t)
        if g is not None:
            per_gpu[g] = per_gpu.get(g, 0) + 1
    return per_gpu


_PATH_MEMO_MAX = 10_000  # anchors and devices come from observations: keep the memo bounded


def _path_table(spec: HostSpec, anchor: str | None, limit: Tier) -> dict[str, tuple[bool, Tier | None]]:
    """device -> (does traffic on it share the path to `anchor`, its tier), filled as devices are
    seen: a pure function of the spec's topology, memoised per spec (HostSpec.derived)."""
    by_limit = spec.derived("diagnosis.on-path", _new_memo)
    by_anchor = by_limit.get(limit)
    if by_anchor is None:
        by_anchor = by_limit[limit] = {}
    table = by_anchor.get(anchor)
    if table is None:
        if len(by_anchor) >= _PATH_MEMO_MAX:
            by_anchor.clear()
        table = by_anchor[anchor] = {}
    return table


def _new_memo(spec: HostSpec) -> dict[Tier, dict[str | None, dict[str, tuple[bool, Tier | None]]]]:
    return {}


def _on_path(spec: HostSpec, table: dict[str, tuple[bool, Tier | None]], anchor: str | None, dev: str,
             limit: Tier) -> tuple[bool, Tier | None]:  # fmt: skip
    topo = spec.topology
    tier = topo.distance(anchor, dev) if anchor is not None else None
    if tier is None and anchor is not None and topo.has(anchor) and topo.has(dev):
        hit: tuple[bool, Tier | None] = (False, None)  # both known, on different trees: off the path
    else:
        # Unknown location: cannot be ruled out, so it counts (conservative on a VM).
        hit = (tier is None or tier <= limit, tier)
    if len(table) >= _PATH_MEMO_MAX:
        table.clear()
    table[dev] = hit
    return hit


def path_traffic(
    spec: HostSpec, traffic: Traffic, anchor: str | None, t: TenantSpec, max_tier: Tier | None = None
) -> Aggressor | None:
    """The traffic of tenant `t` that shares the path to `anchor` (at most `max_tier` away, by
    default the policy's io_share_tier), or None if it shares none."""
    items = traffic.items.get(t.name)
    if not items:
        return None
    limit = spec.policy.io_share_tier if max_tier is None else max_tier
    return _aggressor(spec, _path_table(spec, anchor, limit), items, anchor, t, limit)


def _aggressor(
    spec: HostSpec,
    table: dict[str, tuple[bool, Tier | None]],
    items: tuple[tuple[str, str, float], ...],
    anchor: str | None,
    t: TenantSpec,
    limit: Tier,
) -> Aggressor | None:
    devices: list[tuple[str, float]] = []
    closest: Tier | None = None  # _closest of the devices' tiers, as they are found
    total = 0.0
    for label, dev, bps in items:
        hit = table.get(dev)
        if hit is None:
            hit = _on_path(spec, table, anchor, dev, limit)
        if hit[0]:
            devices.append((label, bps))
            tier = hit[1]
            if tier is not None and (closest is None or tier < closest):
                closest = tier
            total += bps
    if total <= 0:
        return None
    # Aggressor(...) through its slots' own setters: __init__ of a frozen dataclass goes through
    # object.__setattr__, twice as dear, and one is built per victim and aggressor on every
    # escalation (the same value: tests/test_fsm_fastpaths.py compares with the plain rule's).
    a: Aggressor = _new(Aggressor)
    s_tenant, s_bps, s_tier, s_devices, s_throttleable = _AGGRESSOR_SET
    s_tenant(a, t.name)
    s_bps(a, total)
    s_tier(a, closest)
    s_devices(a, tuple(devices))
    s_throttleable(a, t.role in _CAPPABLE and t.cgroup is not None)
    return a


_AGGRESSOR_SET = field_setters(Aggressor)
_new = object.__new__


_CAPPABLE = (Role.BULK, Role.COMPUTE)
_BPS = attrgetter("bps")


def aggressors_for(spec: HostSpec, obs: Observation, victim: TenantSpec, traffic: Traffic) -> list[Aggressor]:
    """Tenants whose I/O shares the victim's path, most bytes first (closer first on ties)."""
    return list(_aggressors_at(spec, victim_anchor(spec, obs, victim), victim, traffic))


def path_busy(spec: HostSpec, obs: Observation, victim: TenantSpec, traffic: Traffic) -> bool:
    """Do the others' bytes on the victim's path make an I/O cause on this tick (high_bw_bps or
    more, as diagnose() scores them), not a trickle?"""
    shared = sum(map(_BPS, _aggressors_at(spec, victim_anchor(spec, obs, victim), victim, traffic)))
    return shared >= spec.policy.high_bw_bps


def _aggressors_at(spec: HostSpec, anchor: str | None, victim: TenantSpec, traffic: Traffic) -> tuple[Aggressor, ...]:
    """aggressors_for, once per victim and tick (the episode's path check, then its diagnosis)."""
    key = ("aggressors", anchor, victim.name)
    hit: tuple[Aggressor, ...] | None = traffic.memo.get(key)
    if hit is None:
        hit = traffic.memo[key] = _find_aggressors(spec, anchor, victim, traffic)
    return hit


def _find_aggressors(spec: HostSpec, anchor: str | None, victim: TenantSpec, traffic: Traffic) -> tuple[Aggressor, ...]:
    policy = spec.policy
    floor = policy.io_aggressor_min_bps
    limit = policy.io_share_tier
    table = _path_table(spec, anchor, limit)
    tenants = spec.tenants
    # Only a tenant with a device on the path can share it (path_traffic is None for the others):
    # look at the tick's few devices, not at every tenant. The sort below is total (the tenant name
    # breaks ties), so the order in which the candidates are found does not matter.
    candidates: set[str] = set()
    for dev, names in traffic.by_device.items():
        hit = table.get(dev)
        if hit is None:
            hit = _on_path(spec, table, anchor, dev, limit)
        if hit[0]:
            candidates.update(names)
    candidates.discard(victim.name)
    keyed = []  # (sort key, aggressor): most bytes first, then closer, then by name (unique)
    for name in candidates:
        t = tenants.get(name)
        if t is None:
            continue
        a = _aggressor(spec, table, traffic.items[name], anchor, t, limit)
        if a is not None and a.bps >= floor:
            keyed.append((-a.bps, a.tier if a.tier is not None else 9, name, a))
    keyed.sort()
    return tuple([k[3] for k in keyed])


def _link_bps(spec: HostSpec, anchor: str) -> float | None:
    """The PCIe link speed of the anchor's device (None: not in the topology), memoised per spec."""
    memo: dict[str, float | None] = spec.derived("diagnosis.link-bps", _new_link_memo)
    try:
        return memo[anchor]
    except KeyError:
        topo = spec.topology
        link = topo.node(anchor).link_bps if topo.has(anchor) else None
        if len(memo) >= _PATH_MEMO_MAX:  # anchors come from observations
            memo.clear()
        memo[anchor] = link
        return link


def _new_link_memo(spec: HostSpec) -> dict[str, float | None]:
    return {}


_CAUSE_VALUE = {c: c.value for c in Cause}  # an enum's .value runs Python code: dear in a cold event path
_TIER_NAME: dict[Tier | None, str | None] = {None: None, **{t: t.name.lower() for t in Tier}}  # .name: a property


def diagnose(spec: HostSpec, obs: Observation, victim: TenantSpec, traffic: Traffic | None = None) -> Diagnosis:
    policy = spec.policy
    anchor = victim_anchor(spec, obs, victim)
    aggressors = _aggressors_at(spec, anchor, victim, traffic or Traffic.build(spec, obs))
    # I/O pressure: the victim GPU's PCIe link busy, or the path busy with others' bytes.
    io_score = 0.0
    gpu = obs.gpus.get(anchor) if anchor else None
    link = _link_bps(spec, anchor) if anchor else None
    ratio = None
    if gpu is not None and gpu.pcie_bps is not None and link:
        ratio = gpu.pcie_bps / link
        io_score = max(io_score, ratio / policy.pcie_busy_ratio)
    shared = sum(map(_BPS, aggressors))
    if shared > 0:
        # A neighbour moving `high_bw_bps` on the victim's path is enough to stretch its transfers.
        io_score = max(io_score, shared / policy.high_bw_bps)
    ts = obs.tenants.get(victim.name)
    io_pressure = ts.io_pressure if ts is not None else None
    if io_pressure is not None:
        io_score = max(io_score, io_pressure / 0.25)
    # Compute / memory: the victim's own MIG instance saturated, or CPU pressure.
    sm = dram = None
    if gpu is not None:
        inst = ts.instance if ts is not None and ts.instance is not None else victim.instance
        if inst is not None:
            m = gpu.instances.get(f"{inst.profile}@{inst.start}")
            if m is not None:
                sm, dram = m.sm_active, m.dram_active
        if sm is None and inst is None:
            sm, dram = gpu.sm_active, gpu.dram_active
    compute_score = (sm / policy.sm_busy) if sm is not None else 0.0
    cpu_pressure = ts.cpu_pressure if ts is not None else None
    if cpu_pressure is not None:
        compute_score = max(compute_score, cpu_pressure / 0.25)
    memory_score = (dram / policy.dram_busy) if dram is not None else 0.0
    # The first of the highest scores (max() over io, compute, memory), if it reaches 1.
    best, cause = io_score, Cause.IO
    if compute_score > best:
        best, cause = compute_score, Cause.COMPUTE
    if memory_score > best:
        best, cause = memory_score, Cause.MEMORY
    if not best >= 1.0:
        cause = Cause.UNKNOWN
    facts = (ratio, shared, io_pressure, sm, dram, cpu_pressure, io_score, compute_score, memory_score)
    return Diagnosis(cause, aggressors, facts)
