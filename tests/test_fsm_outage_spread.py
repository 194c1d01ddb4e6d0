"""What the outage budget charges a move for, beyond its seconds: no outage before the tenant's
requests have been watched for outage_warmup_s, and for a tenant whose requests come in bursts,
the burst the outage may meet (outage_spread_sigmas standard deviations of its per-tick counts)."""

from __future__ import annotations

import math
import re
from dataclasses import replace

from fsm.decide import decide
from fsm.examples import example_observation, example_spec
from fsm.observation import LatencyWindow, Observation
from fsm.spec import Policy
from fsm.state import ControllerState

TICK = 2.0


def _obs(t: float, count: int, bad_share: float) -> Observation:
    """The example host at t with no I/O aggressor (no guard to try), the llm tenant's window
    counted: `count` requests, `bad_share` of them over the SLO."""
    p99 = 0.030 if bad_share > 0.01 else 0.010  # over the example's 15 ms SLO, or under it
    o = example_observation(t, p99, 0.0)
    llm = replace(o.tenants["llm"], latency=LatencyWindow(count, 0.005, p99, p99 * 1.3, over_slo=bad_share * count))
    return replace(o, tenants={**o.tenants, "llm": llm})


def _run(spec, counts, bad_from_t):  # type: ignore[no-untyped-def]
    state = ControllerState()
    out = []
    for i, n in enumerate(counts):
        t = TICK * i
        d = decide(state, _obs(t, n, 0.10 if t >= bad_from_t else 0.0), spec)
        state = d.state
        out += d.events
    return state, out


def test_no_move_before_the_tenants_requests_have_been_watched_for_the_warmup():
    spec = example_spec(Policy(guards=False, mps=False, placement=False, cost_margin=None))
    assert spec.policy.outage_warmup_s == 60.0
    _, events = _run(spec, [200] * 40, bad_from_t=0.0)  # over the SLO from the first window
    holds = [e for e in events if e.kind == "hold"]
    assert holds and "watched for" in holds[0].reason and "outage_warmup_s" in holds[0].reason
    (esc,) = [e for e in events if e.kind == "escalate"]
    assert esc.lever == "resize" and esc.t >= 60.0  # the first window was at t=0
    # without the warm-up the same stream moves at the first violating verdict
    _, early = _run(example_spec(replace(spec.policy, outage_warmup_s=0.0)), [200] * 40, bad_from_t=0.0)
    assert next(e for e in early if e.kind == "escalate").t < 10.0


_HOLD = re.compile(
    r"outage budget spent \([\d.]+ s of [\d.]+ s per [\d.]+ s; this needs ([\d.]+) s( with a burst.s margin)?\)"
)


def _charged(events) -> float | None:  # type: ignore[no-untyped-def]
    """The seconds the outage budget charged a held move (None: no hold for the budget)."""
    for e in events:
        m = _HOLD.search(e.reason)
        if e.kind == "hold" and m:
            return float(m.group(1))
    return None


def test_a_tenant_whose_requests_come_in_bursts_is_charged_for_the_burst_an_outage_may_meet():
    # 100 requests/s on average either way: steady, or 10/s and 190/s on alternate ticks. A 5 s
    # relaunch holds 500 requests at the mean; the bursty tenant's counts (index of dispersion
    # 2 s x 8100 / 100 = 162) put two standard deviations beyond Poisson's at 2 x sqrt(161 x 500)
    # = 567 more: 10.7 s of its usual rate. The budget (10 s per 2000 s) holds the outage at the
    # rate it meets (5 s, or 9.5 s on a 190/s tick), not with the margin a burst needs.
    policy = Policy(guards=False, mps=False, placement=False, cost_margin=None, outage_budget_window_s=2000.0)
    spec = example_spec(policy)
    calm_then_bad = 120.0
    steady = [200] * 80
    bursty = [20 if i % 2 else 380 for i in range(80)]
    _, ev_steady = _run(spec, steady, calm_then_bad)
    assert [e.lever for e in ev_steady if e.kind == "escalate"] == ["resize"]
    assert _charged(ev_steady) is None
    _, ev_bursty = _run(spec, bursty, calm_then_bad)
    assert not [e for e in ev_bursty if e.kind == "escalate"]
    charged = _charged(ev_bursty)
    assert charged is not None and math.isclose(charged, 5.0 + 2 * math.sqrt(161 * 500) / 100, rel_tol=0.05)
    assert "with a burst's margin" in next(e.reason for e in ev_bursty if e.kind == "hold" and "budget" in e.reason)
    # priced at the mean only, the same bursts move like the steady tenant
    _, plain = _run(example_spec(replace(policy, outage_spread_sigmas=0.0)), bursty, calm_then_bad)
    assert [e.lever for e in plain if e.kind == "escalate"] == ["resize"]


def test_an_outage_taken_is_recorded_at_what_it_held_not_at_its_margin():
    # The same bursts with room in the budget (72 s per 4 h): the resize is taken; the budget
    # records the requests the outage holds at the rate it met (the measured cost scales that
    # later), not the burst it left room for, which would be counted twice once measured.
    spec = example_spec(Policy(guards=False, mps=False, placement=False, cost_margin=None))
    state, events = _run(spec, [20 if i % 2 else 380 for i in range(80)], 120.0)
    (esc,) = [e for e in events if e.kind == "escalate"]
    (taken_at, recorded), *_ = state.tenant("llm").outages
    assert taken_at == esc.t
    met = 380 / TICK if int(esc.t / TICK) % 2 == 0 else 100.0  # a burst tick is charged at its rate
    assert math.isclose(recorded, 5.0 * met / 100.0, rel_tol=0.05)
    assert recorded < 5.0 + 2 * math.sqrt(161 * 500) / 100 - 1.0  # the margin's 10.7 s


def test_a_p999_tenants_burst_margin_is_held_against_a_p99s_budget():
    # A p999 tenant's own outage budget is a tenth of a p99's (7.2 s per 4 h). The 5 s resize fits
    # it at the rate it meets (on a calm tick); its burst margin (10.7 s) does not, but the
    # requests a burst adds wait the whole outage, beyond the p99 whatever the SLO's quantile:
    # the margin must fit a p99's budget (72 s), and does.
    spec = example_spec(Policy(guards=False, mps=False, placement=False, cost_margin=None))
    spec = replace(spec, tenants={**spec.tenants, "llm": replace(spec.tenants["llm"], quantile=0.999)})
    _, events = _run(spec, [20 if i % 2 else 380 for i in range(80)], 120.0)
    (esc,) = [e for e in events if e.kind == "escalate"]
    assert esc.lever == "resize"
    held = [e.reason for e in events if e.kind == "hold" and "budget" in e.reason]
    assert held and all("7.2 s per 14400 s; this needs 9." in r for r in held)  # only burst ticks were too dear
