"""Where should a victim go? A penalty per candidate MIG instance, with its components.

penalty = w_rc   * bandwidth of other tenants sharing the candidate GPU's root complex / link
        + w_numa * block I/O on the candidate's NUMA node / norm
        + w_irq  * mean IRQ rate on the candidate's local cores / norm
        + w_move * cost of the move (0 staying, 0.3 same GPU, move_other_gpu another GPU)
        - size bonus for a bigger slice when the cause is compute or memory
Same GPU first falls out of the move cost. Among candidates of equal penalty (the instances of one
GPU share their path terms), the next size up the resize ladder comes first when
`move_step_up`, then the victim's own size, then larger ones, then the name: the move pays its
outage once, and a bigger slice's shorter service time lowers the queue's tail whatever the cause
(a later resize would cost another outage for the same step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import itemgetter

from fsm.diagnosis import Cause, Traffic
from fsm.mig import GpuModel, model_by_name
from fsm.observation import InstanceRef, Observation
from fsm.spec import HostSpec, Policy, TenantSpec
from fsm.topology import NodeKind

SAME_GPU_MOVE = 0.3


@dataclass(frozen=True, slots=True)
class Score:
    instance: InstanceRef
    penalty: float
    root_complex: float
    numa_block: float
    irq: float
    move: float
    size: float

    def as_evidence(self) -> dict[str, object]:
        return {
            "instance": str(self.instance),
            "penalty": round(self.penalty, 4),
            "root_complex": round(self.root_complex, 4),
            "numa_block": round(self.numa_block, 4),
            "irq": round(self.irq, 4),
            "move": round(self.move, 4),
            "size": round(self.size, 4),
        }


def gpu_model(spec: HostSpec, gpu: str) -> GpuModel | None:
    """The MIG profile table in force for a GPU: its driver's listing, else its model's built-in one."""
    memo = spec.derived("placement.gpu-model", _new_memo)
    try:
        return memo[gpu]
    except KeyError:
        pass
    found = _gpu_model(spec, gpu)
    if len(memo) < 4096:  # GPU names can come from observations: bounded
        memo[gpu] = found
    return found


def _new_memo(spec: HostSpec) -> dict[str, GpuModel | None]:
    return {}


def _gpu_model(spec: HostSpec, gpu: str) -> GpuModel | None:
    table = spec.mig_tables.get(gpu)
    if table is not None:
        return table
    key = spec.gpu_models.get(gpu)
    if key is None and spec.topology.has(gpu):
        key = spec.topology.node(gpu).model
    if key is None:
        return None
    try:
        return model_by_name(key)
    except KeyError:
        return None


def slices_of(spec: HostSpec, inst: InstanceRef) -> int:
    model = gpu_model(spec, inst.gpu)
    if model is None:
        return 0
    try:
        return model.profile(inst.profile).slices
    except KeyError:  # model.has_profile: no such profile on it
        return 0


def occupied(spec: HostSpec, obs: Observation) -> set[InstanceRef]:
    """Instances a tenant runs on now (actual, else its home instance)."""
    out = set()
    for t in spec.tenants.values():
        ts = obs.tenants.get(t.name)
        inst = ts.instance if ts is not None and ts.instance is not None else t.instance
        if inst is not None:
            out.add(inst)
    return out


def free_instances(spec: HostSpec, obs: Observation, reserved: Iterable[InstanceRef]) -> list[InstanceRef]:
    taken = occupied(spec, obs) | set(reserved)
    # (gpu, profile, start): tuples hash and compare in C, InstanceRefs in Python (same equality).
    taken_keys = {(i.gpu, i.profile, i.start) for i in taken}
    refs = spec.derived("placement.refs", _new_refs)
    out = []
    for gpu_name in sorted(obs.gpus):
        g = obs.gpus[gpu_name]
        if g.lost or g.layout is None:
            continue
        for slot in g.layout:
            key = (gpu_name, slot.profile, slot.start)
            if key in taken_keys:
                continue
            ref = refs.get(key)
            if ref is None:  # one InstanceRef per instance and spec, not one per tick (same value)
                ref = InstanceRef(gpu_name, slot.profile, slot.start)
                if len(refs) < 100_000:
                    refs[key] = ref
            out.append(ref)
    return out


def _new_refs(spec: HostSpec) -> dict[tuple[str, str, int], InstanceRef]:
    return {}


def rc_traffic(spec: HostSpec, traffic: Traffic, gpu: str) -> dict[str, float]:
    """Bytes/s per tenant on `gpu`'s root complex (tenants moving at least io_aggressor_min_bps):
    path_traffic(..., Tier.ROOT_COMPLEX) for every tenant, from a per-tick index by root complex
    (one pass over the traffic instead of one per GPU and tenant). Traffic whose device the
    topology does not know counts everywhere, as in path_traffic."""
    topo = spec.topology
    idx = traffic.memo.get("rc-index")
    if idx is None:
        by_rc: dict[str, dict[str, float]] = {}
        anywhere: dict[str, float] = {}
        for name, items in traffic.items.items():
            for _label, dev, bps in items:
                if not topo.has(dev):
                    anywhere[name] = anywhere.get(name, 0.0) + bps
                    continue
                rc = topo.enclosing(dev, NodeKind.ROOT_COMPLEX)
                if rc is not None:
                    d = by_rc.setdefault(rc, {})
                    d[name] = d.get(name, 0.0) + bps
        idx = traffic.memo["rc-index"] = (by_rc, anywhere)
    by_rc, anywhere = idx
    if not topo.has(gpu):  # nothing can be ruled out
        per = {n: sum(b for _, _, b in items) for n, items in traffic.items.items()}
    else:
        rc = topo.enclosing(gpu, NodeKind.ROOT_COMPLEX)
        per = dict(by_rc.get(rc, {})) if rc is not None else {}
        for n, b in anywhere.items():
            per[n] = per.get(n, 0.0) + b
    floor = spec.policy.io_aggressor_min_bps
    return {n: b for n, b in per.items() if n in spec.tenants and b >= floor}


def _gpu_terms(
    spec: HostSpec, obs: Observation, traffic: Traffic, gpu: str, victim: TenantSpec
) -> tuple[float, float, float]:
    topo = spec.topology
    policy = spec.policy
    # Everybody's traffic that shares this GPU's root complex, once per tick; minus the victim's.
    key = ("rc", gpu)
    hit = traffic.memo.get(key)
    if hit is None:
        per = rc_traffic(spec, traffic, gpu)
        hit = traffic.memo[key] = (per, sum(per.values()))  # the same sum, in the same order
    per_tenant, everybody = hit
    if victim.name in per_tenant:
        rc_bps = sum(bps for name, bps in per_tenant.items() if name != victim.name)
    else:
        rc_bps = everybody  # a victim without traffic here: the sum above, once per GPU and tick
    rc = rc_bps / policy.high_bw_bps
    # The host terms do not depend on the victim: once per GPU per tick.
    hkey = ("host", gpu)
    if hkey not in traffic.memo:
        numa = topo.numa_of(gpu) if topo.has(gpu) else None
        block = 0.0
        irq = 0.0
        if obs.host is not None:
            if numa is not None:
                by_numa = traffic.memo.get("block-by-numa")
                if by_numa is None:
                    by_numa = {}
                    for dev, bps in obs.host.block_bps.items():
                        if topo.has(dev):
                            k = topo.numa_of(dev)
                            by_numa[k] = by_numa.get(k, 0.0) + bps
                    traffic.memo["block-by-numa"] = by_numa
                block = by_numa.get(numa, 0.0)
            cpus = topo.cpus_of(gpu) if topo.has(gpu) else ()
            rates = [obs.host.irq_rate[c] for c in cpus if c in obs.host.irq_rate]
            if rates:
                irq = sum(rates) / len(rates)
        traffic.memo[hkey] = (block / policy.block_io_norm_bps, irq / policy.irq_norm_rate)
    block_n, irq_n = traffic.memo[hkey]
    return rc, block_n, irq_n


def _cost(
    policy: Policy,
    current: InstanceRef | None,
    cand: InstanceRef,
    terms: tuple[float, float, float],
    size_gain: int,
) -> tuple[float, float, float]:
    """(move, size, penalty) of `cand` from its GPU's terms and the slices it adds (0 unless the
    cause is compute or memory): the one penalty formula of the module docstring."""
    rc, numa, irq = terms
    if current is None or cand == current:
        move = 0.0
    elif cand.gpu == current.gpu:
        move = SAME_GPU_MOVE
    else:
        move = policy.move_other_gpu
    size = max(0, size_gain) / 7.0
    penalty = policy.w_root_complex * rc + policy.w_numa_block * numa + policy.w_irq * irq + policy.w_move * move - size
    return move, size, penalty


def score(
    spec: HostSpec,
    obs: Observation,
    victim: TenantSpec,
    current: InstanceRef | None,
    cand: InstanceRef,
    cause: Cause,
    traffic: Traffic,
    cache: dict[str, tuple[float, float, float]],
) -> Score:
    if cand.gpu not in cache:
        cache[cand.gpu] = _gpu_terms(spec, obs, traffic, cand.gpu, victim)
    terms = cache[cand.gpu]
    gain = 0
    if cause in (Cause.COMPUTE, Cause.MEMORY) and current is not None:
        gain = slices_of(spec, cand) - slices_of(spec, current)
    move, size, penalty = _cost(spec.policy, current, cand, terms, gain)
    return Score(cand, penalty, *terms, move, size)


def _free_groups(
    spec: HostSpec, obs: Observation
) -> list[tuple[str, list[tuple[int, list[tuple[InstanceRef, str, tuple[str, str, int]]]]]]]:
    """Free instances by GPU, then by size (slices), each group by name: (instance, name, key)."""
    by_gpu: dict[str, dict[int, list[tuple[InstanceRef, str, tuple[str, str, int]]]]] = {}
    for c in free_instances(spec, obs, ()):
        by_size = by_gpu.setdefault(c.gpu, {})
        by_size.setdefault(slices_of(spec, c), []).append((c, str(c), (c.gpu, c.profile, c.start)))
    return [(gpu, [(n, sorted(m, key=_by_name)) for n, m in sizes.items()]) for gpu, sizes in by_gpu.items()]


_by_name = itemgetter(1)
_rank_key = itemgetter(0, 1, 2, 3)  # (penalty, another GPU, size preference, name): best first


def _new_steps(spec: HostSpec) -> dict[tuple[str, int], int]:
    return {}


def step_up(spec: HostSpec, gpu: str, need: int) -> int:
    """Slices of the next profile above `need` on `gpu`'s resize ladder (0: none, or unknown)."""
    memo = spec.derived("placement.step-up", _new_steps)
    key = (gpu, need)
    up = memo.get(key)
    if up is None:
        up = 0
        model = gpu_model(spec, gpu)
        if model is not None:
            names = spec.policy.mig_ladder.get(model.key)
            ladder = [model.profile(n) for n in names] if names else model.ladder()
            up = min((p.slices for p in ladder if p.slices > need), default=0)
        memo[key] = up
    return up


def rank_candidates(
    spec: HostSpec,
    obs: Observation,
    victim: TenantSpec,
    cause: Cause,
    reserved: Iterable[InstanceRef],
    traffic: Traffic | None = None,
    allow_gpu: Callable[[str], bool] | None = None,
    limit: int | None = None,
) -> tuple[Score | None, list[Score]]:
    """(score of where the victim is now, candidates best first). Candidates are free instances
    at least as large as the current one, on GPUs `allow_gpu` accepts; at most `limit` of them."""
    ts = obs.tenants.get(victim.name)
    current = ts.instance if ts is not None and ts.instance is not None else victim.instance
    traffic = traffic or Traffic.build(spec, obs)
    cache: dict[str, tuple[float, float, float]] = {}
    here = score(spec, obs, victim, current, current, cause, traffic, cache) if current is not None else None
    need = slices_of(spec, current) if current is not None else 0
    # Free instances by GPU and size, each group by name, once per tick; this victim's view only
    # drops the reserved.
    groups = traffic.memo.get("free-groups")
    if groups is None:
        groups = traffic.memo["free-groups"] = _free_groups(spec, obs)
    taken = {(r.gpu, r.profile, r.start) for r in reserved}  # InstanceRef equality, as tuples
    sized = cause in (Cause.COMPUTE, Cause.MEMORY) and current is not None
    cur_gpu = current.gpu if current is not None else ""
    cur_key = (current.gpu, current.profile, current.start) if current is not None else None
    policy = spec.policy
    w_move, other_gpu = policy.w_move, policy.move_other_gpu
    rows = []
    # This runs for every free instance of the host, per victim: _cost is inlined here (the same
    # arithmetic in the same order), and Score objects are made only for the best few. The
    # instances of one group share their penalty and their GPU, so they rank by name: with a
    # limit, only the first `limit` of a group can be among the best (except on the victim's own
    # GPU, where one might be the victim's own instance, at no move cost).
    step = policy.move_step_up
    for gpu, by_size in groups:
        terms: tuple[float, float, float] | None = None
        a = 0.0
        refused = False
        up = step_up(spec, gpu, need) if step else 0
        for n, members in by_size:
            if n < need:
                continue
            size = max(0, n - need if sized else 0) / 7.0
            pref = 0 if n == up else 1 if n == need else 2
            cap = limit if limit is not None and gpu != cur_gpu else None
            kept = 0
            for c, name, key in members:
                if cap is not None and kept >= cap:
                    break
                if taken and key in taken:
                    continue
                if terms is None:
                    if allow_gpu is not None and not allow_gpu(gpu):
                        refused = True
                        break
                    terms = cache.get(gpu)
                    if terms is None:
                        terms = cache[gpu] = _gpu_terms(spec, obs, traffic, gpu, victim)
                    rc, numa, irq = terms
                    a = policy.w_root_complex * rc + policy.w_numa_block * numa + policy.w_irq * irq
                if cur_key is None or key == cur_key:
                    move = 0.0
                elif gpu == cur_gpu:
                    move = SAME_GPU_MOVE
                else:
                    move = other_gpu
                rows.append((a + w_move * move - size, gpu != cur_gpu, pref, name, c, terms, move, size))
                kept += 1
            if refused:
                break
    rows.sort(key=_rank_key)
    if limit is not None:
        rows = rows[:limit]
    return here, [Score(r[4], r[0], *r[5], r[6], r[7]) for r in rows]
