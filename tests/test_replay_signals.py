"""Signals as a real host gives them ([scenario.signals], replay/simulator.py): failed latency
scrapes whose requests come with the next window, no DCGM, NVML's sampled PCIe counters. Off by
default (the golden replays pin that); when on, static and full see the same failures and noise."""

from __future__ import annotations

import numpy as np
import pytest
from fakes.scenario_tables import assert_bad_line_named, with_table

from fsm.desired import DesiredState
from fsm.observation import InstanceRef, Observation
from replay.runner import run_host
from replay.scenario import Scenario
from replay.simulator import HostSim


def _scenario(name: str, **signals: object) -> Scenario:
    return with_table(name, "signals", signals)


def _ticks(sc: Scenario, n: int) -> list[Observation]:
    sim = HostSim(sc.hosts[0], sc.meta, sc.meta.seed)
    return [sim.advance() for _ in range(n)]


def test_a_failed_scrape_leaves_no_window_and_its_requests_join_the_next() -> None:
    """Every request is still reported once: the windows' counts over the run sum to those of the
    exact run; about the drawn share of ticks have none and say why in `unavailable`."""
    plain = _ticks(_scenario("paper-p4d"), 600)
    lossy = _ticks(_scenario("paper-p4d", latency_dropout=0.2), 600)
    name = "t1"
    counts = [o.tenants[name].latency.count if o.tenants[name].latency else 0 for o in plain]
    seen = [o.tenants[name].latency.count if o.tenants[name].latency else None for o in lossy]
    dropped = [i for i, c in enumerate(seen) if c is None]
    assert 0.14 * 600 < len(dropped) < 0.26 * 600
    for i in dropped:
        assert lossy[i].unavailable[f"latency:{name}"].startswith("scrape failed")
        assert lossy[i].tenants[name].throughput is None
    # the tick after a failure holds both ticks' requests (the run's tail may still be carried)
    last_seen = max(j for j, c in enumerate(seen) if c is not None)
    carried = sum(counts[last_seen + 1 :])
    assert sum(c for c in seen if c is not None) + carried == sum(counts)
    lone = [i for i in dropped if 0 < i < last_seen and seen[i - 1] is not None and seen[i + 1] is not None]
    assert lone and all(seen[i + 1] == counts[i] + counts[i + 1] for i in lone)


def test_without_dcgm_no_sm_or_dram_activity_is_seen() -> None:
    (o,) = _ticks(_scenario("vllm-ttft", dcgm=False), 1)
    assert o.unavailable["dcgm"].startswith("no DCGM")
    for g in o.gpus.values():
        assert g.sm_active is None and g.dram_active is None
        assert g.instances and all(m.sm_active is None and m.dram_active is None for m in g.instances.values())
        assert g.pcie_rx_bps is not None  # NVML's counters are still read


def test_dcgm_exporter_serves_its_last_collection_between_collections() -> None:
    """dcgm_interval_s 30 at 5 s ticks: SM and DRAM activity change only on the ticks whose span
    holds a multiple of 30 s, and then are that tick's own; NVML's PCIe counters are fresh each tick."""
    plain = _ticks(_scenario("paper-p4d"), 120)
    held = _ticks(_scenario("paper-p4d", dcgm_interval_s=30.0), 120)
    g = "gpu0"
    fresh_ticks = [i for i, o in enumerate(held) if int(o.t // 30) > int((o.t - 5.0) // 30)]
    assert len(fresh_ticks) == 20
    for i, o in enumerate(held):
        src = i if i in fresh_ticks or i == 0 else max(k for k in [0, *fresh_ticks] if k <= i)
        assert o.gpus[g].sm_active == plain[src].gpus[g].sm_active
        assert o.gpus[g].instances == plain[src].gpus[g].instances
        assert o.gpus[g].pcie_rx_bps == plain[i].gpus[g].pcie_rx_bps
    assert len({o.gpus[g].sm_active for o in held}) < len({o.gpus[g].sm_active for o in plain})


def test_pcie_counters_are_noisy_with_the_drawn_spread_and_unbiased() -> None:
    """A mean-1 lognormal factor per GPU, direction and tick: the noisy reading's ratio to the exact
    one averages 1 and spreads with the configured CV."""
    plain = _ticks(_scenario("paper-p4d"), 1500)
    noisy = _ticks(_scenario("paper-p4d", pcie_noise_cv=0.8), 1500)
    ratios = np.array(
        [
            n.gpus[g].pcie_rx_bps / p.gpus[g].pcie_rx_bps
            for p, n in zip(plain, noisy, strict=True)
            for g in p.gpus
            if p.gpus[g].pcie_rx_bps
        ]
    )
    assert ratios.size > 1000
    assert ratios.mean() == pytest.approx(1.0, abs=0.06)
    assert ratios.std() / ratios.mean() == pytest.approx(0.8, abs=0.12)


def test_both_policies_meet_the_same_failures() -> None:
    """The draws depend on the tick alone: full, which moves and caps, sees its scrapes fail on the
    ticks static's do (what the report's windows record)."""
    sc = _scenario("paper-p4d", latency_dropout=0.05, pcie_noise_cv=0.5, dcgm=False)
    runs = [run_host(sc, 0, p, 2400.0, sc.meta.seed) for p in ("static", "full")]
    ticks = [{t for t, name, _, _ in r.windows if name == "t1"} for r in runs]
    assert ticks[0] == ticks[1] and len(ticks[0]) < 2400 / sc.meta.tick_s
    assert runs[1].actions > 0  # full acted on what it saw


def test_late_ticks_skip_their_missed_slots_and_both_policies_meet_the_same() -> None:
    """A tick that runs late comes 2-4 periods after the one before, and its observation covers
    them all (the daemon skips missed slots): the windows' times are slots of the period, about the
    drawn share of gaps are longer, no request is lost, static and full see the same gaps, and the
    host itself runs as without them (only what the controller sees, and when, changes)."""
    sc = _scenario("paper-p4d", tick_overruns=0.2)
    tick = sc.meta.tick_s
    runs = [run_host(sc, 0, p, 3000.0, sc.meta.seed) for p in ("static", "full")]
    times = [sorted({t for t, name, _, _ in r.windows if name == "t1"}) for r in runs]
    assert times[0] == times[1] and runs[1].actions > 0
    gaps = np.diff([0.0, *times[0]]) / tick
    assert np.allclose(gaps, np.round(gaps)) and set(np.round(gaps).astype(int)) == {1, 2, 3, 4}
    late = int((gaps > 1.5).sum())
    assert 0.12 * len(gaps) < late < 0.28 * len(gaps)
    assert times[0][-1] == pytest.approx(3000.0)  # the run ends where a run of exact ticks ends
    exact = run_host(_scenario("paper-p4d"), 0, "static", 3000.0, sc.meta.seed)
    seen = sum(n for _, name, n, _ in runs[0].windows if name == "t1")
    assert seen == sum(n for _, name, n, _ in exact.windows if name == "t1")
    # only the controller's view is late: the host runs tick by tick, and static serves the same
    assert np.array_equal(runs[0].latencies, exact.latencies)


def test_what_a_skipped_tick_reports_comes_with_the_next_observation() -> None:
    """A move that finishes in a tick the daemon skipped: its outcome is not lost, the next
    observation carries it (the live actuators' outcomes wait in their queue the same way)."""
    sc = _scenario("paper-p4d", tick_overruns=0.5)
    sim = HostSim(sc.hosts[0], sc.meta, sc.meta.seed)
    sim.advance()
    sim.apply_sync(DesiredState(t=sim.t, placements={"t1": InstanceRef("gpu0", "1g.5gb", 1)}))
    for _ in range(4):  # the 5 s relaunch ends in here
        sim.skip()
    (o,) = sim.advance().actuation.outcomes
    assert o.target == "tenant:t1" and o.ok


@pytest.mark.parametrize(
    ("signals", "says"),
    [
        ("latency_dropout = 1.0", "latency_dropout"),
        ("pcie_noise_cv = -0.1", "pcie_noise_cv"),
        ("dcgn = false", "dcgn"),
        ("tick_overruns = 1.0", "tick_overruns"),
        ("dcgm_interval_s = 301", "dcgm_interval_s"),
    ],
)
def test_bad_signal_settings_name_the_key(signals: str, says: str) -> None:
    assert_bad_line_named("signals", signals, says)
