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
SLO = 0.015  # the example's llm tenant


def _obs(t: float, count: int, bad_share: float) -> Observation:
    """The example host at t with no I/O aggressor (no guard to try), the llm tenant's window
    counted: `count` requests, `bad_share` of them over the SLO."""
    o = example_observation(t, 0.030 if bad_share > 0.01 else 0.010, 0.0)
    p99 = 0.030 if bad_share > 0.01 else 0.010
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


def _charged(events) -> float | None:  # type: ignore[no-untyped-def]
    """The seconds the outage budget charged a held move (None: no hold for the budget)."""
    for e in events:
        m = re.search(r"outage budget spent \([\d.]+ s of [\d.]+ s per [\d.]+ s; this needs ([\d.]+) s\)", e.reason)
        if e.kind == "hold" and m:
            return float(m.group(1))
    return None


def test_a_tenant_whose_requests_come_in_bursts_is_charged_for_the_burst_an_outage_may_meet():
    # 100 requests/s on average either way: steady, or 10/s and 190/s on alternate ticks. A 5 s
    # relaunch holds 500 requests at the mean; the bursty tenant's counts (index of dispersion
    # 2 s x 8100 / 100 = 162) put two standard deviations beyond Poisson's at 2 x sqrt(161 x 500)
    # = 567 more: 10.7 s of its usual rate. The budget (8 s per 1600 s) pays the first, not the other.
    policy = Policy(guards=False, mps=False, placement=False, cost_margin=None, outage_budget_window_s=1600.0)
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
    # priced at the mean only, the same bursts move like the steady tenant
    _, plain = _run(example_spec(replace(policy, outage_spread_sigmas=0.0)), bursty, calm_then_bad)
    assert [e.lever for e in plain if e.kind == "escalate"] == ["resize"]
