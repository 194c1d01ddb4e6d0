"""Full-duplex PCIe: (link, direction) resources, hand-computed sharing cases, the scenario keys."""

from __future__ import annotations

import numpy as np
import pytest

from fsm.topology import TopologyBuilder
from replay.fabric import Flow, max_min
from replay.paths import BOTH, DOWN, UP, flow_links, legs, with_both
from replay.runner import run_host
from replay.scenario import SCENARIO_DIR, ScenarioError, parse_scenario

GB = 1e9


def _topo():  # type: ignore[no-untyped-def]
    # numa0 - rc0 - sw0 (uplink 24) - {gpu0 (24), nvme0 (7)};  numa1 - rc1 - sw1 (24) - gpu1 (24)
    return (
        TopologyBuilder()
        .numa(0, range(4))
        .numa(1, range(4, 8))
        .root_complex("rc0", 0)
        .root_complex("rc1", 1)
        .switch("sw0", "rc0", 24 * GB)
        .switch("sw1", "rc1", 24 * GB)
        .gpu("gpu0", "sw0", 24 * GB)
        .nvme("nvme0", "sw0", 7 * GB)
        .gpu("gpu1", "sw1", 24 * GB)
        .build()
    )


def _cap(topo) -> dict[tuple[str, str], float]:  # type: ignore[no-untyped-def]
    return {(n.id, w): n.link_bps for n in topo.nodes if n.link_bps is not None for w in (UP, DOWN)}


def test_opposite_directions_do_not_contend() -> None:
    # One 10 GB/s link: an upstream and a downstream elastic flow each get the whole 10.
    cap = {("l", UP): 10.0, ("l", DOWN): 10.0}
    r = max_min([Flow("read", {("l", UP): 1}), Flow("copy", {("l", DOWN): 1})], cap)
    assert r == pytest.approx({"read": 10.0, "copy": 10.0})


def test_same_direction_contends() -> None:
    cap = {("l", UP): 10.0, ("l", DOWN): 10.0}
    r = max_min([Flow("a", {("l", DOWN): 1}), Flow("b", {("l", DOWN): 1}), Flow("c", {("l", UP): 1})], cap)
    assert r == pytest.approx({"a": 5.0, "b": 5.0, "c": 10.0})
    # Asymmetric capacities: 4 up, 16 down.
    r = max_min([Flow("up", {("l", UP): 1}), Flow("dn", {("l", DOWN): 1})], {("l", UP): 4.0, ("l", DOWN): 16.0})
    assert r == pytest.approx({"up": 4.0, "dn": 16.0})


def test_flow_links_follow_the_direction_of_the_bytes() -> None:
    topo = _topo()
    # An NVMe read into host memory goes up its own link, the switch's uplink and the root
    # complex's (no capacity here: not a constraint).
    assert flow_links(topo, "nvme0", "cpu") == {("nvme0", UP): 1, ("sw0", UP): 1, ("rc0", UP): 1}
    # A host-to-GPU copy goes down the switch's uplink and down the GPU's link; D2H goes up.
    assert flow_links(topo, "cpu", "gpu0") == {("rc0", DOWN): 1, ("sw0", DOWN): 1, ("gpu0", DOWN): 1}
    assert flow_links(topo, "gpu0", "cpu") == {("gpu0", UP): 1, ("sw0", UP): 1, ("rc0", UP): 1}
    # Peer-to-peer under one switch: up from the drive to the switch, down to the GPU; the
    # switch's uplink is not crossed.
    assert flow_links(topo, "nvme0", "gpu0") == {("nvme0", UP): 1, ("gpu0", DOWN): 1}
    # Across root complexes: up to host memory on one side, down on the other.
    assert flow_links(topo, "nvme0", "gpu1") == {
        ("nvme0", UP): 1,
        ("sw0", UP): 1,
        ("rc0", UP): 1,
        ("rc1", DOWN): 1,
        ("sw1", DOWN): 1,
        ("gpu1", DOWN): 1,
    }
    assert flow_links(topo, "cpu", "cpu") == {}


def test_an_etl_pipeline_shares_only_the_downstream_leg_with_a_victims_copy() -> None:
    topo = _topo()
    cap = _cap(topo)
    # ETL: reads nvme0 into memory (7 GB/s drive) and copies the batches to gpu0: both legs carry
    # its rate; a victim's elastic H2D copy to gpu0.
    etl = {**flow_links(topo, "nvme0", "cpu")}
    for k, m in flow_links(topo, "cpu", "gpu0").items():
        etl[k] = etl.get(k, 0) + m
    victim = flow_links(topo, "cpu", "gpu0")
    r = max_min([Flow("etl", etl), Flow("victim", victim)], cap)
    # By hand: the drive's 7 GB/s up-link freezes the ETL at 7; the victim gets 24 - 7 = 17 down.
    assert r == pytest.approx({"etl": 7 * GB, "victim": 17 * GB})
    # Under the old one-capacity model the ETL's read and copy both took sw0's 24: the victim
    # would get 24 - 2 x 7 = 10. A D2H victim does not meet the copy at all: only the read (7 up
    # on sw0, and gpu0's uplink is free): 24 - 7 = 17 on sw0 up.
    back = flow_links(topo, "gpu0", "cpu")
    r = max_min([Flow("etl", etl), Flow("d2h", back)], cap)
    assert r == pytest.approx({"etl": 7 * GB, "d2h": 17 * GB})
    # Two victims copying down through sw0 beside the ETL (held at 7 by its drive): 24 - 7 = 17
    # left on sw0 down, split 8.5 / 8.5.
    r = max_min([Flow("etl", etl), Flow("v1", victim), Flow("v2", victim)], cap)
    assert r == pytest.approx({"etl": 7 * GB, "v1": 8.5 * GB, "v2": 8.5 * GB})


P4D = (SCENARIO_DIR / "paper-p4d.toml").read_text().replace("copies = 2", "copies = 1")


def _static_p99(text: str, name: str) -> float:
    r = run_host(parse_scenario(text, f"/tmp/{name}.toml"), 0, "static", 1200.0, seed=3)
    return float(np.quantile(r.latencies, 0.99))


def _with_t2(flows: str, demand: float = 12.0, level: float = 1.0) -> str:
    """paper-p4d with T3 off and T2 always on, moving `flows` at `demand` GB/s per leg."""
    text = P4D.replace("schedule = { period_s = 3600, on = [[1500, 2400]] }", "schedule = { level = 0.0 }")
    start = text.index("demand_gbps = 2.7")
    end = text.index("schedule = { period_s = 3600, on = [[900, 1800]] }")
    return (
        text[:start]
        + f"demand_gbps = {demand}\nflows = [{flows}]\n"
        + text[end:].replace(
            "schedule = { period_s = 3600, on = [[900, 1800]] }", f"schedule = {{ level = {level} }}", 1
        )
    )


def test_victim_copies_meet_downstream_traffic_not_upstream_traffic() -> None:
    # T1 copies host -> GPU 0 (under sw0). T2 reading a NIC into memory goes up sw0: T1 does not
    # notice; T2 copying memory to GPU 1 (same switch) goes down sw0: T1's tail grows.
    read, copy = '{ path = ["nic0", "cpu"] }', '{ path = ["cpu", "gpu1"] }'
    quiet = _static_p99(_with_t2(read, level=0.0), "q")
    assert _static_p99(_with_t2(read), "up") == pytest.approx(quiet, rel=1e-9)
    assert _static_p99(_with_t2(copy), "down") > 1.2 * quiet
    # With all of T1's bytes going device -> host (d2h_share = 1) it is the other way round.
    h2d, d2h = "d2h_share = 0.0 ", "d2h_share = 1.0 "
    quiet2 = _static_p99(_with_t2(read, level=0.0).replace(h2d, d2h), "q2")
    assert _static_p99(_with_t2(copy).replace(h2d, d2h), "down2") == pytest.approx(quiet2, rel=1e-9)
    assert _static_p99(_with_t2(read).replace(h2d, d2h), "up2") > 1.2 * quiet2


def test_up_and_down_capacities_from_the_scenario() -> None:
    text = P4D.replace(
        'id = "sw0"\nkind = "switch"\nparent = "rc0"\nlink_gbps = 24.0',
        'id = "sw0"\nkind = "switch"\nparent = "rc0"\nlink_gbps = 24.0\nup_gbps = 12.0',
    )
    host = parse_scenario(text, "/tmp/ud.toml").hosts[0]
    assert host.capacity[("sw0", UP)] == 12e9 and host.capacity[("sw0", DOWN)] == 24e9
    assert host.capacity[("gpu0", UP)] == host.capacity[("gpu0", DOWN)] == 24e9
    bad = P4D.replace(
        'id = "rc0"\nkind = "root_complex"\nparent = "numa0"',
        'id = "rc0"\nkind = "root_complex"\nparent = "numa0"\ndown_gbps = 5.0',
    )
    with pytest.raises(ScenarioError, match=r"nodes\[2\]\(rc0\)\.link_gbps"):
        parse_scenario(bad, "/tmp/bad.toml")


def test_a_cap_on_both_directions_together_by_hand() -> None:
    # Measured on A100s, one GPU copying both ways at once does not keep 25 GB/s each way (about 24
    # + 12.5, NVIDIA/nvbandwidth #11): duplex_gbps caps the sum. Up = down = 25, both = 36.
    cap = {("g", UP): 25.0, ("g", DOWN): 25.0, ("g", BOTH): 36.0}
    up = legs(["g"], UP, {"g"})
    down = legs(["g"], DOWN, {"g"})
    assert up == {("g", UP): 1, ("g", BOTH): 1}
    # Two elastic flows, one each way: the sum is the constraint, split evenly: 18 + 18.
    assert max_min([Flow("h2d", down), Flow("d2h", up)], cap) == pytest.approx({"h2d": 18.0, "d2h": 18.0})
    # One way only: the direction's own 25 binds first.
    assert max_min([Flow("h2d", down)], cap) == pytest.approx({"h2d": 25.0})
    # A D2H flow that wants only 10 leaves 26 of the sum, of which the H2D one can use its 25.
    assert max_min([Flow("h2d", down), Flow("d2h", up, cap=10.0)], cap) == pytest.approx({"h2d": 25.0, "d2h": 10.0})
    # Max-min splits a full sum evenly: it does not reproduce the measured 24 / 12 asymmetry.
    # with_both adds the both-directions leg to a path's resources, once per crossing.
    assert with_both({("g", UP): 1, ("s", DOWN): 2}, {"g", "s"}) == {
        ("g", UP): 1,
        ("g", BOTH): 1,
        ("s", DOWN): 2,
        ("s", BOTH): 2,
    }
    assert with_both({("g", UP): 1}, frozenset()) == {("g", UP): 1}


def test_duplex_gbps_from_the_scenario() -> None:
    text = P4D.replace(
        'id = "gpu0"\nkind = "gpu"\nparent = "sw0"\nmodel = "A100-SXM4-40GB"\nlink_gbps = 24.0',
        'id = "gpu0"\nkind = "gpu"\nparent = "sw0"\nmodel = "A100-SXM4-40GB"\nlink_gbps = 24.0\nduplex_gbps = 36.0',
    )
    host = parse_scenario(text, "/tmp/dx.toml").hosts[0]
    assert host.capacity[("gpu0", BOTH)] == 36e9 and ("gpu1", BOTH) not in host.capacity
    # T1 copying to GPU 0 both ways (d2h_share 0.5) now shares 36 GB/s rather than 2 x 24.
    both_ways = text.replace("d2h_share = 0.0 ", "d2h_share = 0.5 ")
    free = P4D.replace("d2h_share = 0.0 ", "d2h_share = 0.5 ")
    quiet = "schedule = { level = 0.0, period_s = 3600,"
    capped = _static_p99(both_ways.replace("schedule = { period_s = 3600,", quiet), "dx1")
    uncapped = _static_p99(free.replace("schedule = { period_s = 3600,", quiet), "dx2")
    assert capped == pytest.approx(uncapped, rel=1e-9)  # T1 alone never fills 36 GB/s
    # A neighbour reading 20 GB/s back from GPU 0 (up its link) leaves T1's copies down it
    # min(24, 36 - 20) = 16 GB/s under the cap, 24 without: 3.9 ms instead of 2.6 ms per request.
    gpu0 = 'id = "gpu0"\nkind = "gpu"\nparent = "sw0"\nmodel = "A100-SXM4-40GB"\nlink_gbps = 24.0'
    back = _with_t2('{ path = ["gpu0", "cpu"] }', demand=20.0)
    p_free = _static_p99(back, "dx3")
    p_cap = _static_p99(back.replace(gpu0, gpu0 + "\nduplex_gbps = 36.0"), "dx4")
    assert p_free == pytest.approx(uncapped, rel=0.02)  # full duplex: the read-back costs T1 nothing
    assert p_cap > p_free + 1e-3
    bad = P4D.replace(
        'id = "sw0"\nkind = "switch"\nparent = "rc0"\nlink_gbps = 24.0',
        'id = "sw0"\nkind = "switch"\nparent = "rc0"\nlink_gbps = 24.0\nduplex_gbps = 60.0',
    )
    with pytest.raises(ScenarioError, match=r"nodes\[3\]\(sw0\)\.duplex_gbps: 60 must lie between"):
        parse_scenario(bad, "/tmp/dxbad.toml")
