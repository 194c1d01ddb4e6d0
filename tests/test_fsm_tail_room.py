"""A move or resize must not lift the tail's quantile over its window (outage_tail_margin): the
requests its outage holds past the tenant's tail land in the window's top 1%, and a cure takes out
of that only 1% of the requests left in the window. Late in the window a lever that pays on the
requests over the SLO is held; in the next window, or where the tail is already longer than the
outage, it is taken.

An outage spends the outage budget, and counts in that check, only for the seconds past the
tenant's headroom (Policy.outage_budget_headroom, tick_base._headroom): the tail it has now over
its window's median, while that median is under the SLO. A request held no longer than that waits
no longer than the tail's requests already do. A median over the SLO is a queue: every request
behind the outage waits its whole length on top of the wait it has, so there is no headroom."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

import pytest

from fsm.decide import decide
from fsm.desired import DecisionEvent
from fsm.examples import example_observation, example_spec
from fsm.observation import LatencyWindow
from fsm.spec import Policy
from fsm.state import ControllerState
from fsm.usual_rate import usual_rate

TICK = 2.0
WINDOW = 4000.0  # the outage budget's window: 20 s of outage for a p99 tenant, the 5 s relaunch fits
COUNT = 200  # requests per tick: 100/s


def _events(
    bad_from: float,
    ticks: int,
    tail_s: float = 0.030,
    calm_count: int = COUNT,
    median_s: float | None = 0.005,
    shape_from: float | None = None,
    count_at: Callable[[float], int] | None = None,
    history_s: float = 0.0,
    **policy: object,
) -> list[DecisionEvent]:
    """The example host's llm tenant (SLO 15 ms, 5 s relaunch), 10% of its requests over the SLO
    from `bad_from` on (`calm_count` requests per tick before, COUNT from then), its windows' p99
    `tail_s` and median `median_s` from `shape_from` (default `bad_from`; a hold is said once, so a
    test of its figures gives the windows their shape first); `count_at(t)`, where given, the
    requests per tick instead; `history_s`, its server's seconds before the first tick at the calm
    rate, read off its latency source (TenantSample.served_total, uptime_s); its escalations and
    holds."""
    spec = example_spec(
        Policy(guards=False, mps=False, placement=False, outage_budget_window_s=WINDOW, **policy)  # type: ignore[arg-type]
    )
    state = ControllerState()
    out = []
    total = calm_count / TICK * history_s
    for i in range(ticks):
        t = TICK * i
        bad = 0.10 if t >= bad_from else 0.0
        shaped = t >= (bad_from if shape_from is None else shape_from)
        p99, p50 = (tail_s, median_s) if shaped else (0.010, 0.005)
        o = example_observation(t, p99, 0.0)
        n = count_at(t) if count_at is not None else COUNT if t >= bad_from else calm_count
        llm = replace(o.tenants["llm"], latency=LatencyWindow(n, p50, p99, p99 * 1.3, over_slo=bad * n))
        total += n
        if history_s > 0:
            llm = replace(llm, served_total=total, uptime_s=history_s + t)
        d = decide(state, replace(o, tenants={**o.tenants, "llm": llm}), spec)
        state = d.state
        out += [e for e in d.events if e.tenant == "llm" and e.kind in ("escalate", "hold")]
    return out


def test_early_in_the_window_the_resize_is_taken():
    e = _events(120.0, 200)[0]
    assert e.kind == "escalate" and e.lever == "resize"


def test_late_in_the_window_it_is_held_with_the_figures():
    e = _events(3800.0, 1950)[0]
    assert e.kind == "hold"
    m = re.search(
        r"resize: its outage would hold (\d+) requests \([\d.]+ req/s\) past the tail \(0\.015 s, headroom 0\.01 s\)"
        r" where a"
        r" cure frees (\d+) of the top 1% in the (\d+) s left of the window \(outage_tail_margin 1\.5\): the tail's"
        r" quantile would rise",
        e.reason,
    )
    assert m, e.reason
    held, freed, left = (int(g) for g in m.groups())
    assert freed < 1.5 * held
    assert 100 < left < 200  # the hold came within a minute of the episode's start, 3,800 s in
    assert freed == pytest.approx(0.01 * left * 100, rel=0.15)  # 1% of the rest's requests at ~100/s


def test_without_the_check_the_late_resize_is_taken():
    e = _events(3800.0, 1950, outage_tail_margin=None)[0]
    assert e.kind == "escalate" and e.lever == "resize"


def test_the_next_window_has_its_whole_tail_to_cure():
    # held late in the first window; the same episode in the second (4,000 s on) is resized early
    events = _events(3800.0, 2250)
    assert events[0].kind == "hold"
    taken = [e for e in events if e.kind == "escalate"]
    assert taken and taken[0].lever == "resize"
    assert WINDOW <= taken[0].t < WINDOW + 60.0
    assert all(e.kind == "hold" for e in events if e.t < WINDOW)


def test_a_tail_longer_than_the_outage_takes_no_room():
    # windows whose quantile is 8 s, past the 5 s relaunch: its requests wait no longer than the
    # tail's, and the lever is taken however late, once the episode's windows are the recent ones'
    # majority (their median is the tail; the calm windows before it read 10 ms)
    events = _events(3800.0, 1950, tail_s=8.0)
    taken = [e for e in events if e.kind == "escalate"]
    assert taken and taken[0].lever == "resize"
    assert 3800.0 < taken[0].t < 3800.0 + 60.0 < WINDOW
    assert "(0.015 s, " in events[0].reason  # held while the recent windows were calm ones


def test_an_anchored_window_counts_from_the_anchor():
    # windows from 300 s on (a p99 judged per calendar span): 120 s is the end of the one before
    held = _events(120.0, 200, outage_window_anchor_s=300.0)[0]
    assert held.kind == "hold"
    m = re.search(r"in the (\d+) s left of the window", held.reason)
    assert m and 100 < int(m.group(1)) <= 180
    # and 3,800 s is early in one that began at 3,700 s
    taken = _events(3800.0, 1950, outage_window_anchor_s=3700.0)[0]
    assert taken.kind == "escalate" and taken.lever == "resize"


def test_the_rest_of_the_window_comes_at_theusual_rate():
    # The same episode (100 requests/s, 3,000 s of the window left) after 1,000 s at 100/s is
    # resized; after 1,000 s at 10/s it is held: a tail that came with the load is asked about
    # when the recent rate is up, and 1% of the requests to come is counted at the usual rate
    # (weighted over the window: about 15/s here), not at the recent one (tick_base._rate_ahead)
    # (no outage budget, no burst wait: both would hold an outage in the load's first minutes too)
    alone = {"outage_budget_share": None, "outage_burst_wait": False}
    (steady,) = [e for e in _events(1000.0, 560, **alone) if e.kind == "escalate"]
    assert steady.lever == "resize" and steady.t < 1060.0
    rose = _events(1000.0, 560, calm_count=20, **alone)
    assert not [e for e in rose if e.kind == "escalate"]
    m = re.search(r"where a cure frees (\d+) of the top 1% in the (\d+) s left of the window", rose[0].reason)
    assert m, rose[0].reason
    freed, left = (int(g) for g in m.groups())
    assert 0.01 * left * 10 < freed < 0.01 * left * 30


def _held_rate(e: DecisionEvent) -> float:
    m = re.search(r"would hold \d+ requests \(([\d.]+) req/s\) past the tail", e.reason)
    assert e.kind == "hold" and m, e.reason
    return float(m.group(1))


def test_an_outage_in_a_lull_holds_the_usual_rates_requests():
    # 400 requests/s until 3,000 s, then a lull at 100/s; the tail from 3,800 s, late in the
    # window: the tail check counts the requests the outage holds at the tenant's usual rate
    # (weighted over the window: about 340/s), not at the lull's (tick_base._rate_held); a
    # tenant at 100/s throughout has them counted at 100/s
    lull = _held_rate(_events(3800.0, 1950, count_at=lambda t: 800 if t < 3000.0 else COUNT)[0])
    steady = _held_rate(_events(3800.0, 1950)[0])
    assert 95.0 < steady < 105.0
    assert 300.0 < lull < 400.0


# 0.05 x 1% x 4,000 s = 2 s of outage per window: the llm tenant's 5 s relaunch does not fit it
TIGHT = {"outage_budget_share": 0.05}


def _taken(events: list[DecisionEvent]) -> list[DecisionEvent]:
    return [e for e in events if e.kind == "escalate"]


def _budget_holds(events: list[DecisionEvent]) -> list[str]:
    return [e.reason for e in events if e.kind == "hold" and "outage budget spent" in e.reason]


def test_a_tail_longer_than_the_outage_spends_nothing_of_the_budget():
    # an 8 s tail over a 5 ms median: the 5 s relaunch holds nobody past the tail the tenant has
    events = _events(120.0, 200, 8.0, median_s=0.005, **TIGHT)
    (e,) = _taken(events)
    assert e.lever == "resize"
    # the budget held it only while the recent windows' median quantile was still the calm 10 ms
    assert all("this needs 5 s)" in r for r in _budget_holds(events))


def test_without_the_headroom_the_budget_holds_it():
    events = _events(120.0, 200, 8.0, median_s=0.005, outage_budget_headroom=False, **TIGHT)
    assert not _taken(events)
    assert _budget_holds(events)


def test_a_queue_has_no_headroom():
    # the same tail over a 1 s median (most requests late): every request behind the outage waits
    # its 5 s on top of the wait it has, and the budget is charged all of them
    events = _events(120.0, 200, 8.0, median_s=1.0, **TIGHT)
    assert not _taken(events)
    assert _budget_holds(events)
    assert "headroom" not in " ".join(_budget_holds(events))


def test_no_median_no_headroom():
    # windows without a median (a source that gives the tail only): a queue cannot be ruled out
    events = _events(120.0, 200, 8.0, median_s=None, **TIGHT)
    assert not _taken(events)
    assert _budget_holds(events)


def test_a_shorter_tail_spends_the_rest_and_the_hold_says_so():
    # a 2 s tail: 3 s of the 5 s outage are past it, more than the 2 s budget
    events = _events(120.0, 200, 2.0, median_s=0.005, shape_from=0.0, **TIGHT)
    assert not _taken(events)
    (last,) = _budget_holds(events)
    m = re.search(
        r"outage budget spent \(0 s of 2 s per 4000 s; this needs ([\d.]+) s past ([\d.]+) s of headroom\)", last
    )
    assert m, last
    assert float(m.group(1)) == 3.0 and float(m.group(2)) == 2.0
    # a 4 s tail leaves 1 s of it to spend: it fits
    (e,) = _taken(_events(120.0, 200, 4.0, median_s=0.005, **TIGHT))
    assert e.lever == "resize"


def test_the_tail_check_counts_a_queue_from_its_median():
    # no outage budget; late in the window (200 s left: 1% of its requests is 200). Over a 5 ms
    # median the 5 s relaunch holds nobody past the 8 s tail and is taken; over a 1 s median it
    # delays everyone queued and behind them (about 500 requests), past the tail, and is held.
    late = {"shape_from": 3500.0, "outage_budget_share": None}
    (e,) = _taken(_events(3800.0, 1950, 8.0, median_s=0.005, **late))
    assert e.lever == "resize"
    queue = _events(3800.0, 1950, 8.0, median_s=1.0, **late)
    assert not _taken(queue)
    reasons = " ".join(e.reason for e in queue if e.kind == "hold")
    assert re.search(r"past the tail \(8 s, headroom 0 s\) where a cure frees \d+ of the top 1%", reasons), reasons


def _usual_after(count_at: Callable[[int], int], ticks: int) -> float | None:
    """The llm tenant's usual rate (usual_rate.usual_rate) after `ticks` calm ticks of count_at(i)
    requests each."""
    spec = example_spec(Policy(guards=False, mps=False, placement=False, outage_budget_window_s=WINDOW))
    state = ControllerState()
    for i in range(ticks):
        o = example_observation(TICK * i, 0.010, 0.0)
        n = count_at(i)
        window = LatencyWindow(n, 0.005, 0.010, 0.013, over_slo=0.0) if n else LatencyWindow(0)
        state = decide(
            state, replace(o, tenants={**o.tenants, "llm": replace(o.tenants["llm"], latency=window)}), spec
        ).state
    return usual_rate(state.tenants["llm"])


def test_silent_ticks_count_in_theusual_rate():
    # 10 requests/s as 20 on every 2 s tick, or as 40 on every other tick and none between: the
    # same usual rate (the silent seconds were left out of it, which read the half-empty one's
    # twice: the rate of its busy seconds, and the rest of a window's requests twice as many)
    steady = _usual_after(lambda i: 20, 500)
    halves = _usual_after(lambda i: 40 if i % 2 == 0 else 0, 500)
    assert steady == pytest.approx(10.0, rel=0.02)
    assert halves == pytest.approx(10.0, rel=0.05)


def test_a_prior_of_quiet_waits_for_the_rate_to_be_watched():
    # outage_tail_prior_s: the requests to come are counted at the rate ahead x watched / (watched
    # + the prior), so an early resize that the rate read off its first two minutes lets through
    # waits until the tenant has been watched long enough for its room to hold the outage: here
    # 845 requests x 1.5 against 1% of ~100/s over the ~3,400 s left, x w / (w + 1,000): w ~ 580 s
    events = _events(120.0, 300, outage_tail_prior_s=1000.0)
    first = events[0]
    assert first.kind == "hold" and "124 s watched against outage_tail_prior_s 1000)" in first.reason
    taken = _taken(events)
    assert taken and taken[0].lever == "resize"
    assert 540.0 < taken[0].t < 620.0
    assert all(e.kind == "hold" for e in events if e.t < taken[0].t)
    # without the prior (the default) the same resize is taken as soon as the tail is judged
    assert _taken(_events(120.0, 300))[0].t < 200.0
    # and so it is with the prior where the tenant's source watched it for an hour before (its
    # history at the same rate: the rate is no longer read off minutes)
    assert _taken(_events(120.0, 300, history_s=3600.0, outage_tail_prior_s=1000.0))[0].t < 200.0
