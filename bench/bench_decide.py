"""decide() cost per tick on a big host: 16 GPUs x 7 MIG instances, 32 tenants (8 sensitive).

Run: .venv/bin/python -m bench.bench_decide [--ticks N] [--write]
The stream alternates calm and interference phases so the ladder, diagnosis and placement all
run; the figure is wall time per decide() call (median and p99), on this machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

from fsm.decide import decide
from fsm.examples import p4d_like_topology
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
from fsm.state import ControllerState

N_GPUS, N_TENANTS, N_SENSITIVE = 16, 32, 8


def build() -> tuple[HostSpec, dict[str, InstanceRef]]:
    topo = p4d_like_topology(N_GPUS)
    tenants = {}
    homes = {}
    for i in range(N_TENANTS):
        gpu, start = f"gpu{i % N_GPUS}", (i // N_GPUS) * 3  # two instances in use per GPU
        ref = InstanceRef(gpu, "1g.5gb", start)
        role = Role.SENSITIVE if i < N_SENSITIVE else (Role.BULK if i < 24 else Role.COMPUTE)
        name = f"t{i:02d}"
        tenants[name] = TenantSpec(
            name,
            role,
            f"{name}.slice",
            gpu,
            ref,
            0.015 if role is Role.SENSITIVE else None,
            devices=(f"nvme{(i % N_GPUS) // 2}n1",),
        )
        homes[name] = ref
    spec = HostSpec(topo, tenants, Policy(), {g.id: "A100-SXM4-40GB" for g in topo.gpus})
    return spec, homes


def observation(spec: HostSpec, homes: dict[str, InstanceRef], i: int) -> Observation:
    burst = (i // 50) % 2 == 1
    layout = tuple(Slot(s, "1g.5gb") for s in range(7))
    tenants = {}
    for name, t in spec.tenants.items():
        if t.role is Role.SENSITIVE:
            p99 = 0.02 if burst and int(name[1:]) % 2 == 0 else 0.008
            tenants[name] = TenantSample(
                latency=LatencyWindow(500, p99 / 3, p99, p99 * 1.4), throughput=250.0, instance=homes[name]
            )
        else:
            bps = 2.5e9 if burst else 1e8
            tenants[name] = TenantSample(
                io={t.devices[0]: IoRate(bps, bps / 10, 1000.0, 100.0)},
                instance=homes[name],
                io_pressure=0.05,
                cpu_pressure=0.02,
            )
    gpus = {
        g.id: GpuSample(
            pcie_tx_bps=4e9,
            pcie_rx_bps=3e9,
            pcie_replay_rate=0.0,
            util=0.6,
            sm_active=0.5,
            dram_active=0.4,
            mig_enabled=True,
            layout=layout,
            instances={str(s): MigSample(0.5, 0.3) for s in layout},
        )
        for g in spec.topology.gpus
    }
    host = HostSample(
        block_bps={f"nvme{k}n1": 2e9 for k in range(8)}, nic_bps={"eth0": 1e9}, irq_rate={c: 2000.0 for c in range(96)}
    )
    return Observation(t=1000.0 + 2.0 * i, tenants=tenants, gpus=gpus, host=host)


def measure(ticks: int) -> tuple[float, float, float, int]:
    """(median wall, p99 wall, p99 thread CPU time, decisions). The CPU figure leaves out what a
    shared VM's neighbours steal, which dominates the wall-clock tail on this machine."""
    spec, homes = build()
    obs = [observation(spec, homes, i) for i in range(ticks)]
    state = ControllerState()
    times = []
    cpu = []
    n_events = 0
    for o in obs:
        t0 = time.perf_counter()
        c0 = time.thread_time()
        d = decide(state, o, spec)
        cpu.append(time.thread_time() - c0)
        times.append(time.perf_counter() - t0)
        state = d.state
        n_events += len(d.events)
    times.sort()
    cpu.sort()
    p99 = int(0.99 * (len(times) - 1))
    return statistics.median(times), times[p99], cpu[p99], n_events


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=3000)
    ap.add_argument("--write", action="store_true", help="print a RESULTS.md row")
    a = ap.parse_args()
    med, p99, p99_cpu, n = measure(a.ticks)
    print(
        f"decide() on {N_GPUS} GPUs x 7 MIG instances, {N_TENANTS} tenants ({N_SENSITIVE} sensitive), "
        f"{a.ticks} ticks, {n} decisions: median {med * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms per tick "
        f"(p99 CPU time {p99_cpu * 1e3:.3f} ms)"
    )
    if a.write:
        print(
            f"| {date.today()} | {platform.machine()} {platform.python_implementation()} {platform.python_version()} "
            f"| {a.ticks} | {n} | {med * 1e3:.3f} | {p99 * 1e3:.3f} | {p99_cpu * 1e3:.3f} |"
        )


if __name__ == "__main__":
    main()
