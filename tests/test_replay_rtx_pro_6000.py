"""The replay lab on an RTX PRO 6000 Blackwell Server Edition host (12 memory slots, 4 compute
slices): a scenario names the model, its layout is checked against that model's placements, the
simulator weighs a neighbour by its share of the GPU's 4 slices (not 7), and the controller resizes a
compute-bound victim on a 1g.24gb at start 9 to a 2g.48gb whose layout is valid for the model."""

from __future__ import annotations

import pytest

from fsm.decide import decide
from fsm.mig import A100_80GB, RTX_PRO_6000_SE, Slot, is_valid
from fsm.observation import GpuSample, InstanceRef, MigSample, Observation
from fsm.state import ControllerState
from replay.fromtrace import _neighbours
from replay.runner import run_host
from replay.scenario import ScenarioError, parse_scenario
from replay.simulator import HostSim

# t1 (p99 SLO 15 ms) on the 1g.24gb at 9, compute-bound (4 ms a request at 100/s on one slice); its
# neighbour on the 1g.24gb at 0 turns busy at 600 s (SM 95 %, coupling 1.0). Slots 6-8 are free, so
# the step up, a 2g.48gb, fits at 6 (over 6-11) without touching the other tenants. Four hours:
# the outage budget's window, in which a resize's 23 s fit (an hour's 18 s would not).
SCENARIO = """
[scenario]
name = "rtx-resize"
description = "t1 on a 1g.24gb at start 9 of an RTX PRO 6000 Blackwell SE, a busy neighbour from 600 s"
duration_s = 14400
tick_s = 5.0
seed = 3
reconfig_s = 18.0
relaunch_s = 5.0
compute_coupling = 1.0

[policy]
y_windows = 3
z_windows = 5
cooldown_s = 30.0
dwell_s = 60.0
max_reconfigs_per_hour = 4
min_window_count = 20

[[hosts]]
name = "rtx"
nodes = [
  { id = "numa0", kind = "numa", index = 0, cpus = "0-31" },
  { id = "rc0", kind = "root_complex", parent = "numa0" },
  { id = "gpu0", kind = "gpu", parent = "rc0", model = "RTX-PRO-6000-SE", layout = LAYOUT },
]

[[hosts.tenants]]
name = "t1"
role = "sensitive"
instance = "gpu0/1g.24gb@9"
cgroup = "t1.slice"
slo_ms = 15.0
[hosts.tenants.requests]
rate = 100.0
compute_ms = 4.0
slice_exponent = 1.0
noise_cv = 0.25

[[hosts.tenants]]
name = "chat"
role = "compute"
instance = "gpu0/1g.24gb@0"
cgroup = "chat.slice"
sm_active = 0.95
schedule = { period_s = 14400, on = [[600, 14400]] }

[[hosts.tenants]]
name = "embed"
role = "compute"
instance = "gpu0/1g.24gb@3"
cgroup = "embed.slice"
sm_active = 0.5
""".replace("LAYOUT", '["1g.24gb@0", "1g.24gb@3", "1g.24gb@9"]')
START = (Slot(0, "1g.24gb"), Slot(3, "1g.24gb"), Slot(9, "1g.24gb"))
GROWN = (Slot(0, "1g.24gb"), Slot(3, "1g.24gb"), Slot(6, "2g.48gb"))


def test_a_scenario_host_takes_the_model_and_its_placements() -> None:
    scen = parse_scenario(SCENARIO, "rtx.toml")
    host = scen.hosts[0]
    assert host.models["gpu0"] is RTX_PRO_6000_SE and host.layouts["gpu0"] == START
    assert host.spec.gpu_models == {"gpu0": "RTX-PRO-6000-SE"}
    # Starts of the A100/H100 geometry are refused on this GPU, by its own placements.
    bad = SCENARIO.replace('"1g.24gb@3"', '"1g.24gb@4"').replace("gpu0/1g.24gb@3", "gpu0/1g.24gb@4")
    with pytest.raises(ScenarioError, match=r"1g.24gb@4: 1g.24gb may start only at \[0, 3, 6, 9\]"):
        parse_scenario(bad, "rtx.toml")
    over = SCENARIO.replace('"1g.24gb@9"', '"2g.48gb@6", "1g.24gb@9"')
    with pytest.raises(ScenarioError, match="overlaps"):
        parse_scenario(over, "rtx.toml")


def test_a_neighbour_weighs_its_share_of_the_gpus_own_slices() -> None:
    scen = parse_scenario(SCENARIO, "rtx.toml")
    sim = HostSim(scen.hosts[0], scen.meta, 3, 0)
    assert sim._share(InstanceRef("gpu0", "1g.24gb", 0)) == 1 / 4
    assert sim._share(InstanceRef("gpu0", "2g.48gb", 6)) == 2 / 4
    # A trace's neighbours likewise (replay fromtrace): a 1g beside it at SM 100 % is a quarter of
    # an RTX PRO 6000, a seventh of an A100.
    obs = Observation(t=0.0, gpus={"gpu0": GpuSample(instances={
        "1g.24gb@0": MigSample(sm_active=1.0), "1g.24gb@9": MigSample(sm_active=1.0)})})  # fmt: skip
    own = InstanceRef("gpu0", "1g.24gb", 9)
    assert _neighbours(obs, own, RTX_PRO_6000_SE.compute_slices) == 1 / 4
    assert _neighbours(obs, own, A100_80GB.compute_slices) == 1 / 7


def test_the_controller_resizes_the_victim_to_a_layout_valid_for_the_model() -> None:
    scen = parse_scenario(SCENARIO, "rtx.toml")
    host = scen.hosts[0]
    sim = HostSim(host, scen.meta, 3, 0)
    state, desired = ControllerState(), None
    resized = []
    for _ in range(int(3600 / scen.meta.tick_s)):
        obs = sim.step(desired)
        d = decide(state, obs, host.spec)
        state, desired = d.state, d.desired
        resized += [(e, dict(desired.layouts)) for e in d.events if e.kind == "escalate" and e.lever == "resize"]
        if resized and obs.tenants["t1"].instance == InstanceRef("gpu0", "2g.48gb", 6):
            break
    assert resized, "no resize in the first hour"
    (event, layouts), *_ = resized
    assert "1g.24gb -> 2g.48gb on gpu0" in event.reason and event.t > 600
    assert layouts["gpu0"] == GROWN and is_valid(RTX_PRO_6000_SE, layouts["gpu0"])
    assert sim.layouts["gpu0"] == GROWN and obs.gpus["gpu0"].layout == GROWN
    assert obs.tenants["t1"].instance == InstanceRef("gpu0", "2g.48gb", 6)
    # The whole run under the lab's runner: one reconfiguration, none failed, every layout valid.
    run = run_host(scen, 0, "full", 14400, 3)
    assert run.reconfigs == 1 and run.failed_ops == 0
    assert [c["lever"] for c in run.lever_costs] == ["resize"]
