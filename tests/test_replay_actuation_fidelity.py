"""Actuators as a real host has them ([scenario.actuation], replay/actuation.py): relaunches and MIG
reconfigurations off the configured figures, moves whose new copy never gets ready, reconfigurations
nvidia-smi refuses. Off by default; each drawn per operation from a generator of the host's own."""

from __future__ import annotations

import tomllib

import pytest
from fakes.scenario_tables import assert_bad_line_named, with_table

from fsm.desired import DesiredState, Throttle
from fsm.mig import Slot
from fsm.observation import InstanceRef, Observation
from fsm.outage import MoveKind
from replay.runner import run_host
from replay.scenario import SCENARIO_DIR, Scenario, scenario_from_data
from replay.simulator import HostSim

RELAUNCH_S, RECONFIG_S, TICK_S = 5.0, 18.0, 5.0  # paper-p4d's
OLD, OTHER = InstanceRef("gpu0", "1g.5gb", 0), InstanceRef("gpu0", "1g.5gb", 1)
GROW = DesiredState(  # gpu2's change makes a 4g.20gb beside t1's own: BESIDE, then a relaunch
    t=20.0,
    placements={"t1": InstanceRef("gpu2", "4g.20gb", 0)},
    layouts={"gpu2": (Slot(0, "4g.20gb"), Slot(4, "3g.20gb"))},
)


def _scenario(handover: str = "restart", **actuation: object) -> Scenario:
    return with_table("paper-p4d", "actuation", actuation, handover=handover)


def _apply(sc: Scenario, desired: DesiredState, ticks: int = 20) -> tuple[HostSim, list[Observation]]:
    """Four ticks, then `desired` once, then `ticks` more; the observations after it."""
    sim = HostSim(sc.hosts[0], sc.meta, sc.meta.seed)
    for _ in range(4):
        sim.advance()
    sim.apply_sync(desired)
    return sim, [sim.advance() for _ in range(ticks)]


def _down_s(obs: list[Observation], name: str = "t1") -> float:
    return TICK_S * sum(1 for o in obs if o.tenants[name].instance is None)


def _outcomes(obs: list[Observation], target: str) -> list[tuple[bool, str]]:
    return [(x.ok, x.error) for o in obs for x in o.actuation.outcomes if x.target == target]


def test_by_default_a_move_takes_its_configured_relaunch_and_reports_it_measured() -> None:
    sc = _scenario()
    assert not sc.meta.actuation.degraded
    assert HostSim(sc.hosts[0], sc.meta, sc.meta.seed).advance().tenants["t1"].outage_s is None  # none yet
    sim, obs = _apply(sc, DesiredState(t=20.0, placements={"t1": OTHER}))
    assert sim.act_rng is None
    assert _down_s(obs) == pytest.approx(RELAUNCH_S, abs=TICK_S)
    assert _outcomes(obs, "tenant:t1") == [(True, "")]
    # what the live actuators record of a restart move, the relaunch, as the cost model reads it
    assert obs[-1].tenants["t1"].outage_s == RELAUNCH_S


def test_the_hosts_relaunch_is_the_configured_one_times_its_factor_and_is_what_is_measured() -> None:
    sim, obs = _apply(_scenario(relaunch_factor=4.0), DesiredState(t=20.0, placements={"t1": OTHER}))
    assert _down_s(obs) == pytest.approx(4 * RELAUNCH_S, abs=TICK_S)
    assert obs[-1].tenants["t1"].outage_s == pytest.approx(4 * RELAUNCH_S)
    assert sim.instance["t1"] == OTHER


def test_a_reconfiguration_takes_its_factor_and_a_resize_reports_its_relaunch_alone() -> None:
    _, obs = _apply(_scenario(reconfig_factor=2.0, relaunch_factor=3.0), GROW)
    busy = TICK_S * sum(1 for o in obs if "gpu:gpu2" in o.actuation.in_flight)
    assert busy == pytest.approx(2 * RECONFIG_S, abs=TICK_S)
    assert _outcomes(obs, "tenant:t1") == [(True, "")]
    # the live actuators record a resize's relaunch apart from its MIG change, which the cost model reads
    assert obs[-1].tenants["t1"].outage_s == pytest.approx(3 * RELAUNCH_S)


def test_outages_vary_per_operation_around_the_factor() -> None:
    """A mean-1 lognormal factor per operation: over many moves the mean holds, the spread shows."""
    sc = _scenario(relaunch_factor=2.0, outage_cv=0.5)
    sim = HostSim(sc.hosts[0], sc.meta, sc.meta.seed)
    seen = []
    for k in range(300):
        sim._move("t1", OTHER if k % 2 == 0 else OLD, MoveKind.EXISTING)
        seen.append(sim.moves.pop("t1").measured_s)
    mean = sum(seen) / len(seen)
    cv = (sum((s - mean) ** 2 for s in seen) / len(seen)) ** 0.5 / mean
    assert mean == pytest.approx(2 * RELAUNCH_S, rel=0.1)
    assert cv == pytest.approx(0.5, abs=0.12)


def test_a_failed_restart_move_relaunches_on_its_old_instance_an_outage_for_nothing() -> None:
    sim, obs = _apply(_scenario(move_failures=1.0), DesiredState(t=20.0, placements={"t1": OTHER}))
    # the new copy's relaunch, then the old one's
    assert _down_s(obs) == pytest.approx(2 * RELAUNCH_S, abs=TICK_S)
    ((ok, error),) = _outcomes(obs, "tenant:t1")
    assert not ok and "never got ready" in error and "moved back" in error
    assert sim.instance["t1"] == OLD and obs[-1].tenants["t1"].instance == OLD
    assert sim.stats.failed_ops == 1
    assert obs[-1].tenants["t1"].outage_s is None  # a failed move records no relaunch
    # the outcome says how long it served nothing, as the live actuators measure a move back
    (said,) = [x.outage_s for o in obs for x in o.actuation.outcomes if x.target == "tenant:t1"]
    assert said == pytest.approx(2 * RELAUNCH_S)


def test_a_failed_warm_move_keeps_its_old_copy_serving() -> None:
    sim, obs = _apply(_scenario("warm", move_failures=1.0), DesiredState(t=20.0, placements={"t1": OTHER}))
    assert _down_s(obs) == 0.0
    ((ok, error),) = _outcomes(obs, "tenant:t1")
    assert not ok and "old copy kept" in error
    assert sim.instance["t1"] == OLD


def test_a_relaunch_past_the_readiness_wait_fails_the_move_and_moves_back() -> None:
    """The launcher gives the new copy readiness_timeout_s (here 12 s) and the host takes 20 s: the
    move fails at 12 s and the tenant relaunches where it was, as slow there (left to finish)."""
    sim, obs = _apply(
        _scenario(relaunch_factor=4.0, readiness_timeout_s=12.0), DesiredState(t=20.0, placements={"t1": OTHER})
    )
    ((ok, error),) = _outcomes(obs, "tenant:t1")
    assert not ok and "not ready within 12 s" in error and "moved back" in error
    assert sim.instance["t1"] == OLD
    (said,) = [x.outage_s for o in obs for x in o.actuation.outcomes if x.target == "tenant:t1"]
    assert said == pytest.approx(12.0 + 4 * RELAUNCH_S)
    assert _down_s(obs) == pytest.approx(said, abs=TICK_S)


def test_the_readiness_wait_is_at_least_twice_the_configured_relaunch_and_a_dead_copy_is_given_up_at_it() -> None:
    # 1 s asked, 10 s waited (twice the configured 5 s, what check-config asks): a 5 s relaunch serves
    sim, obs = _apply(_scenario(readiness_timeout_s=1.0), DesiredState(t=20.0, placements={"t1": OTHER}))
    assert _outcomes(obs, "tenant:t1") == [(True, "")] and sim.instance["t1"] == OTHER
    # a new copy that never gets ready is given up at the wait, not at its relaunch
    _, obs = _apply(
        _scenario(move_failures=1.0, readiness_timeout_s=30.0), DesiredState(t=20.0, placements={"t1": OTHER})
    )
    (said,) = [x.outage_s for o in obs for x in o.actuation.outcomes if x.target == "tenant:t1"]
    assert said == pytest.approx(30.0 + RELAUNCH_S)


def test_a_new_copy_that_exits_is_given_up_when_the_launcher_sees_it_not_at_the_wait() -> None:
    """failed_exits: a failing copy that exits while it loads (a systemd unit turning "failed") is
    given up at the launcher's next check, at most its relaunch and 2 s after it started, then
    relaunched where it was; one that hangs (the rest) is given up at the readiness wait."""
    desired = DesiredState(t=20.0, placements={"t1": OTHER})
    _, obs = _apply(_scenario(move_failures=1.0, failed_exits=1.0, readiness_timeout_s=120.0), desired)
    ((ok, error),) = _outcomes(obs, "tenant:t1")
    assert not ok and "exited while starting" in error and "moved back" in error
    (said,) = [x.outage_s for o in obs for x in o.actuation.outcomes if x.target == "tenant:t1"]
    assert RELAUNCH_S < said <= 2 * RELAUNCH_S + 2.0
    _, obs = _apply(_scenario(move_failures=1.0, failed_exits=0.0, readiness_timeout_s=120.0), desired, ticks=40)
    (said,) = [x.outage_s for o in obs for x in o.actuation.outcomes if x.target == "tenant:t1"]
    assert said == pytest.approx(120.0 + RELAUNCH_S)


def test_a_warm_copy_past_the_readiness_wait_is_stopped_and_the_old_one_kept() -> None:
    sim, obs = _apply(
        _scenario("warm", relaunch_factor=4.0, readiness_timeout_s=12.0), DesiredState(t=20.0, placements={"t1": OTHER})
    )
    assert _down_s(obs) == 0.0
    ((ok, error),) = _outcomes(obs, "tenant:t1")
    assert not ok and "not ready within 12 s" in error and "old copy kept" in error
    assert sim.instance["t1"] == OLD


def test_a_resize_in_place_past_the_readiness_wait_is_left_starting_on_its_new_instance() -> None:
    """Its old instance is gone with the MIG change: nothing to move back to (actuators/moves.py
    leaves it starting there); the failure is reported, the tenant serves there once started."""
    grow = DesiredState(
        t=20.0,
        placements={"t1": InstanceRef("gpu0", "2g.10gb", 0)},
        layouts={"gpu0": (Slot(0, "2g.10gb"), Slot(2, "2g.10gb"), Slot(4, "3g.20gb"))},
    )
    sim, obs = _apply(_scenario(relaunch_factor=4.0, readiness_timeout_s=12.0), grow, ticks=20)
    ((ok, error),) = _outcomes(obs, "tenant:t1")
    assert not ok and "not ready within 12 s" in error and "left starting there" in error
    assert sim.instance["t1"] == InstanceRef("gpu0", "2g.10gb", 0)
    assert _down_s(obs) == pytest.approx(RECONFIG_S + 4 * RELAUNCH_S, abs=TICK_S)


def test_a_refused_reconfiguration_changes_nothing_and_says_why() -> None:
    sim, obs = _apply(_scenario(reconfig_refusals=1.0), GROW, ticks=3)
    assert _outcomes(obs, "gpu:gpu2") == [(False, "In use by another client (simulated: actuation.reconfig_refusals)")]
    # nothing stopped: the change, nor the move into the instance it would have made
    said = [(x.target, x.outage_s) for o in obs for x in o.actuation.outcomes]
    assert said == [("gpu:gpu2", 0.0), ("tenant:t1", 0.0)]
    assert not any("gpu:gpu2" in o.actuation.in_flight for o in obs)
    assert sim.layouts["gpu2"] == HostSim(_scenario().hosts[0], _scenario().meta, 1).layouts["gpu2"]
    assert sim.instance["t1"] == OLD and _down_s(obs) == 0.0


def test_the_controller_takes_a_failed_lever_as_failed_and_the_run_is_deterministic() -> None:
    """Every move fails and every reconfiguration is refused: full takes the failed move as failed
    (its step undone, moved back), and the backlog of its outage as its own, not interference's;
    static meets no operation at all; two runs agree. (The retries after a backoff, and the bar
    after a second failure, are tests/test_fsm_ladder.py's.)"""
    sc = _scenario(move_failures=1.0, reconfig_refusals=1.0)
    static = run_host(sc, 0, "static", 7200.0, sc.meta.seed)
    full = [run_host(sc, 0, "full", 7200.0, sc.meta.seed) for _ in range(2)]
    assert static.failed_ops == 0
    # the move (t = 5,225 s) fails; its backlog settles, and nothing is bought on it: before, a
    # resize and the move again followed within 200 s on the backlog's share over the SLO, and
    # both failed too
    fails = [e.split()[4] for e in full[0].events if " fail " in e]
    assert fails == ["place"] and full[0].failed_ops == 1
    assert not [e for e in full[0].events if " escalate " in e and float(e.split()[0][2:]) > 5225.0]
    assert full[0].failed_ops == full[1].failed_ops and full[0].events == full[1].events
    assert (full[0].latencies == full[1].latencies).all()


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("relaunch_factor = 0", "relaunch_factor"),
        ("move_failures = 1.5", "move_failures"),
        ("outage_cv = -1", "outage_cv"),
        ("refusals = 0.1", "refusals"),
        ("readiness_timeout_s = 0", "readiness_timeout_s"),
        ("failed_exits = 2", "failed_exits"),
        ("cap_leak = 1", "cap_leak"),
    ],
)
def test_bad_actuation_settings_name_the_key(line: str, says: str) -> None:
    assert_bad_line_named("actuation", line, says)


def _writer(cap_leak: float) -> Scenario:
    """paper-p4d with its ETL (t2) writing to its two drives where it read them."""
    data = tomllib.loads((SCENARIO_DIR / "paper-p4d.toml").read_text(encoding="utf-8"))
    for t in data["hosts"][0]["tenants"]:
        if t["name"] == "t2":
            t["flows"] = [
                {"path": list(reversed(f["path"])) if "nvme" in f["path"][0] else f["path"]} for f in t["flows"]
            ]
    data["scenario"]["actuation"] = {"cap_leak": cap_leak}
    return scenario_from_data(data, "paper-p4d")


@pytest.mark.parametrize("leak", [0.0, 0.5, 0.8])
def test_a_v1_cap_holds_only_the_writes_it_charges(leak: float) -> None:
    """cgroup v1 (cap_leak): a write cap holds the share of the writes the group is charged with;
    the buffered rest rides along, charged to nobody the controller sees. The writer then runs at
    cap / (1 - leak), its io stats show the cap (a cap that binds, as far as tailguard can tell),
    and the drive carries it all. A read cap is not affected (v1 throttles reads)."""
    sc = _writer(leak)
    sim = HostSim(sc.hosts[0], sc.meta, sc.meta.seed)
    cap = 1e8
    th = Throttle("t2", "nvme0n1", "etl.slice", None, cap, 1e9)
    for _ in range(int(1000 / sc.meta.tick_s)):
        o = sim.step(DesiredState(t=sim.t, throttles=(th,)))
    io = o.tenants["t2"].io
    assert io is not None
    assert io["nvme0n1"].write_bps == pytest.approx(cap, rel=1e-6)
    assert o.host is not None and o.host.block_bps["nvme0n1"] == pytest.approx(cap / (1 - leak), rel=1e-6)
    reader = with_table("paper-p4d", "actuation", {"cap_leak": leak})
    sim = HostSim(reader.hosts[0], reader.meta, reader.meta.seed)
    th = Throttle("t2", "nvme0n1", "etl.slice", cap, None, 1e9)
    for _ in range(int(1000 / reader.meta.tick_s)):
        o = sim.step(DesiredState(t=sim.t, throttles=(th,)))
    io = o.tenants["t2"].io
    assert io is not None and io["nvme0n1"].read_bps == pytest.approx(cap, rel=1e-6)


def test_the_decision_core_is_told_the_launchers_readiness_wait() -> None:
    """What a failed move costs (fsm relief_worst_case) is the simulated launcher's wait: the one
    set, at least twice the relaunch (what check-config asks of an operator); none set, the launcher
    waits as long as a relaunch takes."""
    assert _scenario().hosts[0].spec.tenants["t1"].readiness_timeout_s == RELAUNCH_S
    assert _scenario(readiness_timeout_s=120.0).hosts[0].spec.tenants["t1"].readiness_timeout_s == 120.0
    assert _scenario(readiness_timeout_s=6.0).hosts[0].spec.tenants["t1"].readiness_timeout_s == 2 * RELAUNCH_S
