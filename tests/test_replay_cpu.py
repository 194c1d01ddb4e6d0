"""The CPU channel: CFS sharing of a sensitive tenant's cores, PSI, and that it follows the victim."""

from __future__ import annotations

import numpy as np
import pytest

from fsm.desired import DesiredState
from fsm.observation import InstanceRef
from replay.cpu import CpuModel
from replay.runner import run_host
from replay.scenario import SCENARIO_DIR, ScenarioError, parse_scenario
from replay.simulator import HostSim

P4D = (SCENARIO_DIR / "paper-p4d.toml").read_text().replace("copies = 2", "copies = 1")
VLLM = (SCENARIO_DIR / "vllm-ttft.toml").read_text()


def test_cfs_sharing_by_hand() -> None:
    # Victim on CPUs 0-3 (one thread); a batch job with 16 threads on 0-7: half of them (8) run on
    # the victim's CPUs, so 9 runnable threads share 4 CPUs: each runs at 4/9 of a CPU.
    m = CpuModel({"v": tuple(range(4)), "a": tuple(range(8))}, {"v"})
    threads = {"a": 16.0, "v": 0.2}
    assert m.slowdown("v", threads) == pytest.approx(9 / 4)
    # PSI "some": the victim's thread busy 0.2 s/s uncontended waits 0.2 x (9/4 - 1) s/s.
    assert m.pressure("v", threads, busy=0.2) == pytest.approx(0.25)
    # The job: 16 + 0.2 runnable on 8 CPUs, 8.2 waiting, 16/16.2 of them its own: capped at 1.
    assert m.pressure("a", threads) == 1.0
    # Fewer runnable threads than CPUs: wake-up balancing finds an idle CPU, nobody waits.
    calm = {"a": 4.0, "v": 0.2}
    assert m.slowdown("v", calm) == 1.0 and m.pressure("v", calm, 0.2) == 0.0 and m.pressure("a", calm) == 0.0
    # Disjoint cpusets never interact; a tenant with no cpuset is not modelled.
    d = CpuModel({"v": (0, 1), "a": (2, 3)}, {"v"})
    assert d.slowdown("v", {"a": 50.0}) == 1.0 and d.pressure("x", {}) is None


def _cpu_variant(threads: float, cpu_ms: float = 3.0) -> str:
    """paper-p4d, T2/T3 quiet; T1 pinned to 4 CPUs of node 0 with 3 ms of CPU work per request;
    a preprocessing job (no GPU traffic) with `threads` runnable threads on node 0's first 8 CPUs."""
    text = P4D.replace("schedule = { period_s = 3600,", "schedule = { level = 0.0, period_s = 3600,")
    text = text.replace('cgroup = "t1.slice"', 'cgroup = "t1.slice"\ncpus = "0-3"')
    text = text.replace("noise_cv = 0.25", f"noise_cv = 0.25\ncpu_ms = {cpu_ms}")
    return text + (
        '\n[[hosts.tenants]]\nname = "prep"\nrole = "bulk"\ncgroup = "prep.slice"\ncpus = "0-7"\n'
        f"cpu_threads = {threads}\n"
    )


def test_cpu_contention_stretches_the_tail_and_shows_as_cpu_pressure() -> None:
    quiet = parse_scenario(_cpu_variant(0.0), "/tmp/c0.toml")
    busy = parse_scenario(_cpu_variant(12.0), "/tmp/c12.toml")
    p99 = {}
    for name, scen in (("quiet", quiet), ("busy", busy)):
        r = run_host(scen, 0, "static", 600.0, seed=2)
        p99[name] = float(np.quantile(r.latencies, 0.99))
    # 1 + 12 x 4/8 = 7 runnable threads on 4 CPUs: 3 ms of CPU work takes 5.25 ms.
    assert p99["busy"] > p99["quiet"] + 2.0e-3
    sim = HostSim(busy.hosts[0], busy.meta, seed=2)
    obs = sim.advance()
    t1, prep = obs.tenants["t1"], obs.tenants["prep"]
    # T1 busy 85 req/s x 3 ms = 0.255 s/s; waiting 0.255 x (7/4 - 1) = 0.19 s/s.
    assert t1.cpu_pressure is not None and 0.15 < t1.cpu_pressure < 0.25
    assert prep.cpu_pressure == 1.0
    # Off by default: the bundled scenario does not model the channel at all (unknown, not 0).
    plain = parse_scenario(P4D, "/tmp/plain.toml")
    assert HostSim(plain.hosts[0], plain.meta, seed=2).advance().tenants["t1"].cpu_pressure is None


def test_the_cpu_channel_follows_the_victim_to_another_gpu() -> None:
    scen = parse_scenario(_cpu_variant(12.0), "/tmp/cf.toml")
    sim = HostSim(scen.hosts[0], scen.meta, seed=4)
    before = [sim.advance().tenants["t1"].cpu_pressure for _ in range(3)]
    sim.apply_sync(DesiredState(t=sim.t, placements={"t1": InstanceRef("gpu6", "1g.5gb", 0)}))
    for _ in range(4):
        sim.advance()
    assert sim.instance["t1"] == InstanceRef("gpu6", "1g.5gb", 0)  # another switch, another socket
    after = [sim.advance().tenants["t1"].cpu_pressure for _ in range(3)]
    assert min(after) > 0.8 * max(before)  # the same cores: the same pressure


def test_batched_steps_are_stretched_by_cpu_contention() -> None:
    base = VLLM.replace('cgroup = "system.slice/vllm.service"', 'cgroup = "system.slice/vllm.service"\ncpus = "0-1"')
    extra = '\n[[hosts.tenants]]\nname = "prep"\nrole = "bulk"\ncpus = "0-3"\ncpu_threads = {n}\n'
    p99 = []
    for n in (0.0, 8.0):
        scen = parse_scenario(base + extra.format(n=n), f"/tmp/b{n}.toml")
        r = run_host(scen, 0, "static", 600.0, seed=1)
        p99.append(float(np.quantile(r.latencies, 0.99)))
    # 1 + 8 x 2/4 = 5 runnable on 2 CPUs: step_ms 1 -> 2.5 ms per step, every step.
    assert p99[1] > p99[0] * 1.02


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ('cgroup = "t1.slice"', 'cgroup = "t1.slice"\ncpu_threads = 2', r"tenants\[0\]\(t1\): .*cpu_threads"),
        ('cgroup = "etl.slice"', 'cgroup = "etl.slice"\ncpu_threads = 2', r"tenants\[1\]\(t2\): .*needs cpus"),
        ('cgroup = "etl.slice"', 'cgroup = "etl.slice"\ncpus = "0-x"', r"tenants\[1\]\(t2\)\.cpus: bad CPU list"),
        (
            'cgroup = "etl.slice"',
            'cgroup = "etl.slice"\ncpus = "500"',
            r"tenants\[1\]\(t2\)\.cpus: CPU 500 is on no NUMA",
        ),
    ],
)
def test_bad_cpu_keys_name_the_key(old: str, new: str, expect: str) -> None:
    with pytest.raises(ScenarioError, match=expect):
        parse_scenario(P4D.replace(old, new, 1), "/tmp/bad.toml")
    with pytest.raises(ScenarioError, match=r"requests.*cpu_ms"):
        parse_scenario(VLLM.replace("step_ms = 1.0", "step_ms = 1.0\ncpu_ms = 1.0"), "/tmp/bad2.toml")
