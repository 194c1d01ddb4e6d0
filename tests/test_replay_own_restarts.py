"""A sensitive tenant's own restarts ([scenario.restarts], replay/simulator.py): a deploy, an
out-of-memory kill, a crash that systemd restarts. Off by default (the golden replays pin that);
when on, the tenant serves nothing for the outage, what arrived meanwhile waits, and every policy
meets the same restarts."""

from __future__ import annotations

import numpy as np
import pytest
from fakes.scenario_tables import assert_bad_line_named, with_table

from replay.runner import run_host
from replay.scenario import Scenario
from replay.simulator import HostSim


def _scenario(name: str, **restarts: object) -> Scenario:
    return with_table(name, "restarts", restarts)


def _run(sc: Scenario, seconds: float) -> HostSim:
    sim = HostSim(sc.hosts[0], sc.meta, sc.meta.seed)
    for _ in range(round(seconds / sc.meta.tick_s)):
        sim.advance()
    return sim


def test_off_by_default() -> None:
    sim = _run(_scenario("paper-p4d"), 600.0)
    assert sim.stats.own_restarts == []


def test_restarts_come_as_a_poisson_process_and_hold_their_tenant() -> None:
    """About duration / every_s restarts per sensitive tenant, each a stop of outage_s: the requests
    that arrive during one wait out the rest of it (the plain run's worst wait is milliseconds), and
    there are about as many such waits as the outages' seconds hold arrivals."""
    every, outage, seconds = 300.0, 20.0, 6000.0
    sc = _scenario("paper-p4d", every_s=every, outage_s=outage)
    sim = _run(sc, seconds)
    plain = _run(_scenario("paper-p4d"), seconds)
    names = set(sim.sensitive)
    restarts = sim.stats.own_restarts
    assert {n for _, n, _ in restarts} == names
    for name in names:
        k = sum(1 for _, n, _ in restarts if n == name)
        mean = seconds / every
        assert mean - 4 * mean**0.5 < k < mean + 4 * mean**0.5  # Poisson: 20 +- 18
    assert all(s == outage for _, _, s in restarts)
    assert all(0 <= at < seconds for at, _, _ in restarts)
    lat = np.concatenate(sim.stats.latencies)
    assert np.concatenate(plain.stats.latencies).max() < 1.0
    assert lat.max() >= outage - sc.meta.tick_s  # one arriving as it stopped waits about all of it
    for name in names:
        long = int((np.concatenate(sim.stats.tenant_latencies[name]) > 1.0).sum())
        rate = sim.stats.admitted[name] / seconds
        held = rate * outage * sum(1 for _, n, _ in restarts if n == name)
        assert 0.4 * held < long < 2.0 * held  # the outage's arrivals, and those behind them


def test_its_scrapes_fail_while_it_is_down_and_the_first_after_says_it_restarted() -> None:
    """As a live vLLM's: its /metrics refuses the scrapes while it restarts, and the first that
    answers shows counters from zero, which the live sampler reports with the seconds since the
    last scrape that answered (controller/signals/latency.py): the outage, within two ticks."""
    sc = _scenario("paper-p4d", every_s=300.0, outage_s=20.0)
    sim = HostSim(sc.hosts[0], sc.meta, sc.meta.seed)
    tick = sc.meta.tick_s
    obs = [sim.advance() for _ in range(round(3000.0 / tick))]
    restarts = [(at, n, s) for at, n, s in sim.stats.own_restarts]
    assert len(restarts) >= 10
    for name in sim.sensitive:
        mine = [(at, s) for at, n, s in restarts if n == name]
        said = [(o.t, o.tenants[name].restarted_s) for o in obs if o.tenants[name].restarted_s is not None]
        assert len(said) == len({round(at + s, 6) for at, s in mine}) > 0  # one each (overlaps merge)
        for at, s in mine:
            down = [o for o in obs if at < o.t < at + s]
            assert down and all(
                o.tenants[name].latency is None and "connection refused" in o.unavailable[f"latency:{name}"]
                for o in down
            )
            first = next(o for o in obs if o.t >= at + s)
            assert first.tenants[name].latency is not None
            assert s <= first.tenants[name].restarted_s < s + 2 * tick


def test_the_outage_defaults_to_the_tenants_relaunch() -> None:
    sc = _scenario("vllm-ttft", every_s=200.0)
    sim = _run(sc, 1200.0)
    relaunch = {n: t.relaunch_s for n, t in sc.hosts[0].spec.tenants.items()}
    assert sim.stats.own_restarts
    assert all(s == relaunch[n] for _, n, s in sim.stats.own_restarts)


def test_every_policy_meets_the_same_restarts() -> None:
    """The restarts come from a generator of their own, drawn when one comes due: full, which moves
    and caps, meets those static meets, except where a move of its own had the tenant down then."""
    sc = _scenario("paper-p4d", every_s=400.0, outage_s=5.0)
    runs = [run_host(sc, 0, p, 3600.0, sc.meta.seed) for p in ("static", "full")]
    static, full = ({(at, n) for at, n, _ in r.own_restarts} for r in runs)
    assert len(static) >= 10 and runs[1].actions > 0
    assert full <= static and len(static - full) <= runs[1].moves
    with_restarts = runs[0].tenant_latencies["t1"]
    without = run_host(_scenario("paper-p4d"), 0, "static", 3600.0, sc.meta.seed).tenant_latencies["t1"]
    assert with_restarts.size == without.size  # the same arrivals, all served
    assert np.quantile(with_restarts, 0.999) > 10 * np.quantile(without, 0.999)


@pytest.mark.parametrize(
    ("restarts", "says"),
    [
        ("every_s = 0", "every_s"),
        ("outage_s = -1", "outage_s"),
        ("outage_s = 4000", "outage_s"),
        ("evry_s = 60", "evry_s"),
    ],
)
def test_bad_restart_settings_name_the_key(restarts: str, says: str) -> None:
    assert_bad_line_named("restarts", restarts, says)
