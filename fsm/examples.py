"""A small example host and observation stream, built with the public constructors.

Used by `tailguard demo --synthetic`, the tests and the decide() benchmark. Pure data.
"""

from __future__ import annotations

from collections.abc import Iterator

from fsm.desired import DesiredState
from fsm.mig import Slot
from fsm.observation import (
    GpuSample,
    HostSample,
    InstanceRef,
    IoRate,
    LatencyWindow,
    MigSample,
    Observation,
    TenantSample,
)
from fsm.spec import HostSpec, Policy, Role, TenantSpec
from fsm.topology import Topology, TopologyBuilder

# Policy fields for streams that start at t=0, act within seconds and skip ahead in time with a
# window's usual count (the ladder's tests): no outage warm-up, no charge for the spread of counts
# that such a jump fakes, no wait for the burst it looks like, and no check of the tail an outage
# adds over windows as short as theirs (tests/test_fsm_outage_spread.py, tests/test_fsm_burst_wait.py
# and tests/test_fsm_tail_room.py test them).
UNPRICED_OUTAGES = {
    "outage_warmup_s": 0.0,
    "outage_spread_sigmas": 0.0,
    "outage_burst_wait": False,
    "outage_tail_margin": None,
    "relief_worst_case": False,
}

GEN4_X16 = 25e9  # usable bytes/s of a PCIe Gen4 x16 link, roughly
A100 = "A100-SXM4-40GB"


def p4d_like_topology(n_gpus: int = 8) -> Topology:
    """GPUs in pairs behind PCIe switches, one NVMe per switch, two switches per NUMA node
    (the p4d.24xlarge layout of aws-ofi-nccl's topology file; NVMe placement is our assumption)."""
    b = TopologyBuilder()
    n_switch = max(1, n_gpus // 2)
    per_numa = 2
    n_numa = max(1, (n_switch + per_numa - 1) // per_numa)
    for n in range(n_numa):
        b.numa(n, cpus=range(n * 24, n * 24 + 24))
    for s in range(n_switch):
        numa = s // per_numa
        b.root_complex(f"rc{s}", numa, link_bps=GEN4_X16)
        b.switch(f"sw{s}", f"rc{s}", link_bps=GEN4_X16)
        b.nvme(f"nvme{s}", f"sw{s}", link_bps=7e9, aliases=(f"nvme{s}n1", f"259:{s}"))
        for k in range(2):
            g = 2 * s + k
            if g < n_gpus:
                b.gpu(f"gpu{g}", f"sw{s}", model=A100, link_bps=GEN4_X16)
    return b.build()


def seven_way(gpu: str) -> tuple[Slot, ...]:
    return tuple(Slot(i, "1g.5gb") for i in range(7))


def example_spec(policy: Policy | None = None) -> HostSpec:
    topo = p4d_like_topology(4)
    tenants = {
        "llm": TenantSpec("llm", Role.SENSITIVE, "llm.slice", "gpu0", InstanceRef("gpu0", "2g.10gb", 0), 0.015),
        "etl": TenantSpec(
            "etl", Role.BULK, "etl.slice", "gpu1", InstanceRef("gpu1", "3g.20gb", 4), devices=("nvme0n1",)
        ),
        "train": TenantSpec("train", Role.COMPUTE, "train.slice", "gpu2", InstanceRef("gpu2", "7g.40gb", 0)),
        "db": TenantSpec("db", Role.PROTECTED, "db.slice", None, None, devices=("nvme0n1",)),
    }
    return HostSpec(topo, tenants, policy or Policy(), {g.id: A100 for g in topo.gpus})


EXAMPLE_LAYOUTS = {
    "gpu0": (Slot(0, "2g.10gb"), Slot(2, "2g.10gb"), Slot(4, "3g.20gb")),
    "gpu1": (Slot(0, "3g.20gb"), Slot(4, "3g.20gb")),
    "gpu2": (Slot(0, "7g.40gb"),),
    "gpu3": (Slot(0, "2g.10gb"), Slot(2, "2g.10gb"), Slot(4, "2g.10gb"), Slot(6, "1g.5gb")),
}


def example_observation(
    t: float,
    p99_s: float,
    etl_bps: float,
    llm_at: InstanceRef | None = None,
    layouts: dict[str, tuple[Slot, ...]] | None = None,
    count: int = 200,
) -> Observation:
    lay = layouts or EXAMPLE_LAYOUTS
    llm = llm_at or InstanceRef("gpu0", "2g.10gb", 0)
    tenants = {
        "llm": TenantSample(
            latency=LatencyWindow(count, p99_s * 0.4, p99_s, p99_s * 1.3), throughput=count / 2.0, instance=llm
        ),
        "etl": TenantSample(
            io={"nvme0n1": IoRate(read_bps=etl_bps, write_bps=0.0)},
            throughput=etl_bps,
            instance=InstanceRef("gpu1", "3g.20gb", 4),
        ),
        "train": TenantSample(instance=InstanceRef("gpu2", "7g.40gb", 0)),
        "db": TenantSample(io={"nvme0n1": IoRate(read_bps=30e6, write_bps=30e6)}),
    }
    gpus = {
        g: GpuSample(
            pcie_tx_bps=etl_bps * 0.5 if g == "gpu1" else 1e8,
            pcie_rx_bps=etl_bps * 0.5 if g == "gpu1" else 1e8,
            util=0.5,
            mig_enabled=True,
            layout=lay[g],
            instances={str(s): MigSample(sm_active=0.4, dram_active=0.3) for s in lay[g]},
        )
        for g in lay
    }
    host = HostSample(block_bps={"nvme0n1": etl_bps + 60e6}, irq_rate={c: 1000.0 for c in range(48)})
    return Observation(t=t, tenants=tenants, gpus=gpus, host=host)


def synthetic_stream(period_s: float = 2.0, n: int = 120) -> Iterator[Observation]:
    """An ETL burst hits the latency tenant: calm, burst (p99 over the 15 ms SLO), calm again.
    Latency responds to the caps the way the simulator would not bother to: it is a script."""
    for i in range(n):
        t = 1000.0 + i * period_s
        burst = 20 <= i < 70
        p99 = 0.021 if burst else 0.009
        yield example_observation(t, p99, 3e9 if burst else 2e8)


class ToyPlant:
    """A closed-loop toy host for the demo and the tests: the latency tenant's p99 grows with the
    ETL bytes that reach its switch, caps cut those bytes, a move off the switch removes them and a
    bigger slice shortens compute. Deliberately crude; the real model is replay/'s simulator."""

    def __init__(self, period_s: float = 2.0, caps_cut: bool = True) -> None:
        self.period_s = period_s
        self.caps_cut = caps_cut  # False: caps cut the ETL's bytes but not the tail (another cause)
        self.t = 1000.0
        self.llm_at = InstanceRef("gpu0", "2g.10gb", 0)
        self.layouts = dict(EXAMPLE_LAYOUTS)
        self.cap_bps: float | None = None

    def etl_demand(self) -> float:
        i = int((self.t - 1000.0) / self.period_s)
        return 3e9 if 20 <= i % 200 < 110 else 2e8

    def observe(self) -> Observation:
        demand = self.etl_demand()
        etl = min(demand, self.cap_bps) if self.cap_bps is not None else demand
        on_switch = self.llm_at.gpu in ("gpu0", "gpu1")
        slices = {"1g.5gb": 1, "2g.10gb": 2, "3g.20gb": 3, "4g.20gb": 4, "7g.40gb": 7}[self.llm_at.profile]
        felt = etl if self.caps_cut else demand
        p99 = 0.008 * 2 / slices + (4e-12 * max(0.0, felt - 5e8) if on_switch else 0.0)
        obs = example_observation(self.t, p99, etl, self.llm_at, self.layouts)
        self.t += self.period_s
        return obs

    def apply(self, desired: DesiredState) -> None:
        caps = [c.read_bps for c in desired.throttles if c.tenant == "etl" and c.read_bps is not None]
        self.cap_bps = min(caps) if caps else None
        self.layouts.update(desired.layouts)
        want = desired.placements.get("llm")
        if want is not None and want.slot in self.layouts.get(want.gpu, ()):
            self.llm_at = want
