"""The decision core's fast paths give what the plain rules give: aggressors from the per-tick device
index and the per-spec on-path table equal the tenant-by-tenant rule (kept here verbatim as the
reference); EvidenceParams' derived thresholds are its properties; the per-spec derived tables
belong to one spec (a replaced spec starts afresh) and are no part of its value."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm.diagnosis import Aggressor, Cause, Traffic, aggressors_for, victim_anchor
from fsm.evidence import EvidenceParams, Judgement, SloEvidence, _evidence, _judgement
from fsm.evolve import field_setters
from fsm.examples import example_spec, p4d_like_topology
from fsm.observation import GpuSample, InstanceRef, IoRate, Observation, TenantSample
from fsm.quantiles import Verdict
from fsm.spec import HostSpec, Policy, Role, TenantSpec
from fsm.topology import Tier

DEVICES = ["nvme0n1", "nvme1n1", "nvme2n1", "nvme3n1", "259:1", "sdz", "eth9"]  # the last two: unknown
GPUS = ["gpu0", "gpu1", "gpu2", "gpu3", "gpu4", "gpu5", "gpu6", "gpu7", "gpu99"]  # gpu99: unknown


def reference_aggressors(spec: HostSpec, obs: Observation, victim: TenantSpec, traffic: Traffic) -> list[Aggressor]:
    """fsm.diagnosis.aggressors_for and path_traffic as they were before the fast paths."""
    topo = spec.topology
    limit = spec.policy.io_share_tier
    anchor = victim_anchor(spec, obs, victim)
    out = []
    for t in spec.tenants.values():
        if t.name == victim.name:
            continue
        devices, tiers, total = [], [], 0.0
        for label, dev, bps in traffic.items.get(t.name, ()):
            tier = topo.distance(anchor, dev) if anchor is not None else None
            if tier is None and anchor is not None and topo.has(anchor) and topo.has(dev):
                continue
            if tier is None or tier <= limit:
                devices.append((label, bps))
                tiers.append(tier)
                total += bps
        if total <= 0:
            continue
        known = [x for x in tiers if x is not None]
        a = Aggressor(t.name, total, min(known) if known else None, tuple(devices),
                      t.role in (Role.BULK, Role.COMPUTE) and t.cgroup is not None)  # fmt: skip
        if a.bps >= spec.policy.io_aggressor_min_bps:
            out.append(a)
    out.sort(key=lambda a: (-a.bps, a.tier if a.tier is not None else 9, a.tenant))
    return out


@st.composite
def hosts(draw: st.DrawFn) -> tuple[HostSpec, Observation]:
    n = draw(st.integers(2, 9))
    tenants = {}
    samples = {}
    for i in range(n):
        role = draw(st.sampled_from(list(Role)))
        gpu = draw(st.sampled_from([*GPUS, None]))
        inst = InstanceRef(gpu, "1g.5gb", i % 7) if gpu is not None and draw(st.booleans()) else None
        name = f"t{i}"
        tenants[name] = TenantSpec(name, role, draw(st.sampled_from([f"{name}.slice", None])), gpu, inst,
                                   0.015 if role is Role.SENSITIVE else None)  # fmt: skip
        io = {d: IoRate(draw(st.sampled_from([0.0, 1e7, 3e7, 2e9])), draw(st.sampled_from([None, 0.0, 5e8])))
              for d in draw(st.lists(st.sampled_from(DEVICES), max_size=3, unique=True))}  # fmt: skip
        at = InstanceRef(draw(st.sampled_from(GPUS)), "1g.5gb", 0) if draw(st.booleans()) else None
        samples[name] = TenantSample(io=io or None, instance=at, pcie_bps=draw(st.sampled_from([None, None, 4e9])))
    gpus = {g: GpuSample(pcie_tx_bps=draw(st.sampled_from([None, 3e9])), pcie_rx_bps=1e9) for g in GPUS[:8]}
    policy = Policy(io_share_tier=draw(st.sampled_from(list(Tier))),
                    io_aggressor_min_bps=draw(st.sampled_from([0.0, 20e6, 1e9])))  # fmt: skip
    spec = HostSpec(p4d_like_topology(8), tenants, policy)
    return spec, Observation(1.0, samples, gpus)


@settings(max_examples=300, deadline=None)
@given(hosts())
def test_aggressors_equal_the_tenant_by_tenant_rule(host: tuple[HostSpec, Observation]) -> None:
    spec, obs = host
    traffic = Traffic.build(spec, obs)
    for _ in range(2):  # the second round reads the memos the first one filled
        for victim in spec.tenants.values():
            assert aggressors_for(spec, obs, victim, traffic) == reference_aggressors(spec, obs, victim, traffic)


def test_evidence_built_through_its_slots_is_the_dataclass() -> None:
    names = [f.name for f in dataclasses.fields(SloEvidence)]
    assert tuple(names) == SloEvidence.__slots__  # _evidence sets them in this order
    vals = (3.1, 0.7, 12.0, 40.0, 500.0, 7.5, None, True, 990.0, 3.0, 1.0)
    fast, plain = _evidence(*vals), SloEvidence(*vals)
    assert type(fast) is SloEvidence and fast == plain and hash(fast) == hash(plain) and repr(fast) == repr(plain)
    assert pickle.loads(pickle.dumps(fast)) == plain
    assert fast.reset() == dataclasses.replace(fast, up=0.0, down=0.0, up_bad=0.0, up_n=0.0, up_since=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.up = 1.0  # type: ignore[misc]


def test_judgement_and_aggressor_built_through_their_slots_are_the_dataclasses() -> None:
    for fast, plain in (
        (_judgement(Verdict.VIOLATING, 0.25, 40, 3.5), Judgement(Verdict.VIOLATING, 0.25, 40, 3.5)),
        (_judgement(Verdict.EMPTY, None, 0, None), Judgement(Verdict.EMPTY, None, 0, None)),
    ):
        assert type(fast) is Judgement and fast == plain and repr(fast) == repr(plain) and hash(fast) == hash(plain)
    spec = example_spec()
    obs = Observation(1.0, {"etl": TenantSample(io={"nvme0n1": IoRate(3e9, 1e9)})})
    traffic = Traffic.build(spec, obs)
    victim = spec.tenants["llm"]
    got = aggressors_for(spec, obs, victim, traffic)
    assert got and got == reference_aggressors(spec, obs, victim, traffic)
    for a in got:
        plain_a = Aggressor(a.tenant, a.bps, a.tier, a.devices, a.throttleable)
        assert type(a) is Aggressor and repr(a) == repr(plain_a) and hash(a) == hash(plain_a)
        assert pickle.loads(pickle.dumps(a)) == plain_a
    with pytest.raises(TypeError, match="not a plain frozen"):
        field_setters(EvidenceParams)  # a __post_init__: only its __init__ builds it right


def test_a_lever_priced_through_its_slots_is_the_dataclass() -> None:
    """price() builds LeverCost through its slots' setters: the value the plain rule builds."""
    from fsm.levercost import LeverCost, outage_cost, price, rent_of

    rent = rent_of(rate_rps=2.5, rho=0.3, bad_share=0.04, budget_share=0.01, episodes=(300.0, 500.0), prior_s=300.0,
                   elapsed_s=100.0, episode_requests=500.0, episode_bad=20.0, window_rent=3.0)  # fmt: skip
    fast = price(rent, "resize", 60.0, "configured", 0.2, 0.25)
    plain = LeverCost("resize", 60.0, "configured", 2.5, 0.3, outage_cost(2.5, 60.0, 0.2, 0.3), rent.bad_share,
                      0.01, rent.remaining_s, rent.rent, 100.0, 0.25, rent.gain * 0.25, 1.0, 2.5)  # fmt: skip
    assert type(fast) is LeverCost and fast == plain and repr(fast) == repr(plain) and hash(fast) == hash(plain)
    assert pickle.loads(pickle.dumps(fast)) == plain and fast.as_evidence() == plain.as_evidence()
    # measured outages scale the model's cost; a burst's arrivals are what an outage now holds
    scaled = price(rent, "resize", 60.0, "configured", 0.2, 0.25, 2.0, 5.0)
    assert scaled.cost == 2.0 * outage_cost(5.0, 60.0, 0.2, 0.3) and scaled.benefit == fast.benefit
    assert scaled.as_evidence()["cost_scale"] == 2.0 and scaled.as_evidence()["outage_rate_rps"] == 5.0


def test_evidence_params_derive_their_thresholds() -> None:
    import math

    p = EvidenceParams(alpha=1e-3, release_alpha=0.1, min_ticks=4, min_release_ticks=2)
    assert (p.h, p.release_h) == (math.log(1.0 / 1e-3), math.log(1.0 / 0.1))
    assert (p._step_up, p._step_down) == (p.h / 4, p.release_h / 2)
    q = dataclasses.replace(p, alpha=1e-4)
    assert q.h == math.log(1e4) and q._step_up == q.h / 4 and q != p
    assert p == EvidenceParams(alpha=1e-3, release_alpha=0.1, min_ticks=4, min_release_ticks=2)


def test_derived_tables_belong_to_one_spec() -> None:
    spec = example_spec()
    assert [t.name for t in spec.sensitive()] == ["llm"]
    other = dataclasses.replace(spec, tenants={k: v for k, v in spec.tenants.items() if k != "llm"})
    assert other.sensitive() == []  # not the first spec's table
    assert spec.sensitive() == [spec.tenants["llm"]]
    assert spec == pickle.loads(pickle.dumps(spec)) == example_spec()  # the tables are no part of its value
    calls = []
    assert spec.derived("test", lambda s: calls.append(1) or 42) == 42
    assert spec.derived("test", lambda s: calls.append(1) or 43) == 42 and calls == [1]


# -- placement ranking -------------------------------------------------------------------------------
def reference_rank(spec, obs, victim, cause, reserved, traffic, allow_gpu=None, limit=None):  # type: ignore[no-untyped-def]
    """fsm.placement.rank_candidates as it was before the fast paths (one Score per candidate)."""
    from fsm.placement import Score, _gpu_terms, free_instances, score, slices_of, step_up

    ts = obs.tenants.get(victim.name)
    current = ts.instance if ts is not None and ts.instance is not None else victim.instance
    cache: dict[str, tuple[float, float, float]] = {}
    here = score(spec, obs, victim, current, current, cause, traffic, cache) if current is not None else None
    need = slices_of(spec, current) if current is not None else 0
    taken = set(reserved)
    out = []
    for c in free_instances(spec, obs, ()):
        if slices_of(spec, c) < need or c in taken or (allow_gpu is not None and not allow_gpu(c.gpu)):
            continue
        if c.gpu not in cache:
            cache[c.gpu] = _gpu_terms(spec, obs, traffic, c.gpu, victim)
        out.append(score(spec, obs, victim, current, c, cause, traffic, cache))
    cur_gpu = current.gpu if current is not None else ""

    def pref(s: Score) -> int:  # the next size up the ladder, then the victim's own size, then larger
        n, up = slices_of(spec, s.instance), step_up(spec, s.instance.gpu, need) if spec.policy.move_step_up else 0
        return 0 if n == up else 1 if n == need else 2

    out.sort(key=lambda s: (s.penalty, s.instance.gpu != cur_gpu, pref(s), str(s.instance)))
    return here, out if limit is None else out[:limit]


@st.composite
def placements(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    from fsm.mig import Slot

    layouts = {
        "gpu0": (Slot(0, "1g.5gb"), Slot(1, "1g.5gb"), Slot(2, "2g.10gb"), Slot(4, "3g.20gb")),
        "gpu1": tuple(Slot(s, "1g.5gb") for s in range(7)),
        "gpu2": (Slot(0, "3g.20gb"), Slot(4, "3g.20gb")),
        "gpu3": (Slot(0, "2g.10gb"), Slot(2, "2g.10gb"), Slot(4, "2g.10gb"), Slot(6, "1g.5gb")),
    }
    gpus = sorted(draw(st.sets(st.sampled_from(sorted(layouts)), min_size=1)))
    slots = [(g, s) for g in gpus for s in layouts[g]]
    tenants, samples = {}, {}
    for i in range(draw(st.integers(1, 6))):
        g, s = draw(st.sampled_from(slots))
        role = Role.SENSITIVE if i == 0 else draw(st.sampled_from([Role.BULK, Role.COMPUTE, Role.SENSITIVE]))
        name = f"t{i}"
        tenants[name] = TenantSpec(name, role, f"{name}.slice", g, InstanceRef(g, s.profile, s.start), 0.015,
                                   devices=(draw(st.sampled_from(DEVICES[:4])),))  # fmt: skip
        io = {tenants[name].devices[0]: IoRate(draw(st.sampled_from([1e7, 3e8, 2e9])), 0.0)}
        samples[name] = TenantSample(io=io if role is not Role.SENSITIVE else None)
    obs = Observation(1.0, samples, {g: GpuSample(pcie_tx_bps=1e9, pcie_rx_bps=1e9, layout=layouts[g]) for g in gpus})
    policy = Policy(move_step_up=draw(st.booleans()))
    spec = HostSpec(p4d_like_topology(8), tenants, policy, {g: "A100-SXM4-40GB" for g in GPUS[:8]})
    reserved = draw(st.sets(st.sampled_from([InstanceRef(g, s.profile, s.start) for g, s in slots])))
    allowed = draw(st.sets(st.sampled_from(gpus)))
    allow = draw(st.sampled_from([None, allowed.__contains__]))
    return spec, obs, reserved, allow, draw(st.sampled_from([None, 0, 1, 2, 5])), draw(st.sampled_from(list(Cause)))


@settings(max_examples=300, deadline=None)
@given(placements())
def test_ranking_equals_the_candidate_by_candidate_rule(case) -> None:  # type: ignore[no-untyped-def]
    from fsm.placement import rank_candidates

    spec, obs, reserved, allow, limit, cause = case
    traffic = Traffic.build(spec, obs)
    for _ in range(2):  # the second time from the tick's memos
        for victim in spec.tenants.values():
            got = rank_candidates(spec, obs, victim, cause, reserved, traffic, allow, limit)
            assert got == reference_rank(spec, obs, victim, cause, reserved, Traffic.build(spec, obs), allow, limit)


@st.composite
def placement_sequences(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    """One host (spec) and a few observations of it one after another, each changing a layout, a
    GPU's state or a tenant's instance: the free instances kept from one tick to the next
    (placement._free_groups) must follow every such change."""
    from fsm.mig import Slot

    spec, obs, reserved, allow, limit, cause = draw(placements())
    seq = [obs]
    for _ in range(draw(st.integers(1, 4))):
        gpus = dict(seq[-1].gpus)
        tenants = dict(seq[-1].tenants)
        change = draw(st.sampled_from(["layout", "shift", "lost", "unknown", "instance", "same"]))
        g = draw(st.sampled_from(sorted(gpus)))
        if change == "layout":  # another layout on one GPU
            layout = draw(st.sampled_from([tuple(Slot(s, "1g.5gb") for s in range(7)), (Slot(0, "7g.40gb"),),
                                           (Slot(0, "3g.20gb"), Slot(4, "3g.20gb"))]))  # fmt: skip
            gpus[g] = dataclasses.replace(gpus[g], layout=layout)
        elif change == "shift" and len(gpus) > 1:  # one slot moves to the next GPU: the same slots in all
            names = sorted(gpus)
            a, b = names[0], names[1]
            la, lb = gpus[a].layout or (), gpus[b].layout or ()
            if la:
                gpus[a] = dataclasses.replace(gpus[a], layout=la[:-1])
                gpus[b] = dataclasses.replace(gpus[b], layout=(la[-1], *lb))
        elif change == "lost":
            gpus[g] = dataclasses.replace(gpus[g], lost=not gpus[g].lost)
        elif change == "unknown":
            gpus[g] = dataclasses.replace(gpus[g], layout=None)
        elif change == "instance":
            name = draw(st.sampled_from(sorted(spec.tenants)))
            slots = [(n, s) for n, gs in gpus.items() for s in gs.layout or ()] or [(g, Slot(0, "1g.5gb"))]
            slot = draw(st.sampled_from(slots))
            ts = tenants.get(name) or TenantSample()
            tenants[name] = dataclasses.replace(ts, instance=InstanceRef(slot[0], slot[1].profile, slot[1].start))
        else:  # the same values in new objects (a new sample of an unchanged host)
            for n, gs in gpus.items():
                if gs.layout:
                    gpus[n] = dataclasses.replace(gs, layout=tuple(Slot(s.start, s.profile) for s in gs.layout))
        seq.append(Observation(seq[-1].t + 2.0, tenants, gpus))
    return spec, seq, reserved, allow, limit, cause


@settings(max_examples=200, deadline=None)
@given(placement_sequences())
def test_ranking_follows_layouts_and_placements_from_tick_to_tick(case) -> None:  # type: ignore[no-untyped-def]
    from fsm.placement import rank_candidates

    spec, seq, reserved, allow, limit, cause = case
    for obs in seq:
        traffic = Traffic.build(spec, obs)
        for victim in spec.tenants.values():
            got = rank_candidates(spec, obs, victim, cause, reserved, traffic, allow, limit)
            assert got == reference_rank(spec, obs, victim, cause, reserved, Traffic.build(spec, obs), allow, limit)
