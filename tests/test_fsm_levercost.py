"""fsm.levercost and the ladder's use of it: a move or resize is taken only when it pays."""

from __future__ import annotations

import math

import pytest

from fsm.decide import decide
from fsm.examples import UNPRICED_OUTAGES, example_observation, example_spec
from fsm.levercost import estimate, expected_remaining, outage_cost
from fsm.spec import Policy
from fsm.state import ControllerState


def test_outage_cost_is_the_held_requests_over_the_slo():
    # 10 requests/s, a 20 s outage, SLO 0.2 s, an idle server: (20 - 0.2) x 10
    assert math.isclose(outage_cost(10.0, 20.0, 0.2, 0.0), 198.0)
    # a busy server drains its backlog slowly: twice as many at rho = 0.5
    assert math.isclose(outage_cost(10.0, 20.0, 0.2, 0.5), 396.0)
    # a warm hand-over's gap under the SLO costs nothing; utilisation is capped at 0.9
    assert outage_cost(10.0, 0.1, 0.2, 0.5) == 0.0
    assert math.isclose(outage_cost(1.0, 11.0, 1.0, 0.99), 100.0)


def test_expected_remaining_learns_from_episodes_with_the_prior_worth_one():
    assert expected_remaining((), 300.0) == 300.0
    assert expected_remaining((30.0, 30.0, 30.0), 300.0) == 97.5


def test_a_transient_burst_tenant_gets_no_restart():
    kw = dict(outage_s=18.0, outage_source="configured", rate_rps=50.0, rho=0.5, slo_s=0.2, budget_share=0.01)
    # short past episodes (bursts of 20 s): the move would cost more than it could save
    burst = estimate("place", bad_share=0.3, episodes=(20.0, 15.0, 25.0, 20.0), prior_s=300.0, efficacy=1.0, **kw)
    assert not burst.pays(2.0)
    # long episodes (an hour-long ETL job on the path): it pays
    long = estimate("place", bad_share=0.3, episodes=(3600.0, 2400.0), prior_s=300.0, efficacy=1.0, **kw)
    assert long.pays(2.0)
    ev = long.as_evidence()
    assert ev["cost_requests"] == round(long.cost, 1) and ev["benefit_requests"] == round(long.benefit, 1)


def _violate(spec, n_ticks, p99=0.020):
    state, events = ControllerState(), []
    for i in range(n_ticks):
        d = decide(state, example_observation(2.0 * i, p99, 0.0), spec)  # no I/O aggressor: no guard
        state = d.state
        events += d.events
    return state, events


def test_the_ladder_holds_a_move_that_does_not_pay_and_says_why():
    # p99 20 ms against 15 ms: about 5% over the SLO; a 5 s move at 100 requests/s does not pay
    # back within a 60 s episode prior
    spec = example_spec(Policy(**UNPRICED_OUTAGES, episode_prior_s=60.0, guards=False, mps=False))
    _, events = _violate(spec, 10)
    holds = [e for e in events if e.kind == "hold"]
    assert holds and "would cost more than it saves" in holds[0].reason
    assert not [e for e in events if e.kind == "escalate"]


def test_the_ladder_moves_when_it_pays_and_shows_both_figures():
    spec = example_spec(Policy(**UNPRICED_OUTAGES, episode_prior_s=3600.0, guards=False, mps=False))
    _, events = _violate(spec, 10, p99=0.060)
    (esc,) = [e for e in events if e.kind == "escalate"][:1]
    assert esc.lever in ("place", "resize")
    cost = esc.evidence["cost"]
    assert cost["benefit_requests"] >= 2.0 * cost["cost_requests"] > 0
    assert esc.evidence["window"]["evidence_nats"] >= esc.evidence["window"]["threshold_nats"]


def test_the_rent_paid_so_far_buys_the_lever_ski_rental():
    """Early in an episode only the expected rent counts (the prior's 300 s); once the requests
    already pushed over the SLO beyond the budget reach the outage's cost, the lever pays whatever
    the prior says (buy when the rent paid equals the price: 2-competitive)."""
    kw = dict(outage_s=18.0, outage_source="configured", rate_rps=1.0, rho=0.5, slo_s=0.2, budget_share=0.01)
    early = estimate("resize", bad_share=0.05, episodes=(), prior_s=300.0, efficacy=1.0, **kw)
    assert early.remaining_s == 300.0 and early.rent == 0.0
    assert early.benefit == pytest.approx(1.0 * 0.04 * 300.0)
    assert not early.pays(1.0)  # 12 requests kept under vs 35.6 pushed over
    # 1,000 requests of this episode, 50 over the SLO: 40 beyond the budget, more than the cost.
    late = estimate(
        "resize", bad_share=0.05, episodes=(), prior_s=300.0, efficacy=1.0, elapsed_s=1000.0,
        episode_requests=1000.0, episode_bad=50.0, **kw,
    )  # fmt: skip
    assert late.rent == pytest.approx(40.0) and late.pays(1.0) and not late.pays(2.0)
    # The episode's own share, once it holds 1/eps requests, replaces the last minute's.
    calm_minute = estimate(
        "resize", bad_share=0.0, episodes=(), prior_s=300.0, efficacy=1.0,
        episode_requests=1000.0, episode_bad=50.0, **kw,
    )  # fmt: skip
    assert calm_minute.bad_share == pytest.approx(0.05)
    # Learned episodes replace the prior: long ones make a lever pay at once.
    long_ones = estimate("resize", bad_share=0.05, episodes=(3000.0,) * 4, prior_s=300.0, efficacy=1.0, **kw)
    assert long_ones.remaining_s == pytest.approx((300.0 + 12000.0) / 5) and long_ones.pays(1.0)


def test_rent_of_episodes_that_come_and_go_counts_too():
    """Short episodes each pay little rent, but a lever that stays saves it in every one: the net
    overspend over the budget's window (calm stretches paying back) buys the lever as well."""
    kw = dict(outage_s=18.0, outage_source="configured", rate_rps=1.0, rho=0.5, slo_s=0.2, budget_share=0.01)
    short = estimate("resize", bad_share=0.05, episodes=(60.0,) * 8, prior_s=300.0, efficacy=1.0, **kw)
    assert not short.pays(1.0)
    recurring = estimate(
        "resize", bad_share=0.05, episodes=(60.0,) * 8, prior_s=300.0, efficacy=1.0, window_rent=40.0, **kw
    )
    assert recurring.rent == 40.0 and recurring.pays(1.0)
    # a window within its budget overall (negative overspend) adds nothing
    within = estimate(
        "resize", bad_share=0.05, episodes=(60.0,) * 8, prior_s=300.0, efficacy=1.0, window_rent=-50.0, **kw
    )
    assert within.rent == 0.0 and within.benefit == short.benefit


def test_a_move_spends_the_rent_that_bought_it():
    """After the ladder buys a move, the overspend and the episode's rent start again from zero: the
    same rent does not buy a second lever."""
    from dataclasses import replace

    from fsm.observation import LatencyWindow

    spec = example_spec(Policy(**UNPRICED_OUTAGES, guards=False, mps=False))
    state, events, before = ControllerState(), [], None
    for i in range(200):  # 10% of 200 requests a tick over the SLO, no I/O aggressor
        obs = example_observation(2.0 * i, 0.030, 0.0)
        llm = replace(obs.tenants["llm"], latency=LatencyWindow(200, over_slo=20.0))
        before = state
        d = decide(state, replace(obs, tenants={**obs.tenants, "llm": llm}), spec)
        state = d.state
        if any(e.kind == "escalate" for e in d.events):
            events = d.events
            break
    (esc,) = [e for e in events if e.kind == "escalate"]
    assert esc.evidence["cost"]["rent_requests"] > 0  # rent bought it
    assert before.tenant("llm").overspend > 0  # paid before the trigger tick
    ctl = state.tenant("llm")
    assert ctl.overspend <= 0.0 and ctl.episode_n == 0.0 and ctl.episode_bad == 0.0
    assert ctl.outages and ctl.outages[-1][0] == esc.t


def test_a_guard_that_does_not_cut_the_tail_is_lifted():
    spec = example_spec(Policy(**UNPRICED_OUTAGES, cost_margin=None, placement=False, mig=False))
    state, evs = ControllerState(), []
    for i in range(120):  # the aggressor keeps running and the tail stays where it was
        d = decide(state, example_observation(2.0 * i, 0.020, 3e9), spec)
        state, evs = d.state, evs + list(d.events)
    kinds = [(e.kind, e.lever) for e in evs if e.kind in ("escalate", "release")]
    assert kinds[:2] == [("escalate", "guard"), ("release", "guard")]
    lift = next(e for e in evs if e.kind == "release")
    assert "did not cut the tail" in lift.reason and lift.t - evs[0].t >= 2 * spec.policy.rate_tau_s
    assert not [e for e in evs if e.kind == "escalate" and e.t > lift.t]  # not retried in this episode
    assert state.tenant("llm").level.value == "steady" and not d.desired.throttles
    assert state.tenant("llm").io_doubt_until == lift.t + spec.policy.guard_lesson_s  # the lesson, kept


def test_a_guard_holds_a_capped_tenant_for_at_most_its_share_of_the_time_it_runs():
    """guard_cost_share 0.05: an ETL job that ran for an hour may be held at its cap for about
    three minutes; then its caps are lifted and it is not capped again while the budget is spent."""
    spec = example_spec(Policy(**UNPRICED_OUTAGES, cost_margin=None, placement=False, mig=False, guard_relief_s=None))
    state = ControllerState()
    for i in range(1800):  # an hour of ETL traffic, the tail fine
        state = decide(state, example_observation(2.0 * i, 0.005, 3e9), spec).state
    capped, evs, on = [], [], False
    for i in range(1800, 2400):  # then the tail violates while it runs on, unless its cap holds it
        p99, etl = (0.008, 1.5e9) if on else (0.020, 3e9)  # the cap (half its rate) binds and works
        d = decide(state, example_observation(2.0 * i, p99, etl), spec)
        state, evs = d.state, evs + list(d.events)
        on = bool(d.desired.throttles)
        capped.append(on)
    assert any(capped)
    held_s = 2.0 * sum(capped)
    # the budget: 5% of the (decayed) ~4,000 s it ran, about 200 s of the 1,200 s stretch
    assert held_s <= 0.05 * 4800, (held_s, [e.reason for e in evs])
    ran = state.guard_cost["etl"]
    assert ran[0] <= 0.05 * ran[1] + 2.0 * 2  # held <= share x ran, give or take the last ticks


def test_the_lesson_of_a_useless_guard_outlives_its_episode():
    """A guard lifted because it did not cut the tail is remembered for guard_lesson_s, across
    episodes: a same-sized move off the I/O path is then expected to cure only
    unknown_cause_efficacy of the excess, as within the guard's own episode."""
    from fsm.state import TenantCtl

    spec = example_spec(Policy(**UNPRICED_OUTAGES, guards=False, mps=False, mig=False, cost_margin=1e-9))
    for doubt, want in ((None, 1.0), (5.0, 1.0), (1e9, spec.policy.unknown_cause_efficacy)):
        state, esc = ControllerState(tenants={"llm": TenantCtl(io_doubt_until=doubt)}), None
        for i in range(200):  # the ETL runs on the victim's switch and the tail violates
            d = decide(state, example_observation(10.0 + 2.0 * i, 0.030, 3e9), spec)
            state = d.state
            esc = next((e for e in d.events if e.kind == "escalate"), None)
            if esc is not None:
                break
        assert esc is not None and esc.lever == "place", doubt
        assert esc.evidence["diagnosis"]["cause"] == "io"
        assert esc.evidence["cost"]["efficacy"] == want, doubt  # an expired lesson (5.0) is forgotten


def _counted(t: float, count: int, over: float, p99: float, at=None):
    from dataclasses import replace

    from fsm.observation import LatencyWindow

    obs = example_observation(t, p99, 0.0, llm_at=at, count=count)
    llm = replace(obs.tenants["llm"], latency=LatencyWindow(count, 0.4 * p99, p99, 1.3 * p99, over_slo=over))
    return replace(obs, tenants={**obs.tenants, "llm": llm})


def _bought(spec):
    """10% of 200 requests a 2 s tick over the SLO until a move is bought: (state, its escalation)."""
    state = ControllerState()
    for i in range(300):
        d = decide(state, _counted(2.0 * i, 200, 20.0, 0.030), spec)
        state = d.state
        esc = [e for e in d.events if e.kind == "escalate"]
        if esc:
            return state, esc[0], d
    raise AssertionError("no move bought")


def test_an_outage_is_measured_against_its_prediction_and_prices_the_next_lever():
    """The model's cost of an outage (held requests, drained at the spare rate) is checked against
    what the tenant's windows show from the move until its backlog is served: 3x the prediction
    here. Later levers are priced at that scale, and the outage budget is charged 3x its seconds."""
    from fsm.levercost import measured_scale

    spec = example_spec(Policy(**UNPRICED_OUTAGES, guards=False, mps=False, episode_prior_s=3600.0))
    state, esc, d = _bought(spec)
    target = d.desired.placements["llm"]
    watch = state.tenant("llm").outage_watch
    assert watch is not None and watch[0] == esc.t and state.tenant("llm").cost_scale is None
    predicted, before_share = watch[1], watch[2]
    t = esc.t + 2.0
    held = round(3 * predicted)
    ticks = [(0, 0.0, 0.030), (held, float(held), 9.0), (200, 0.0, 0.010)]  # outage, backlog, served
    for count, over, p99 in ticks:
        state = decide(state, _counted(t, count, over, p99, at=target), spec).state
        t += 2.0
    ctl = state.tenant("llm")
    m = measured_scale(held + 200, held, before_share, predicted)
    assert ctl.outage_watch is None and ctl.cost_scale == pytest.approx(m) and 2.5 < m < 3.0
    outage = esc.evidence["cost"]["outage_s"]
    assert ctl.outages[-1] == (esc.t, pytest.approx(outage * m))
    # the next lever is priced at the measured scale
    from fsm.ladder import Tick

    tick = Tick.start(state, _counted(t, 200, 20.0, 0.030, at=target), spec)
    tname = spec.tenants["llm"]
    cost, _why = tick._pays(tname, "resize", 5.0, "configured", 1.0)
    assert cost is not None and cost.scale == pytest.approx(m)


def test_an_outage_taken_in_a_burst_is_priced_and_charged_at_the_burst():
    """The recent rate (a minute) lags a burst that began a tick ago; an outage taken now holds the
    burst's arrivals. This tick's window sets the rate when it is past Poisson noise, and the
    outage budget is charged its seconds times the burst over the usual rate."""
    from fsm.ladder import Tick

    spec = example_spec(Policy(**UNPRICED_OUTAGES, guards=False, mps=False))
    state = ControllerState()
    for i in range(200):  # 100 requests a second, within the SLO
        state = decide(state, _counted(2.0 * i, 200, 0.0, 0.010), spec).state
    tname = spec.tenants["llm"]
    calm = Tick.start(state, _counted(400.0, 200, 0.0, 0.010), spec)
    calm.step(tname)
    assert calm._charged_s(tname, 5.0)[0] == pytest.approx(5.0)
    burst = Tick.start(state, _counted(400.0, 800, 0.0, 0.010), spec)  # 4x
    burst.step(tname)
    recent = burst.tenants["llm"].evidence.rate(burst.evidence_params)
    assert recent < 150.0 and burst._rate_now(tname, recent) == pytest.approx(400.0)
    assert burst._charged_s(tname, 5.0)[0] == pytest.approx(5.0 * 400.0 / 100.0, rel=0.05)
    noisy = Tick.start(state, _counted(400.0, 215, 0.0, 0.010), spec)  # within noise
    noisy.step(tname)
    assert noisy._rate_now(tname, 100.0) == 100.0


def test_an_outage_charged_later_than_the_last_counted_window_decays_both_window_sums():
    """The overspend and the requests served share their timestamp: charging an outage moves it to
    now, so both are decayed to now, or `served` would keep weight it has lost."""
    from fsm.ladder import Tick
    from fsm.state import TenantCtl

    spec = example_spec(Policy(**UNPRICED_OUTAGES))
    obs = example_observation(1000.0, 0.020, 3e9)
    state = ControllerState(tenants={"llm": TenantCtl(overspend=10.0, overspend_t=0.0, served=(5000.0, 1000.0))})
    tick = Tick.start(state, obs, spec)
    tick._spend(spec.tenants["llm"], 20.0)
    ctl = tick.tenants["llm"]
    keep = math.exp(-1000.0 / spec.policy.outage_budget_window_s)
    assert ctl.overspend_t == 1000.0
    assert ctl.served == pytest.approx((5000.0 * keep, 1000.0 * keep))


def _shared_after_clear(clear_over: float, shared_over: float):
    """An episode that starts with the victim's path clear (the ETL idle: placement off, so nothing
    is bought yet), then the ETL starts on the victim's switch: the first move's escalation."""
    from dataclasses import replace

    from fsm.observation import LatencyWindow

    def tick(t: float, over: float, etl_bps: float):
        obs = example_observation(t, 0.030, etl_bps, count=200)
        llm = replace(obs.tenants["llm"], latency=LatencyWindow(200, 0.012, 0.030, 0.039, over_slo=over))
        return replace(obs, tenants={**obs.tenants, "llm": llm})

    policy = Policy(**UNPRICED_OUTAGES, guards=False, mps=False, mig=False, cost_margin=1e-9)
    state, t = ControllerState(), 10.0
    for _ in range(60):  # two minutes, 24,000 requests on a clear path
        state = decide(state, tick(t, clear_over, 0.0), example_spec(replace(policy, placement=False))).state
        t += 2.0
    for _ in range(100):
        d = decide(state, tick(t, shared_over, 3e9), example_spec(policy))
        state, t = d.state, t + 2.0
        esc = next((e for e in d.events if e.kind == "escalate"), None)
        if esc is not None:
            return esc
    raise AssertionError("no escalation")


def test_a_tail_as_high_while_the_path_was_clear_discounts_a_move_off_it():
    """The episode's requests are split by whether the others' bytes on the victim's path made
    an I/O cause when they were served: a tail no lower while the path was clear says the path
    does not hold it, and a same-sized move off it is priced at unknown_cause_efficacy (as after
    a guard that did not cut the tail); one lower while clear prices the move at the share of
    the excess that went with the path."""
    esc = _shared_after_clear(20.0, 20.0)  # 10% over the SLO either way
    split = esc.evidence["path_clear"]
    assert split["requests"] >= 50 * 200 and split["over_slo"] == pytest.approx(0.1 * split["requests"])
    assert split["shared_requests"] >= 200
    assert esc.lever == "place" and esc.evidence["diagnosis"]["cause"] == "io"
    assert esc.evidence["cost"]["efficacy"] == Policy(**UNPRICED_OUTAGES).unknown_cause_efficacy
    esc = _shared_after_clear(4.0, 20.0)  # 2% while clear, 10% while shared: the path holds most of it
    assert esc.lever == "place"
    # the share of the excess over the 1% budget that went with the path: (10 - 2) / (10 - 1)
    assert esc.evidence["cost"]["efficacy"] == pytest.approx((0.10 - 0.02) / (0.10 - 0.01), abs=0.01)


def test_without_sm_activity_an_outage_is_priced_at_littles_law_not_half_busy():
    """A host without DCGM has no SM activity: the utilisation an outage's backlog drains against
    comes from Little's law on the tenant's last window (recent rate x median latency = L, rho =
    L / (1 + L)) instead of an assumed 0.5, which doubled every outage's price (docs/results.md,
    "Signals as a host gives them"). With SM activity, SM activity."""
    from dataclasses import replace

    from fsm.observation import MigSample

    spec = example_spec(Policy(**UNPRICED_OUTAGES, episode_prior_s=3600.0, guards=False, mps=False))

    def blind(o):
        gpus = {g: replace(s, instances=dict.fromkeys(s.instances, MigSample())) for g, s in o.gpus.items()}
        return replace(o, gpus=gpus)

    def first_cost(strip: bool) -> tuple[dict, object]:
        state = ControllerState()
        for i in range(10):
            o = example_observation(2.0 * i, 0.060, 0.0)
            d = decide(state, blind(o) if strip else o, spec)
            state = d.state
            esc = [e for e in d.events if e.kind == "escalate"]
            if esc:
                return esc[0].evidence["cost"], o
        raise AssertionError("no escalation")

    seen, _ = first_cost(False)
    assert seen["utilisation"] == 0.4  # example_observation's SM activity
    cost, o = first_cost(True)
    w = o.tenants["llm"].latency
    n = cost["rate_rps"] * w.p50
    assert cost["utilisation"] == pytest.approx(n / (1 + n), abs=1e-3) and cost["utilisation"] != 0.5
