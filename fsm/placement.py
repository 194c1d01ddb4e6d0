"""Where should a victim go? A penalty per candidate MIG instance, with its components.

penalty = w_rc   * bandwidth of other tenants sharing the candidate GPU's root complex / link
        + w_numa * block I/O on the candidate's NUMA node / norm
        + w_irq  * mean IRQ rate on the candidate's local cores / norm
        + w_move * cost of the move (0 staying, 0.3 same GPU, move_other_gpu another GPU)
        - size bonus for a bigger slice when the cause is compute or memory (the slices it adds, as
          a share of the candidate GPU's whole: / 7 on A100/H100, / 4 on RTX PRO 6000)
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
from typing import Any

from fsm.diagnosis import Cause, Traffic
from fsm.evolve import field_setters
from fsm.mig import COMPUTE_SLICES, GpuModel, Profile, model_by_name
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


def whole_slices(spec: HostSpec, gpu: str) -> int:
    """Compute slices of `gpu` whole (its table's largest profile), the size bonus's denominator;
    the A100/H100 sheet's 7 for a GPU without a table. Read from gpu_model's memo, never made anew."""
    model = gpu_model(spec, gpu)
    return model.compute_slices if model is not None else COMPUTE_SLICES


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


# (known, root complex, NUMA node, local CPUs, place id, local CPUs' id): the ids number the
# distinct places and sets of cores of one spec (small ints key per-tick tables cheaply; a tuple
# of two dozen cores hashes anew at every lookup).
_Where = tuple[bool, str | None, int | None, tuple[int, ...], int, int]


def _where(spec: HostSpec, name: str) -> _Where:
    """(does the topology know the device, its root complex, its NUMA node, its local CPUs, and the
    ids of that place and of those cores): a pure function of the spec's topology, memoised per
    spec (HostSpec.derived)."""
    memo = spec.derived("placement.where", _new_where)
    hit = memo.get(name)
    if hit is None:
        topo = spec.topology
        if topo.has(name):
            base = (True, topo.enclosing(name, NodeKind.ROOT_COMPLEX), topo.numa_of(name), topo.cpus_of(name))
        else:
            base = (False, None, None, ())
        ids = spec.derived("placement.where-ids", _new_ids)  # bounded: one per place of the topology, one unknown
        place = ids.setdefault(("place", base), len(ids))
        cores = ids.setdefault(("cores", base[3]), len(ids))
        hit = (*base, place, cores)
        if len(memo) < 10_000:  # device names come from observations: bounded
            memo[name] = hit
    return hit


def _new_where(spec: HostSpec) -> dict[str, _Where]:
    return {}


def _new_ids(spec: HostSpec) -> dict[tuple[Any, ...], int]:
    return {}


def rc_traffic(spec: HostSpec, traffic: Traffic, gpu: str) -> dict[str, float]:
    """Bytes/s per tenant on `gpu`'s root complex (tenants moving at least io_aggressor_min_bps):
    path_traffic(..., Tier.ROOT_COMPLEX) for every tenant, from a per-tick index by root complex
    (one pass over the traffic instead of one per GPU and tenant). Traffic whose device the
    topology does not know counts everywhere, as in path_traffic."""
    return dict(_rc_traffic(spec, traffic, gpu))


def _rc_traffic(spec: HostSpec, traffic: Traffic, gpu: str) -> dict[str, float]:
    """rc_traffic, once per root complex and tick (the GPUs under one share it): not to be changed."""
    known, rc = _where(spec, gpu)[:2]
    return _rc_traffic_at(spec, traffic, known, rc)


def _rc_traffic_at(spec: HostSpec, traffic: Traffic, known: bool, rc: str | None) -> dict[str, float]:
    key = ("rc-traffic", rc) if known else ("rc-traffic",)
    hit: dict[str, float] | None = traffic.memo.get(key)
    if hit is not None:
        return hit
    idx = traffic.memo.get("rc-index")
    if idx is None:
        where = spec.derived("placement.where", _new_where)
        by_rc: dict[str, dict[str, float]] = {}
        anywhere: dict[str, float] = {}
        for name, items in traffic.items.items():
            for _label, dev, bps in items:
                w = where.get(dev) or _where(spec, dev)  # a hit skips the call (a _Where is never empty)
                dev_known, dev_rc = w[0], w[1]
                if not dev_known:
                    anywhere[name] = anywhere.get(name, 0.0) + bps
                    continue
                if dev_rc is not None:
                    d = by_rc.setdefault(dev_rc, {})
                    d[name] = d.get(name, 0.0) + bps
        idx = traffic.memo["rc-index"] = (by_rc, anywhere)
    by_rc, anywhere = idx
    if not known:  # nothing can be ruled out
        per = {n: sum(b for _, _, b in items) for n, items in traffic.items.items()}
    else:
        per = dict(by_rc.get(rc, {})) if rc is not None else {}
        for n, b in anywhere.items():
            per[n] = per.get(n, 0.0) + b
    floor = spec.policy.io_aggressor_min_bps
    hit = traffic.memo[key] = {n: b for n, b in per.items() if n in spec.tenants and b >= floor}
    return hit


_GpuRow = tuple[dict[str, float], tuple[float, float, float], float]


def _gpu_table(spec: HostSpec, obs: Observation, traffic: Traffic, gpu: str) -> _GpuRow:
    """(bytes/s per tenant on `gpu`'s root complex, the GPU's terms for a victim that is none of
    them, their weighted sum): what does not depend on the victim, once per GPU and tick, shared
    by every victim; every observed GPU's at the first question of a tick (a ranking asks for them
    all)."""
    table = _gpu_tables(spec, obs, traffic)
    hit = table.get(gpu)
    if hit is None:  # a GPU the observation does not list
        hit = table[gpu] = _place_row(spec, obs, traffic, _where(spec, gpu))
    return hit


def _gpu_tables(spec: HostSpec, obs: Observation, traffic: Traffic) -> dict[str, _GpuRow]:
    """_gpu_table's rows by GPU, this tick's."""
    table: dict[str, _GpuRow] | None = traffic.memo.get("gpu-terms")
    if table is None:
        table = traffic.memo["gpu-terms"] = _gpu_rows(spec, obs, traffic)
    return table


def _gpu_rows(spec: HostSpec, obs: Observation, traffic: Traffic) -> dict[str, _GpuRow]:
    """_gpu_table's rows of the observed GPUs. A row is a pure function of where its GPU is
    (_where): the GPUs of one place (a PCIe switch's, say) share one."""
    where = spec.derived("placement.where", _new_where)
    places: dict[int, _GpuRow] = {}
    table: dict[str, _GpuRow] = {}
    for gpu in obs.gpus:
        w = where.get(gpu) or _where(spec, gpu)
        row = places.get(w[4])
        if row is None:
            row = places[w[4]] = _place_row(spec, obs, traffic, w)
        table[gpu] = row
    return table


def _place_row(spec: HostSpec, obs: Observation, traffic: Traffic, w: _Where) -> _GpuRow:
    per = _rc_traffic_at(spec, traffic, w[0], w[1])
    block_n, irq_n = _host_terms(spec, obs, traffic, w)
    terms = (sum(per.values()) / spec.policy.high_bw_bps, block_n, irq_n)
    return per, terms, _weighted(spec.policy, terms)


def _weighted(policy: Policy, terms: tuple[float, float, float]) -> float:
    """The penalty's terms that do not depend on the move or the size (_cost's, in its order)."""
    rc, numa, irq = terms
    return policy.w_root_complex * rc + policy.w_numa_block * numa + policy.w_irq * irq


def _gpu_terms(
    spec: HostSpec, obs: Observation, traffic: Traffic, gpu: str, victim: TenantSpec
) -> tuple[float, float, float]:
    """(root complex, NUMA block I/O, IRQ) terms of `gpu` for `victim`: everybody's traffic that
    shares the GPU's root complex but the victim's own."""
    per_tenant, terms, _ = _gpu_table(spec, obs, traffic, gpu)
    if victim.name not in per_tenant:
        return terms  # a victim without traffic there: the sum of everybody's, once per GPU and tick
    rc_bps = sum(bps for name, bps in per_tenant.items() if name != victim.name)
    return rc_bps / spec.policy.high_bw_bps, terms[1], terms[2]


def _host_terms(spec: HostSpec, obs: Observation, traffic: Traffic, w: _Where) -> tuple[float, float]:
    """(block I/O on the GPU's NUMA node, mean IRQ rate on its local cores), normalised, from where
    the GPU is (_where)."""
    policy = spec.policy
    known, numa, cpus, cores = w[0], w[2], w[3], w[5]
    block = 0.0
    irq = 0.0
    host = obs.host
    if host is not None:
        if known and numa is not None:
            by_numa = traffic.memo.get("block-by-numa")
            if by_numa is None:
                where = spec.derived("placement.where", _new_where)
                by_numa = {}
                for dev, bps in host.block_bps.items():
                    dw = where.get(dev) or _where(spec, dev)
                    if dw[0]:
                        by_numa[dw[2]] = by_numa.get(dw[2], 0.0) + bps
                traffic.memo["block-by-numa"] = by_numa
            block = by_numa.get(numa, 0.0)
        # The GPUs of one NUMA node share their local cores: their mean once per tick.
        by_cpus = traffic.memo.get("irq-by-cpus")
        if by_cpus is None:
            by_cpus = traffic.memo["irq-by-cpus"] = {}
        mean: float | None = by_cpus.get(cores)
        if mean is None:
            rates = host.irq_rate
            if rates.keys() >= _cpu_set(spec, cores, cpus):  # every core reported: the loops in C
                mean = sum(map(rates.__getitem__, cpus)) / len(cpus) if cpus else 0.0
            else:
                present = [rates[c] for c in cpus if c in rates]
                mean = sum(present) / len(present) if present else 0.0
            by_cpus[cores] = mean
        irq = mean
    return block / policy.block_io_norm_bps, irq / policy.irq_norm_rate


def _cpu_set(spec: HostSpec, cores: int, cpus: tuple[int, ...]) -> frozenset[int]:
    """The cores `cpus` (whose id is `cores`, _where's) as a set."""
    memo = spec.derived("placement.cpu-sets", _new_cpu_sets)
    hit = memo.get(cores)
    if hit is None:
        hit = memo[cores] = frozenset(cpus)  # ids are bounded as _where's entries are
    return hit


def _new_cpu_sets(spec: HostSpec) -> dict[int, frozenset[int]]:
    return {}


def _cost(
    policy: Policy,
    current: InstanceRef | None,
    cand: InstanceRef,
    terms: tuple[float, float, float],
    size_gain: int,
    whole: int = COMPUTE_SLICES,
) -> tuple[float, float, float]:
    """(move, size, penalty) of `cand` from its GPU's terms and the slices it adds (0 unless the
    cause is compute or memory; `whole`: the candidate GPU's slices, whole_slices): the one penalty
    formula of the module docstring."""
    rc, numa, irq = terms
    if current is None or cand == current:
        move = 0.0
    elif cand.gpu == current.gpu:
        move = SAME_GPU_MOVE
    else:
        move = policy.move_other_gpu
    size = max(0, size_gain) / whole
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
    whole = COMPUTE_SLICES
    if cause in (Cause.COMPUTE, Cause.MEMORY) and current is not None:
        gain = slices_of(spec, cand) - slices_of(spec, current)
        whole = whole_slices(spec, cand.gpu)
    move, size, penalty = _cost(spec.policy, current, cand, terms, gain, whole)
    return _score(cand, penalty, terms, move, size)


_Member = tuple[InstanceRef, str, tuple[str, str, int]]  # (instance, its name, (gpu, profile, start))


_Groups = list[tuple[str, list[tuple[int, list[_Member]]], int]]  # (GPU, free instances by size, largest size)


def _free_groups(spec: HostSpec, obs: Observation) -> _Groups:
    """Free instances (free_instances: reserved left out) by GPU, then by size (slices), each group
    by name. They change only when a layout or a placement does, seldom from one tick to the next:
    the last answer is kept with what it was made from (each GPU's layout, the instances in use)
    and given again while those are equal (layouts are tuples of Slots, named tuples: they compare in
    C, and the check costs about a fifth of making the answer anew)."""
    taken: list[tuple[str, str, int]] = []
    tenants = obs.tenants
    for t in spec.tenants.values():  # occupied(), as (gpu, profile, start) keys
        ts = tenants.get(t.name)
        inst = ts.instance if ts is not None and ts.instance is not None else t.instance
        if inst is not None:
            taken.append((inst.gpu, inst.profile, inst.start))
    layouts = [(name, g.lost, g.layout) for name, g in obs.gpus.items()]  # Slots compare in C
    memo = spec.derived("placement.free-groups", _new_last)
    last = memo.get("last")  # one read: (instances in use, layouts, the answer)
    if last is not None and last[0] == taken and last[1] == layouts:
        return last[2]
    groups = _groups_of(spec, obs, set(taken))
    memo["last"] = (taken, layouts, groups)
    return groups


def _new_last(spec: HostSpec) -> dict[str, tuple[list[tuple[str, str, int]], list[Any], _Groups]]:
    return {}


def _groups_of(spec: HostSpec, obs: Observation, taken: set[tuple[str, str, int]]) -> _Groups:
    """_free_groups' answer, made."""
    known = spec.derived("placement.instances", _new_instances)
    out: _Groups = []
    for gpu_name in sorted(obs.gpus):
        g = obs.gpus[gpu_name]
        if g.lost or g.layout is None:
            continue
        by_size: dict[int, list[_Member]] = {}
        for slot in g.layout:
            key = (gpu_name, slot.profile, slot.start)
            if key in taken:
                continue
            hit = known.get(key)
            if hit is None:
                ref = InstanceRef(gpu_name, slot.profile, slot.start)
                hit = ((ref, str(ref), key), slices_of(spec, ref))
                if len(known) < 100_000:  # GPU names and layouts come from observations: bounded
                    known[key] = hit
            member, n = hit
            group = by_size.get(n)
            if group is None:
                by_size[n] = [member]
            else:
                group.append(member)
        if by_size:
            out.append((gpu_name, [(n, sorted(m, key=_by_name)) for n, m in by_size.items()], max(by_size)))
    return out


def _new_instances(spec: HostSpec) -> dict[tuple[str, str, int], tuple[_Member, int]]:
    return {}


_by_name = itemgetter(1)
_rank_key = itemgetter(0, 1, 2, 3)  # (penalty, another GPU, size preference, name): best first
_group_key = itemgetter(0, 1, 2)  # (penalty, another GPU, size preference) of a group of candidates


def _new_steps(spec: HostSpec) -> dict[tuple[str, int], int]:
    return {}


def resize_ladder(spec: HostSpec, model: GpuModel) -> tuple[Profile, ...]:
    """The profiles a resize climbs on this GPU model, smallest first: the policy's `mig_ladder`
    for the model, else its standard 1g -> 2g -> 3g -> 4g -> 7g."""
    names = spec.policy.mig_ladder.get(model.key)
    return tuple(model.profile(n) for n in names) if names else model.ladder()


def step_up(spec: HostSpec, gpu: str, need: int) -> int:
    """Slices of the next profile above `need` on `gpu`'s resize ladder (0: none, or unknown)."""
    memo = spec.derived("placement.step-up", _new_steps)
    key = (gpu, need)
    up = memo.get(key)
    if up is None:
        model = gpu_model(spec, gpu)
        ladder = resize_ladder(spec, model) if model is not None else ()
        up = memo[key] = min((p.slices for p in ladder if p.slices > need), default=0)
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
    here = score(spec, obs, victim, current, current, cause, traffic, {}) if current is not None else None
    policy = spec.policy
    w_move = policy.w_move
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
    away = policy.move_other_gpu if cur_key is not None else 0.0  # the move to another GPU
    taken_gpus = {k[0] for k in taken}
    # The instances of one group (a GPU and a size) share their penalty (_cost's arithmetic, in the
    # same order), their GPU and their size preference, so they rank by name: a group is one entry
    # here, (penalty, another GPU, size preference, its candidates, terms, move, size), with only
    # its first `limit` candidates by name on another GPU (on the victim's own GPU, should its own
    # instance be among them, one entry per instance: that one costs no move). A GPU that is not the
    # victim's and carries none of its traffic has the same entries for every victim of its size and
    # cause: those are made once per tick (_Board), and only for the GPUs whose least penalty can
    # still beat the `limit`-th best candidate in hand; the victim's own GPUs are built here.
    key = ("board", need, sized, limit, away, frozenset(taken))
    board: _Board | None = traffic.memo.get(key)
    if board is None:
        board = traffic.memo[key] = _board(spec, obs, traffic, groups, need, sized, limit, away, taken)
    parts = board.parts
    name = victim.name
    # The victim's own GPU and those that carry its traffic (not its neighbours'): its own entries.
    mine = [part for part in parts if name in part[2][0]]
    own = board.by_gpu.get(cur_gpu)
    if own is not None and own not in mine:
        mine.insert(0, own)
    entries: list[_Entry] = []
    nan = False
    for gpu, by_size, row, _ in mine:
        if allow_gpu is not None and not allow_gpu(gpu):
            continue
        if name in row[0]:
            terms = _gpu_terms(spec, obs, traffic, gpu, victim)
            a = _weighted(policy, terms)
        else:
            terms, a = row[1], row[2]
        other = gpu != cur_gpu
        cap = limit if limit is not None and other else None
        for members, size, pref in _eligible(spec, gpu, by_size, need, sized, taken, taken_gpus, cap):
            if other:
                penalty = a + w_move * away - size
                entries.append((penalty, True, pref, members, terms, away, size))
            elif cur_key is not None and any(m[2] == cur_key for m in members):
                for m in members:  # its own instance among them, at no move cost
                    move = 0.0 if m[2] == cur_key else SAME_GPU_MOVE
                    penalty = a + w_move * move - size
                    entries.append((penalty, False, pref, [m], terms, move, size))
                    nan = nan or penalty != penalty
            else:
                move = SAME_GPU_MOVE if cur_key is not None else 0.0
                penalty = a + w_move * move - size
                entries.append((penalty, False, pref, members, terms, move, size))
            nan = nan or penalty != penalty
    skip = {part[0] for part in mine}
    order = board.by_bound() if limit is not None else None
    if order is None or nan:
        # Every GPU's entries: without a limit, or with a NaN penalty (which orders nothing).
        for part in parts:
            if part[0] not in skip and (allow_gpu is None or allow_gpu(part[0])):
                entries += board.entries(part)
        return here, [_score(r[4], r[0], r[5], r[6], r[7]) for r in _best(entries, limit)]
    assert limit is not None
    # The other GPUs by the least penalty any of their instances can have (_Board.by_bound): once
    # `limit` candidates in hand have penalties of at most P, a GPU whose least is above P has none
    # among the best, nor has any after it.
    worst = _nth_penalty(entries, limit)
    for least, part in order:
        if worst is not None and least > worst:
            break
        if part[0] in skip or (allow_gpu is not None and not allow_gpu(part[0])):
            continue
        ents = board.entries(part)
        if ents:
            entries += ents
            worst = _nth_penalty(entries, limit)
    return here, [_score(r[4], r[0], r[5], r[6], r[7]) for r in _best(entries, limit)]


def _nth_penalty(entries: list[_Entry], n: int) -> float | None:
    """The penalty of the n-th best candidate of the entries (None: fewer than n of them)."""
    if n <= 0:
        return -_INF
    got = 0
    for penalty, count in sorted([(e[0], len(e[3])) for e in entries]):
        got += count
        if got >= n:
            return penalty
    return None


_INF = float("inf")


_SCORE_SET = field_setters(Score)
_new = object.__new__


def _score(inst: InstanceRef, penalty: float, terms: tuple[float, float, float], move: float, size: float) -> Score:
    """Score(inst, penalty, *terms, move, size) through its slots' setters (a frozen dataclass's
    __init__ goes through object.__setattr__ field by field): up to six per victim and ranking."""
    s_inst, s_penalty, s_rc, s_numa, s_irq, s_move, s_size = _SCORE_SET
    sc: Score = _new(Score)
    s_inst(sc, inst)
    s_penalty(sc, penalty)
    s_rc(sc, terms[0])
    s_numa(sc, terms[1])
    s_irq(sc, terms[2])
    s_move(sc, move)
    s_size(sc, size)
    return sc


# (penalty, another GPU, size preference, candidates, terms, move, size) of a group of candidates
_Entry = tuple[float, bool, int, list[_Member], tuple[float, float, float], float, float]
# (GPU, its free instances by size, its row of _gpu_table, the size of its largest free instance)
_Part = tuple[str, list[tuple[int, list[_Member]]], _GpuRow, int]


@dataclass(slots=True)
class _Board:
    """What every victim of one size, cause and move cost shares in a tick: the GPUs with free
    instances (in GPU order), and on first need each GPU's entries as another GPU's for a victim
    without traffic on its root complex, and the GPUs by the least penalty of those entries."""

    parts: list[_Part]
    by_gpu: dict[str, _Part]
    spec: HostSpec
    need: int
    sized: bool
    limit: int | None
    away: float
    taken: set[tuple[str, str, int]]
    taken_gpus: set[str]
    made: dict[str, list[_Entry]]
    order: list[tuple[float, _Part]] | None = None
    unordered: bool = False  # a NaN penalty: no order

    def entries(self, part: _Part) -> list[_Entry]:
        gpu, by_size, row, _ = part
        hit = self.made.get(gpu)
        if hit is None:
            a, terms, away = row[2], row[1], self.away
            w = self.spec.policy.w_move
            hit = self.made[gpu] = [
                (a + w * away - size, True, pref, members, terms, away, size)
                for members, size, pref in _eligible(
                    self.spec, gpu, by_size, self.need, self.sized, self.taken, self.taken_gpus, self.limit
                )
            ]
        return hit

    def by_bound(self) -> list[tuple[float, _Part]] | None:
        """The GPUs by the least penalty their entries can have (the largest size bonus of their free
        instances; the same arithmetic, which rounds the same way); None when one is NaN."""
        if self.order is None and not self.unordered:
            c = self.spec.policy.w_move * self.away
            need, sized = self.need, self.sized
            spec = self.spec
            order = [
                (part[2][2] + c - ((part[3] - need) / whole_slices(spec, part[0]) if sized else 0.0), part)
                for part in self.parts
                if part[3] >= need
            ]
            if any(least != least for least, _ in order):
                self.unordered = True
                return None
            order.sort(key=_first)
            self.order = order
        return self.order


_first = itemgetter(0)


def _board(
    spec: HostSpec,
    obs: Observation,
    traffic: Traffic,
    groups: _Groups,
    need: int,
    sized: bool,
    limit: int | None,
    away: float,
    taken: set[tuple[str, str, int]],
) -> _Board:
    table = _gpu_tables(spec, obs, traffic)
    parts: list[_Part] = []
    for gpu, by_size, n in groups:
        row = table.get(gpu)
        parts.append((gpu, by_size, row if row is not None else _gpu_table(spec, obs, traffic, gpu), n))
    return _Board(parts, {p[0]: p for p in parts}, spec, need, sized, limit, away, taken, {k[0] for k in taken}, {})


def _eligible(
    spec: HostSpec,
    gpu: str,
    by_size: list[tuple[int, list[_Member]]],
    need: int,
    sized: bool,
    taken: set[tuple[str, str, int]],
    taken_gpus: set[str],
    cap: int | None,
) -> list[tuple[list[_Member], float, int]]:
    """Per size of `gpu`'s free instances at least `need` slices large: (its instances by name, the
    reserved left out, at most `cap` of them; the size bonus; the size preference: 0 the next size
    up the resize ladder, 1 the victim's own, 2 larger)."""
    up = step_up(spec, gpu, need) if spec.policy.move_step_up else 0
    whole = whole_slices(spec, gpu) if sized else COMPUTE_SLICES
    out: list[tuple[list[_Member], float, int]] = []
    for n, members in by_size:
        if n < need:
            continue
        if gpu in taken_gpus:
            members = [m for m in members if m[2] not in taken]
        if cap is not None and len(members) > cap:
            members = members[:cap]
        if members:
            out.append((members, max(0, n - need) / whole if sized else 0.0, 0 if n == up else 1 if n == need else 2))
    return out


def _best(
    entries: list[_Entry], limit: int | None
) -> list[tuple[float, bool, int, str, InstanceRef, tuple[float, float, float], float, float]]:
    """The candidates of the entries best first by (penalty, another GPU, size preference, name),
    at most `limit`: only the entries that can hold one of the best are opened. Walking the entries
    by (penalty, another GPU, size preference), once `limit` candidates are in hand every later
    entry ranks after them, save those that tie with the last one taken (the name decides then, so
    they are opened too)."""
    order, enough = entries, None  # without a limit (or with a NaN penalty, which orders nothing):
    if limit is not None and all(e[0] == e[0] for e in entries):  # every entry, sorted as one list
        order, enough = sorted(entries, key=_group_key), limit
    bound: tuple[float, bool, int] | None = None
    rows = []
    for penalty, other, pref, members, terms, move, size in order:
        if bound is not None and (penalty, other, pref) > bound:
            break
        for c, name, _ in members:
            rows.append((penalty, other, pref, name, c, terms, move, size))
        if bound is None and enough is not None and len(rows) >= enough:
            bound = (penalty, other, pref)
    rows.sort(key=_rank_key)
    return rows if limit is None else rows[:limit]
