"""A move or resize must not lift the tail's quantile over its window (outage_tail_margin): the
requests its outage holds past the tenant's tail land in the window's top 1%, and a cure takes out
of that only 1% of the requests left in the window. Late in the window a lever that pays on the
requests over the SLO is held; in the next window, or where the tail is already longer than the
outage, it is taken."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from fsm.decide import decide
from fsm.desired import DecisionEvent
from fsm.examples import example_observation, example_spec
from fsm.observation import LatencyWindow
from fsm.spec import Policy
from fsm.state import ControllerState

TICK = 2.0
WINDOW = 4000.0  # the outage budget's window: 20 s of outage for a p99 tenant, the 5 s relaunch fits
COUNT = 200  # requests per tick: 100/s


def _events(bad_from: float, ticks: int, tail_s: float = 0.030, **policy: object) -> list[DecisionEvent]:
    """The example host's llm tenant (SLO 15 ms, 5 s relaunch), 10% of its requests over the SLO
    from `bad_from` on with a window quantile of `tail_s`; its escalations and holds."""
    spec = example_spec(
        Policy(guards=False, mps=False, placement=False, outage_budget_window_s=WINDOW, **policy)  # type: ignore[arg-type]
    )
    state = ControllerState()
    out = []
    for i in range(ticks):
        t = TICK * i
        bad = 0.10 if t >= bad_from else 0.0
        p99 = tail_s if bad else 0.010
        o = example_observation(t, p99, 0.0)
        llm = replace(o.tenants["llm"], latency=LatencyWindow(COUNT, 0.005, p99, p99 * 1.3, over_slo=bad * COUNT))
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
        r"resize: its outage would hold (\d+) requests past the tail \(0\.015 s\) where a cure frees (\d+) of the"
        r" top 1% in the (\d+) s left of the window \(outage_tail_margin 1\.5\): the tail's quantile would rise",
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
    assert "(0.015 s)" in events[0].reason  # held while the recent windows were calm ones


def test_an_anchored_window_counts_from_the_anchor():
    # windows from 300 s on (a p99 judged per calendar span): 120 s is the end of the one before
    held = _events(120.0, 200, outage_window_anchor_s=300.0)[0]
    assert held.kind == "hold"
    m = re.search(r"in the (\d+) s left of the window", held.reason)
    assert m and 100 < int(m.group(1)) <= 180
    # and 3,800 s is early in one that began at 3,700 s
    taken = _events(3800.0, 1950, outage_window_anchor_s=3700.0)[0]
    assert taken.kind == "escalate" and taken.lever == "resize"
