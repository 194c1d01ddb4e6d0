"""The PCIe tree a controller inside a VM sees ([scenario.signals] topology, replay/topology_view.py):
the decision core gets the view, the simulator's physics keeps the host's tree."""

from __future__ import annotations

import copy
import random
import tomllib
from itertools import combinations

import numpy as np
import pytest
from fakes.scenario_tables import assert_bad_line_named, with_table

from bench.robustness import case_generators, perturb
from fsm.topology import NodeKind, Tier
from replay.runner import run_host
from replay.scenario import SCENARIO_DIR, HostModel, Scenario, scenario_from_data
from replay.topology_view import controller_view

LEAVES = (NodeKind.GPU, NodeKind.NVME, NodeKind.NIC, NodeKind.OTHER)


def _host(view: str | None = None) -> tuple[Scenario, HostModel]:
    sc = with_table("paper-p4d", "signals", {} if view is None else {"topology": view})
    return sc, sc.hosts[0]


def test_exact_by_default_and_the_same_tree() -> None:
    sc, h = _host()
    assert sc.meta.signals.topology == "exact"
    assert h.spec.topology == h.topology
    assert controller_view(h.topology, "exact") is h.topology


@pytest.mark.parametrize(("view", "tier"), [("one-root", Tier.ROOT_COMPLEX), ("apart", Tier.NUMA)])
def test_a_view_keeps_every_device_and_changes_only_what_they_share(view: str, tier: Tier) -> None:
    _, h = _host(view)
    real, seen = h.topology, h.spec.topology
    assert seen != real
    devices = [n for n in real.nodes if n.kind in LEAVES]
    assert len(devices) > 8
    for n in devices:
        m = seen.node(n.id)
        assert (m.kind, m.aliases, m.link_bps, m.model, m.bdf) == (n.kind, n.aliases, n.link_bps, n.model, n.bdf)
        for a in n.aliases:
            assert seen.resolve(a) == n.id  # a block device's MAJ:MIN still names its drive
    assert not seen.of_kind(NodeKind.SWITCH)
    gpus = [g.id for g in real.gpus]
    # the host shares switches between GPUs; the view shows one tier for every pair
    assert any(real.distance(a, b) is Tier.SWITCH for a, b in combinations(gpus, 2))
    assert {seen.distance(a, b) for a, b in combinations([n.id for n in devices], 2)} == {tier}


def test_the_physics_keeps_the_hosts_tree() -> None:
    """Under `static` nothing is decided: the same seed gives the same requests' latencies whatever
    the controller would see."""
    runs = []
    for view in (None, "one-root", "apart"):
        sc, _ = _host(view)
        runs.append(run_host(sc, 0, "static", 900.0, sc.meta.seed))
    for r in runs[1:]:
        assert np.array_equal(r.latencies, runs[0].latencies)
        assert r.delivered == runs[0].delivered


def test_full_decides_on_the_view() -> None:
    """Seeing every device on a root complex of its own, full decides otherwise than on the host's
    tree over paper-p4d's four hours (it resizes where it moved: docs/results.md)."""
    seen = {}
    for view in (None, "apart"):
        sc, _ = _host(view)
        seen[view] = run_host(sc, 0, "full", 4 * 3600.0, sc.meta.seed).events
    assert seen[None] != seen["apart"]


def test_a_view_not_known_is_refused_by_name() -> None:
    assert_bad_line_named("signals", 'topology = "flat"', "topology")


def test_robustness_draws_a_vm_view_from_a_generator_of_its_own() -> None:
    data = tomllib.loads((SCENARIO_DIR / "paper-p4d.toml").read_text(encoding="utf-8"))
    views = set()
    for case in range(12):
        plain, vm = copy.deepcopy(data), copy.deepcopy(data)
        notes = perturb(plain, random.Random(f"7:paper-p4d:{case}"))
        extra = case_generators(7, "paper-p4d", case, ["vm_topology"])
        vnotes = perturb(vm, random.Random(f"7:paper-p4d:{case}"), **extra)
        view = vm["scenario"]["signals"]["topology"]
        views.add(view)
        assert [n for n in vnotes if n not in notes] == [f"the controller sees the PCIe tree {view}"]
        vm["scenario"]["signals"].pop("topology")
        if not vm["scenario"]["signals"]:
            vm["scenario"].pop("signals")
        assert vm == plain  # every other draw as without it
        scenario_from_data(plain, str(SCENARIO_DIR / "paper-p4d.toml"))
    assert views == {"one-root", "apart"}
