"""A move of tailguard's as a live host shows it to the latency sampler ([scenario.signals]
move_scrapes, on by default; replay/actuation.py, replay/simulator.py): the tenant's server stops, so
its /metrics refuses the scrapes while it is down, what the old process served since its last
scrape dies with its counters, and the new process's counters start from zero (the live sampler
reports that as a restart, controller/signals/latency.py), which the core takes for its own move's."""

from __future__ import annotations

import pytest
from fakes.scenario_tables import with_table

from fsm.desired import DesiredState
from fsm.mig import Slot
from fsm.observation import InstanceRef, Observation
from replay.actuation import Move
from replay.runner import run_host
from replay.scenario import Scenario
from replay.simulator import HostSim

TICK_S = 5.0  # paper-p4d's
OTHER = InstanceRef("gpu0", "1g.5gb", 1)
GROW = DesiredState(  # gpu2's change makes a 4g.20gb beside t1's own, then t1 relaunches there
    t=20.0,
    placements={"t1": InstanceRef("gpu2", "4g.20gb", 0)},
    layouts={"gpu2": (Slot(0, "4g.20gb"), Slot(4, "3g.20gb"))},
)


def _scenario(move_scrapes: bool | None = None, **meta: object) -> Scenario:
    values = {} if move_scrapes is None else {"move_scrapes": move_scrapes}
    return with_table("paper-p4d", "signals", values, **meta)


def _moved(
    sc: Scenario, ticks: int = 12, desired: DesiredState | None = None
) -> tuple[HostSim, list[Observation], list[Observation]]:
    """Four ticks, a move of t1 (or `desired`), `ticks` more: the simulator, the observations before
    and after."""
    sim = HostSim(sc.hosts[0], sc.meta, sc.meta.seed)
    before = [sim.advance() for _ in range(4)]
    sim.apply_sync(desired or DesiredState(t=sim.t, placements={"t1": OTHER}))
    return sim, before, [sim.advance() for _ in range(ticks)]


def _refused(o: Observation) -> bool:
    return o.tenants["t1"].latency is None and "connection refused" in o.unavailable.get("latency:t1", "")


def test_on_by_default_and_its_scrapes_are_refused_while_it_is_down() -> None:
    """A 20 s relaunch at 5 s ticks: three or four scrapes refused, then one that answers with the
    restart's span (since the last answered scrape), then plain windows again."""
    sc = _scenario(relaunch_s=20.0)
    assert sc.meta.signals.move_scrapes and not sc.meta.signals.degraded  # no generator for it
    sim, _, obs = _moved(sc)
    refused = [o for o in obs if _refused(o)]
    assert 3 <= len(refused) <= 4
    assert all(o.tenants["t1"].instance is None for o in refused)  # it was down each time
    first = next(o for o in obs if o.t > refused[-1].t)
    said = first.tenants["t1"].restarted_s
    assert said is not None and said == pytest.approx(TICK_S * (len(refused) + 1))
    assert first.tenants["t1"].latency is not None
    assert all(o.tenants["t1"].restarted_s is None for o in obs if o.t > first.t)
    assert sim.instance["t1"] == OTHER


def test_what_the_old_process_served_since_its_last_scrape_is_lost_to_the_view_not_to_the_run() -> None:
    """The controller's windows hold fewer requests than with the model's older view (the refused
    ticks' completions die with the old counters); what the run counts (every request's latency) is
    the same either way. A resize stops the tenant after its MIG change, 18 s on: within a tick."""
    on, _, obs_on = _moved(_scenario(relaunch_s=20.0), desired=GROW)
    off, _, obs_off = _moved(_scenario(False, relaunch_s=20.0), desired=GROW)
    assert any(_refused(o) for o in obs_on)
    assert not any(_refused(o) for o in obs_off)
    assert all(o.tenants["t1"].restarted_s is None for o in obs_off)

    def seen(obs: list[Observation]) -> int:
        return sum(o.tenants["t1"].latency.count for o in obs if o.tenants["t1"].latency is not None)

    assert seen(obs_on) < seen(obs_off)
    assert on.stats.served == off.stats.served
    assert on.stats.admitted == off.stats.admitted


def test_a_failed_warm_move_keeps_its_old_process_and_its_counters() -> None:
    """The new copy never got ready and was stopped: the old one served throughout, nothing restarted."""
    sc = with_table("paper-p4d", "actuation", {"move_failures": 1.0}, handover="warm")
    sim, _, obs = _moved(sc)
    assert not any(_refused(o) or o.tenants["t1"].restarted_s is not None for o in obs)
    assert sim.instance["t1"] == InstanceRef("gpu0", "1g.5gb", 0)


def test_a_failed_restart_move_is_down_for_both_relaunches_and_restarts_once() -> None:
    """Moved back after the new copy never got ready: one span of refused scrapes, the two relaunches."""
    sc = with_table("paper-p4d", "actuation", {"move_failures": 1.0}, relaunch_s=20.0)
    _, _, obs = _moved(sc, ticks=20)
    refused = [o for o in obs if _refused(o)]
    said = [o.tenants["t1"].restarted_s for o in obs if o.tenants["t1"].restarted_s is not None]
    assert len(said) == 1 and said[0] == pytest.approx(TICK_S * (len(refused) + 1))
    assert 40.0 - TICK_S <= TICK_S * len(refused) <= 40.0


def test_the_core_takes_the_restart_after_its_own_move_for_its_own() -> None:
    """Under `full` on a scenario whose levers relaunch for 30 s: moves happen, the scrapes their
    outages refused show in the windows counted, and no `restarted` event (a restart of the tenant's
    own) is ever emitted for one of them."""
    sc = with_table("vllm-ttft", "signals", {})
    run = run_host(sc, 0, "full", 4 * 3600.0, sc.meta.seed)
    assert run.outages, "the scenario's controller moved nothing: the test checks nothing"
    assert not [e for e in run.events if " restarted " in e]
    old = with_table("vllm-ttft", "signals", {"move_scrapes": False})
    run_old = run_host(old, 0, "full", 4 * 3600.0, old.meta.seed)
    assert len(run.windows) < len(run_old.windows)  # the refused scrapes


def test_a_move_records_whether_a_new_process_serves_after_it() -> None:
    assert Move(OTHER, 0.0, 1.0, 2.0).restarts
