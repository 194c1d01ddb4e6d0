"""Placement among equally quiet free instances: the next size up the resize ladder first."""

from __future__ import annotations

from fsm.diagnosis import Cause, Traffic
from fsm.examples import p4d_like_topology
from fsm.mig import Slot
from fsm.observation import GpuSample, InstanceRef, IoRate, Observation, TenantSample
from fsm.placement import rank_candidates, step_up
from fsm.spec import HostSpec, Policy, Role, TenantSpec

A100 = "A100-SXM4-40GB"
# gpu0: the victim's 1g beside the ETL's drive (sw0); gpu4 (sw2, the other NUMA node): all free.
LAYOUTS = {
    "gpu0": (Slot(0, "1g.5gb"), Slot(1, "1g.5gb"), Slot(2, "2g.10gb"), Slot(4, "3g.20gb")),
    "gpu4": (Slot(0, "3g.20gb"), Slot(4, "2g.10gb"), Slot(6, "1g.5gb")),
    "gpu6": (Slot(0, "7g.40gb"),),
}


def _host(policy: Policy, victim_profile: str = "1g.5gb") -> tuple[HostSpec, Observation]:
    home = InstanceRef("gpu0", victim_profile, 0)
    tenants = {
        "t1": TenantSpec("t1", Role.SENSITIVE, "t1.slice", "gpu0", home, 0.015),
        "etl": TenantSpec(
            "etl", Role.BULK, "etl.slice", "gpu0", InstanceRef("gpu0", "3g.20gb", 4), devices=("nvme0n1",)
        ),
    }
    samples = {"t1": TenantSample(), "etl": TenantSample(io={"nvme0n1": IoRate(2e9, 0.0)})}
    layouts = dict(LAYOUTS)
    if victim_profile != "1g.5gb":
        layouts["gpu0"] = (Slot(0, victim_profile), Slot(4, "3g.20gb"))
    obs = Observation(
        1.0, samples, {g: GpuSample(pcie_tx_bps=1e9, pcie_rx_bps=1e9, layout=lay) for g, lay in layouts.items()}
    )
    spec = HostSpec(p4d_like_topology(8), tenants, policy, {g: A100 for g in layouts})
    return spec, obs


def _best(spec: HostSpec, obs: Observation) -> InstanceRef:
    _, ranked = rank_candidates(spec, obs, spec.tenants["t1"], Cause.IO, (), Traffic.build(spec, obs), limit=5)
    return ranked[0].instance


def test_a_move_takes_the_next_size_up_of_equally_quiet_instances() -> None:
    spec, obs = _host(Policy())
    # gpu4's three free instances share their path terms: the 2g (next after 1g), not the 1g
    # nor the 3g, and not gpu6's whole GPU.
    assert _best(spec, obs) == InstanceRef("gpu4", "2g.10gb", 4)


def test_without_step_up_the_victims_own_size_comes_first() -> None:
    spec, obs = _host(Policy(move_step_up=False))
    assert _best(spec, obs) == InstanceRef("gpu4", "1g.5gb", 6)


def test_the_next_size_follows_the_configured_ladder() -> None:
    spec, obs = _host(Policy(mig_ladder={"A100-SXM4-40GB": ("1g.5gb", "3g.20gb", "7g.40gb")}))
    assert step_up(spec, "gpu4", 1) == 3
    assert _best(spec, obs) == InstanceRef("gpu4", "3g.20gb", 0)


def test_no_larger_profile_on_the_ladder_keeps_the_own_size() -> None:
    spec, _ = _host(Policy())
    assert step_up(spec, "gpu4", 7) == 0
    assert step_up(spec, "gpu4", 4) == 7
    assert step_up(spec, "gpu99", 1) == 0  # an unknown GPU: no preference
    spec, obs = _host(Policy(), victim_profile="3g.20gb")
    # From a 3g: gpu4 offers a 3g (own size) but no 4g; the 3g is taken, not gpu6's 7g.
    assert _best(spec, obs) == InstanceRef("gpu4", "3g.20gb", 0)
