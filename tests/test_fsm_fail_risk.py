"""A relaunch may fail: the risk that a move's new copy never gets ready is priced (fsm.levercost),
and each tenant's own relaunches teach it (the ladder counts them)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_fsm_levercost import _bought, _counted

from fsm.decide import decide
from fsm.examples import UNPRICED_OUTAGES, example_spec
from fsm.levercost import FAIL_PRIOR_WEIGHT, fail_risk, outage_cost, price, rent_of
from fsm.observation import ActuationStatus, Outcome
from fsm.outage import DEFAULT_READINESS_TIMEOUT_S, MoveKind
from fsm.spec import Policy


def test_the_risk_is_the_prior_until_the_tenant_relaunches_then_its_own_record():
    assert fail_risk(0.02, 0, 0) == pytest.approx(0.02)
    one = fail_risk(0.02, 1, 1)  # its first relaunch failed
    assert one == pytest.approx((0.02 * FAIL_PRIOR_WEIGHT + 1) / (FAIL_PRIOR_WEIGHT + 1)) and 0.1 < one < 0.12
    assert fail_risk(0.02, 10, 0) == pytest.approx(0.01)  # ten that served: half the prior
    assert fail_risk(0.0, 3, 0) == 0.0  # no prior, no failure: no risk


def test_a_lever_that_may_fail_costs_its_failed_outage_too_and_cures_less():
    rent = rent_of(rate_rps=20.0, rho=0.3, bad_share=0.05, budget_share=0.01, episodes=(), prior_s=300.0)
    sure = price(rent, "place", 10.0, "configured", 0.2, 1.0)
    risky = price(rent, "place", 10.0, "configured", 0.2, 1.0, fail=(0.1, 130.0))
    want = 0.9 * outage_cost(20.0, 10.0, 0.2, 0.3) + 0.1 * outage_cost(20.0, 130.0, 0.2, 0.3)
    assert risky.cost == pytest.approx(want) and risky.cost > 2 * sure.cost
    assert risky.benefit == pytest.approx(0.9 * sure.benefit)
    ev = risky.as_evidence()
    assert ev["fail_risk"] == 0.1 and ev["failed_outage_s"] == 130.0


def _failed(state, t: float, spec, outage_s: float | None):
    """One tick whose actuation report fails the tenant's pending move (`outage_s`: what it stopped)."""
    no = ActuationStatus(outcomes=(Outcome("tenant:llm", False, "the new copy never got ready", t, outage_s),))
    d = decide(state, replace(_counted(t, 200, 20.0, 0.030), actuation=no), spec)
    assert [e.kind for e in d.events if e.kind == "fail"] == ["fail"]
    return d.state


@pytest.mark.parametrize("prior", [0.0, 0.02])  # the default (its own failures only), and a prior
@pytest.mark.parametrize(("stopped", "fails"), [(None, 1), (0.0, 0)])
def test_a_copy_that_never_got_ready_raises_the_tenants_risk_and_the_next_price(prior, stopped, fails):
    """A move priced at the prior with the failed outage of a restart hand-over (the readiness
    wait and a relaunch back); its new copy never gets ready: the tenant's risk is now its own
    record with the prior, and the next lever is priced at it. A refusal that stopped nothing
    (outage 0, as nvidia-smi refuses a change) is no relaunch and teaches nothing."""
    from fsm.ladder import Tick

    spec = example_spec(Policy(**UNPRICED_OUTAGES, relaunch_fail_prior=prior, guards=False, mps=False))
    state, esc, _d = _bought(spec)
    cost = esc.evidence["cost"]
    tenant = spec.tenants["llm"]
    assert cost["fail_risk"] == prior
    assert cost["failed_outage_s"] == pytest.approx(DEFAULT_READINESS_TIMEOUT_S + tenant.relaunch_s)
    state = _failed(state, esc.t + 2.0, spec, stopped)
    ctl = state.tenant("llm")
    assert (ctl.relaunches, ctl.relaunch_fails) == (fails, fails)
    tick = Tick.start(state, _counted(esc.t + 4.0, 200, 20.0, 0.030), spec)
    again, _why = tick._pays(tenant, "place", 5.0, "configured", 1.0)
    assert again is not None and again.fail_risk == pytest.approx(fail_risk(prior, fails, fails))
    if fails:  # its own failure, with no prior: 1 in 11 (the prior's ten relaunches that served)
        assert prior or again.fail_risk == pytest.approx(1 / 11)
        rent = tick.rents["llm"]
        sure = price(rent, "place", 5.0, "configured", tenant.slo_s, 1.0, again.scale, again.outage_rate_rps)
        assert again.cost > 2 * sure.cost and again.benefit < sure.benefit  # a 125 s failure, 1 in 11


def test_a_move_that_completes_counts_a_relaunch_that_served():
    spec = example_spec(Policy(**UNPRICED_OUTAGES, guards=False, mps=False))
    state, esc, d = _bought(spec)
    target = d.desired.placements["llm"]
    state = decide(state, _counted(esc.t + 2.0, 200, 0.0, 0.010, at=target), spec).state
    ctl = state.tenant("llm")
    assert ctl.pending is None and (ctl.relaunches, ctl.relaunch_fails) == (1, 0)


def test_a_warm_hand_over_fails_without_an_outage_unless_its_instance_is_destroyed():
    from fsm.ladder import Tick

    spec = example_spec(Policy(**UNPRICED_OUTAGES, guards=False, mps=False))
    warm = replace(spec, tenants={**spec.tenants, "llm": replace(spec.tenants["llm"], handover="warm")})
    tick = Tick.start(_bought(spec)[0], _counted(0.0, 200, 20.0, 0.030), warm)
    t = warm.tenants["llm"]
    assert tick._failed_outage(t, 1.0, MoveKind.EXISTING) == 0.0  # the old copy serves on
    assert tick._failed_outage(t, 1.0, MoveKind.BESIDE) == 0.0
    assert tick._failed_outage(t, 30.0, MoveKind.IN_PLACE) == pytest.approx(DEFAULT_READINESS_TIMEOUT_S + t.relaunch_s)
    cold = spec.tenants["llm"]
    assert tick._failed_outage(cold, 5.0) == pytest.approx(DEFAULT_READINESS_TIMEOUT_S + cold.relaunch_s)
    assert tick._failed_outage(cold, 500.0) == 500.0  # at least the move's own outage


def test_a_resumed_state_with_more_failures_than_relaunches_is_refused():
    """Counted by the ladder, relaunch_fails never passes relaunches; a state file that says so
    would price a risk over 1 (a benefit below 0). Refused on resume, naming the field; the counts
    missing (a state written before them) resume as none."""
    import json

    from fsm.state import ControllerState, TenantCtl

    data = json.loads(ControllerState(tenants={"llm": TenantCtl(relaunches=3, relaunch_fails=1)}).to_json())
    assert ControllerState.from_data(data).tenant("llm").relaunch_fails == 1
    data["tenants"]["llm"]["relaunch_fails"] = 4
    with pytest.raises(ValueError, match=r"tenants\.llm\.relaunch_fails: 4 is more than its relaunches \(3\)"):
        ControllerState.from_data(data)
    del data["tenants"]["llm"]["relaunch_fails"], data["tenants"]["llm"]["relaunches"]
    assert ControllerState.from_data(data).tenant("llm").relaunches == 0


def test_a_failed_moves_backlog_is_not_judged_as_interference():
    """The tenant was down 125 s for a move whose new copy never got ready; serving again, its
    backlog puts every request over the SLO for minutes. That is our outage's, not interference's:
    its windows settle as after a restart of its own, and nothing escalates on them (before, the
    backlog's share bought the next lever as soon as the backoff ended)."""
    spec = example_spec(Policy(**UNPRICED_OUTAGES, guards=False, mps=False))
    state, esc, _d = _bought(spec)
    failed_at = esc.t + 2.0
    state = _failed(state, failed_at, spec, 125.0)
    ctl = state.tenant("llm")
    assert ctl.drained_from == failed_at + 125.0 and ctl.settle_until is not None
    assert ctl.settle_until >= failed_at + 125.0
    t = failed_at + 2.0
    for _ in range(100):  # 200 s of the backlog's windows, past the backoff (60 s)
        d = decide(state, _counted(t, 200, 200.0, 9.0), spec)
        state = d.state
        assert not [e for e in d.events if e.kind == "escalate"], t
        t += 2.0
