"""The outage budget is counted against the SLO's error budget, at most a p99's: an outage's held
requests wait its whole length, far past any SLO, so against a p95's 5% the budget would let
outages make up the tenant's p99 (docs/results.md, "Outages against the p99")."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fsm.decide import decide
from fsm.examples import example_observation, example_spec
from fsm.observation import LatencyWindow
from fsm.outage import MoveKind
from fsm.spec import HostSpec, Policy
from fsm.state import ControllerState
from fsm.tick_base import outage_tail


@pytest.mark.parametrize(("quantile", "tail"), [(0.9, 0.01), (0.95, 0.01), (0.99, 0.01), (0.999, 0.001)])
def test_the_outage_tail_is_the_slos_error_budget_at_most_a_p99s(quantile: float, tail: float) -> None:
    assert outage_tail(quantile) == pytest.approx(tail)


def _spec(share: float, quantile: float) -> HostSpec:
    """Only the resize (no guard, no move, not priced); the victim's SLO on `quantile`."""
    policy = Policy(guards=False, mps=False, placement=False, cost_margin=None, outage_budget_share=share)
    spec = example_spec(policy)
    llm = replace(spec.tenants["llm"], quantile=quantile)
    return replace(spec, tenants={**spec.tenants, "llm": llm})


def _levers(spec: HostSpec) -> list[tuple[str, str, str]]:
    """(kind, lever, reason) of the events over 200 ticks with 30% of the requests over the SLO."""
    state, log = ControllerState(), []
    for i in range(200):
        obs = example_observation(2.0 * i, 0.030, 0.0, count=200)
        llm = replace(obs.tenants["llm"], latency=LatencyWindow(200, 0.012, 0.030, 0.039, over_slo=60.0))
        d = decide(state, replace(obs, tenants={**obs.tenants, "llm": llm}), spec)
        state = d.state
        log.extend((e.kind, e.lever, e.reason) for e in d.events)
    return log


def test_a_p95_tenant_gets_no_more_outage_than_a_p99_tenant() -> None:
    outage = min(example_spec().tenants["llm"].outage_s(k) for k in MoveKind)
    window = Policy().outage_budget_window_s
    # A share whose p99 budget is short of one resize's outage, whose p95 budget (5x) is not.
    share = 0.8 * outage / (0.01 * window)
    assert share * 0.01 * window < outage <= share * 0.05 * window
    for quantile in (0.95, 0.99):
        log = _levers(_spec(share, quantile))
        assert not [x for x in log if x[0] == "escalate"], (quantile, log)
        assert any(x[0] == "hold" and "outage budget spent" in x[2] for x in log), (quantile, log)
    # With a budget a p99 can pay from, both resize: the test can tell the two apart.
    for quantile in (0.95, 0.99):
        log = _levers(_spec(2 * share, quantile))
        assert any(x[0] == "escalate" and x[1] == "resize" for x in log), (quantile, log)
