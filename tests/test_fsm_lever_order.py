"""A same-sized move off a path that is not all of the tail goes after the resize (fsm.ladder).

A move off a busy path promises at most what the tail was while the path was clear. When this
episode's requests served with the path clear were over the SLO's budget too, the move is expected
to cure part of the excess (`unknown_cause_efficacy` when they were as often over it as now), and
a resize, which serves faster whatever the cause, is tried first: a move that cures little spends
the outage budget the resize then lacks (a tenant on a slice too small for its load, an ETL job
starting on its path just before the evidence was enough: the move took the budget and the tenant
stayed 57% over its SLO for four hours).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fsm.decide import decide
from fsm.examples import EXAMPLE_LAYOUTS, example_observation, example_spec
from fsm.ladder import Tick
from fsm.mig import Slot
from fsm.observation import LatencyWindow
from fsm.spec import Policy
from fsm.state import ControllerState

ETL_BPS = 3e9


def _obs(t: float, etl_bps: float, over: float, count: int = 10, layouts=None):
    """example_observation with `count` requests a 2 s tick, `over` of them over the SLO (counted)."""
    o = example_observation(t, 0.030, etl_bps, layouts=layouts)
    llm = replace(o.tenants["llm"], latency=LatencyWindow(count, 0.012, 0.030, 0.039, over_slo=over))
    return replace(o, tenants={**o.tenants, "llm": llm})


def _escalations(clear_over: float, etl_from: float, layouts=None):
    """5 requests/s, 3 in 10 over the SLO once the ETL runs (from `etl_from`), `clear_over` in 10
    before; outages priced after 200 s of watching, so the first lever comes at about 208 s."""
    spec = example_spec(Policy(guards=False, outage_warmup_s=200.0))
    state, out, clear_n = ControllerState(), [], 0.0
    for i in range(150):
        t = 2.0 * i
        busy = t >= etl_from
        before = state
        d = decide(state, _obs(t, ETL_BPS if busy else 0.0, 3.0 if busy else clear_over, layouts=layouts), spec)
        state = d.state
        if not out and before.tenants:
            clear_n = before.tenant("llm").clear_n  # the episode's clear stretch the first lever saw
        out += [e for e in d.events if e.kind == "escalate"]
    return state, out, clear_n


def test_a_tail_as_high_with_the_path_clear_gets_the_resize_before_a_move_off_the_path():
    _state, escalations, clear_n = _escalations(clear_over=3.0, etl_from=206.0)
    first = escalations[0]
    assert first.lever == "resize", first.reason
    assert 200.0 <= first.t < 230.0
    # the path had been shared for fewer requests than an error budget's worth (1 / 0.01): the
    # tail's share now stands in for it, and it is no higher than the clear stretch's
    assert clear_n >= 100
    why = first.evidence["passed_over"]["place"]
    assert why == (
        "the tail was over its budget while the path was clear: a same-sized move is expected to cure"
        " 0.25 of its excess; a resize first"
    )
    assert first.evidence["diagnosis"]["cause"] == "io"


def test_a_move_taken_after_a_held_resize_does_not_name_itself_passed_over():
    """The resize comes first but is held (no reconfiguration left this hour): the move goes, and
    its event names the resize's hold, not itself, among the levers passed over."""
    spec = example_spec(Policy(guards=False, outage_warmup_s=200.0, max_reconfigs_per_hour=0))
    state, escalations = ControllerState(), []
    for i in range(150):
        t = 2.0 * i
        d = decide(state, _obs(t, ETL_BPS if t >= 206.0 else 0.0, 3.0), spec)
        state = d.state
        escalations += [e for e in d.events if e.kind == "escalate"]
    first = escalations[0]
    assert first.lever == "place", first.reason
    assert first.evidence["passed_over"] == {
        "guard": "no throttleable aggressor on the victim's path",
        "resize": "reconfiguration budget spent (0/hour)",
    }


def test_a_move_onto_a_larger_instance_keeps_its_place_before_the_resize():
    """The same tail, but the quiet GPU holds only instances larger than the victim's: the move
    there is a resize of its own (and, at the place level, leaves the resize for later)."""
    layouts = {**EXAMPLE_LAYOUTS, "gpu3": (Slot(0, "3g.20gb"), Slot(4, "3g.20gb"))}
    _state, escalations, _clear_n = _escalations(clear_over=3.0, etl_from=206.0, layouts=layouts)
    first = escalations[0]
    assert first.lever == "place", first.reason
    assert first.reason.startswith("move to gpu3/3g.20gb@")
    assert first.evidence["cost"]["efficacy"] == pytest.approx(0.25)


def test_a_guard_that_did_not_cut_the_tail_leaves_the_move_first():
    """A tail that came with the ETL job (no clear stretch) and caps that did not cut it: the move
    is priced below a cure (the guard's lesson) but still goes first. A guard's failure says less
    than a clear path's tail: a move off the path of an aggressor that roams from GPU to GPU cured
    where a resize first did not (bench.robustness seed 307, roaming-aggressor:0: 4.9% -> 8.6%)."""
    spec = example_spec(Policy(outage_warmup_s=0.0))
    state, levers = ControllerState(), []
    for i in range(60):
        d = decide(state, _obs(2.0 * i, ETL_BPS, 3.0), spec)
        state = d.state
        levers += [(e.lever, e.evidence.get("cost", {}).get("efficacy")) for e in d.events if e.kind == "escalate"]
    assert levers == [("guard", None), ("place", 0.25)], levers


def test_a_tail_that_came_with_the_aggressor_gets_the_move_first():
    _state, escalations, _clear_n = _escalations(clear_over=0.0, etl_from=0.0)
    assert escalations[0].lever == "place", escalations[0].reason
    assert "passed_over" not in escalations[0].evidence or "place" not in escalations[0].evidence["passed_over"]


@pytest.mark.parametrize(
    ("clear", "now", "cut"),
    [
        ((200.0, 60.0), 0.30, 0.25),  # 30% with the path clear, 30% now: the floor (unknown cause)
        ((200.0, 2.0), 0.30, 1.0),  # 1% with the path clear: the path is all of the excess
        ((200.0, 30.0), 0.30, (0.30 - 0.15) / (0.30 - 0.01)),  # half of it
        ((50.0, 15.0), 0.30, 1.0),  # too few clear requests to say (fewer than 1 / 0.01)
    ],
)
def test_a_short_shared_stretch_is_judged_by_the_tails_share_now(clear, now, cut):
    spec = example_spec(Policy())
    state, _, _ = _escalations(clear_over=0.0, etl_from=0.0)
    tick = Tick.start(state, _obs(300.0, ETL_BPS, 3.0), spec)
    ctl = tick.tenants["llm"]
    ev = replace(ctl.evidence, n_recent=1000.0, b_recent=1000.0 * now)
    tick.tenants["llm"] = replace(
        ctl, clear_n=clear[0], clear_bad=clear[1], episode_n=clear[0] + 20.0, episode_bad=clear[1] + 6.0, evidence=ev
    )
    diag_cut = max(spec.policy.unknown_cause_efficacy, tick._path_cut(spec.tenants["llm"]))
    assert diag_cut == pytest.approx(cut)
