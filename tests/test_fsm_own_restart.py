"""A sensitive tenant that restarts outside tailguard (a deploy, an out-of-memory kill, a crash:
TenantSample.restarted_s, its latency source's counters started again from zero). Its backlog is no
interference and no lever cures it: its windows are settled, not judged, an event says so, and its
outage is charged to the outage budget, whose room for the p99 it spent as ours would. A restart
seen while a move or resize of ours runs, or that began before it ended, is ours (a move restarts
the tenant too); one in the cooldown of a guard is the tenant's own (a guard restarts nobody)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from fsm.decide import decide
from fsm.desired import DecisionEvent, DesiredState
from fsm.examples import ToyPlant, example_observation, example_spec
from fsm.observation import LatencyWindow, Observation
from fsm.spec import HostSpec, Policy
from fsm.state import ControllerState

TICK = 2.0
N = 500
DOWN_FROM, DOWN_TICKS = 300, 15  # the restart: its scrapes fail for 30 s
BACK = DOWN_FROM + DOWN_TICKS  # the first scrape that answers: counters from zero
DOWN_S = (DOWN_TICKS + 1) * TICK  # the seconds since the last scrape that answered
# tick -> (count, p50 s, share over the SLO), None for a failed scrape
Window = Callable[[int], tuple[int, float, float] | None]


def _obs(t: float, w: tuple[int, float, float] | None, restarted_s: float | None) -> Observation:
    """The example host at t with no I/O aggressor; the llm tenant's window (SLO 15 ms)."""
    o = example_observation(t, 0.010, 0.0)
    if w is None:
        llm = replace(o.tenants["llm"], latency=None, throughput=None)
    else:
        count, p50, bad = w
        top = max(p50, 0.030 if bad else 0.010)
        llm = replace(
            o.tenants["llm"],
            latency=LatencyWindow(count, p50, top, top * 1.3, over_slo=bad * count),
            restarted_s=restarted_s,
        )
    return replace(o, tenants={**o.tenants, "llm": llm})


def _spec() -> HostSpec:
    """Resizes only, unpriced (whether a lever pays is not what these tests are about); the llm
    tenant relaunches in 30 s."""
    spec = example_spec(Policy(guards=False, mps=False, placement=False, cost_margin=None))
    llm = replace(spec.tenants["llm"], relaunch_s=30.0)
    return replace(spec, tenants={**spec.tenants, "llm": llm})


def _run(window: Window, restarts: dict[int, float]) -> tuple[list[list[DecisionEvent]], ControllerState]:
    state = ControllerState()
    events: list[list[DecisionEvent]] = []
    spec = _spec()
    for i in range(N):
        d = decide(state, _obs(TICK * i, window(i), restarts.get(i)), spec)
        state = d.state
        events.append(list(d.events))
    return events, state


def _restart_backlog(i: int) -> tuple[int, float, float] | None:
    """Calm; down for DOWN_TICKS ticks (scrapes fail); then the held requests, all late, and a
    backlog that drains over 20 s; calm again."""
    if DOWN_FROM <= i < BACK:
        return None
    if i == BACK:
        return 200 * (DOWN_TICKS + 1), 12.0, 0.95
    if BACK < i < BACK + 10:
        return 200, 0.050, 0.5
    return 200, 0.005, 0.0


def _kinds(events: list[list[DecisionEvent]]) -> list[tuple[int, str]]:
    return [(i, e.kind) for i, evs in enumerate(events) for e in evs if e.kind != "hold"]


def test_a_restarts_backlog_is_not_judged_and_its_outage_is_charged() -> None:
    events, state = _run(_restart_backlog, {BACK: DOWN_S})
    assert _kinds(events) == [(BACK, "restarted")]
    (e,) = events[BACK]
    assert e.tenant == "llm" and e.evidence["down_s"] == DOWN_S and e.evidence["settle_s"] >= DOWN_S
    assert "restarted outside tailguard" in e.reason
    assert (BACK * TICK - DOWN_S, DOWN_S) in state.tenants["llm"].outages


def test_without_the_restart_in_the_sample_the_backlog_is_taken_for_a_tail() -> None:
    """The same windows, the restart not reported (a source that cannot tell): the backlog's
    windows are judged, and a resize is bought for what no lever cures."""
    events, _ = _run(_restart_backlog, {})
    assert ("escalate" in [k for _, k in _kinds(events)]) and "restarted" not in [k for _, k in _kinds(events)]


def _tail_from(start: int) -> Window:
    """Calm, then a tail that stays from `start` on (the tenant's slice is too small for it)."""

    def window(i: int) -> tuple[int, float, float] | None:
        return (200, 0.008, 0.2) if i >= start else (200, 0.005, 0.0)

    return window


def test_a_restart_during_an_operation_of_ours_is_ours() -> None:
    events, _ = _run(_tail_from(100), {})
    took = next(i for i, k in _kinds(events) if k == "escalate")
    for at in (took + 1, took + 5):  # the operation under way (nothing completes it here)
        again, _ = _run(_tail_from(100), {at: 20.0})
        assert "restarted" not in [k for _, k in _kinds(again)]
        assert _kinds(again) == _kinds(events)


def test_a_restart_spends_the_outage_budget_as_an_outage_of_ours() -> None:
    """A p99 tenant's budget is 72 s per 4 h: after an 80 s restart of its own a tail that would
    have bought a resize is held for the budget; after a 10 s one it is bought."""

    def window(i: int) -> tuple[int, float, float] | None:
        if DOWN_FROM <= i < BACK:
            return None
        return _tail_from(BACK + 60)(i)

    plain, _ = _run(window, {})
    assert "escalate" in [k for _, k in _kinds(plain)]
    short, _ = _run(window, {BACK: 10.0})
    assert [k for _, k in _kinds(short)][:2] == ["restarted", "escalate"]
    long, _ = _run(window, {BACK: 80.0})
    assert [k for _, k in _kinds(long)] == ["restarted"]
    holds = [e.reason for evs in long for e in evs if e.kind == "hold"]
    assert holds and all("outage budget spent" in r for r in holds)


def _bucketed(
    t: float, count: int, certain: float, possible: float, p50: float, restarted_s: float | None
) -> Observation:
    """The llm window as a histogram gives it around its 15 ms SLO, inside the 10-20 ms bucket:
    `certain` requests above 20 ms, `possible` above 10 ms."""
    o = example_observation(t, 0.010, 0.0)
    w = LatencyWindow(
        count,
        p50,
        0.018,
        0.025,
        over_slo=(certain + possible) / 2,
        over_slo_range=(certain, possible),
        over_slo_bucket=(0.010, 0.020),
    )
    llm = replace(o.tenants["llm"], latency=w, restarted_s=restarted_s)
    return replace(o, tenants={**o.tenants, "llm": llm})


def test_a_restarts_backlog_leaves_the_fitted_tail_as_it_was() -> None:
    """The backlog's requests, every one far past both bounds of the SLO's bucket, would make the
    bucket's tail look flat (fsm.histogram.tail_fraction, fitted over fit_tau_s): every request
    possibly over the SLO then reads as over it, and a healthy tail as violating for minutes. They
    are no sample of the tail: the evidence after the restart is the one before it."""
    spec = _spec()
    state = ControllerState()
    kinds: list[str] = []
    before = None
    for i in range(N):
        t = TICK * i
        if DOWN_FROM <= i < BACK:
            o = _obs(t, None, None)
        elif i == BACK:
            o = _bucketed(t, 200 * (DOWN_TICKS + 1), 3000.0, 3200.0, 12.0, DOWN_S)
        else:
            o = _bucketed(t, 200, 0.5, 6.0, 0.005, None)
        if i == BACK:
            before = state.tenants["llm"].evidence
        d = decide(state, o, spec)
        state = d.state
        kinds += [e.kind for e in d.events if e.kind != "hold"]
        if i == BACK + 1:
            assert before is not None
            ev = state.tenants["llm"].evidence
            assert ev.fit_hi / ev.fit_lo == pytest.approx(before.fit_hi / before.fit_lo, rel=0.05)
    assert kinds == ["restarted"]


def _toy(report: tuple[int, float] | None, ticks: int, lag: int = 0) -> tuple[list[str], ControllerState]:
    """The toy host (fsm.examples.ToyPlant with caps that cut the ETL's bytes but not the tail: an
    ETL burst, a guard lifted as useless, a resize) under decide(), with a restart of `report[1]` s
    reported on tick `report[0]`, each desired state applied `lag` ticks after it was decided (a
    slow relaunch): the non-hold events as "tick:kind lever", and the last state."""
    plant, state, kinds = ToyPlant(caps_cut=False), ControllerState(), []
    spec = example_spec(Policy(cooldown_s=30.0, dwell_s=30.0, in_flight_timeout_s=600.0))
    applied: list[DesiredState] = []
    for i in range(ticks):
        o = plant.observe()
        if report is not None and i == report[0]:
            o = replace(o, tenants={**o.tenants, "llm": replace(o.tenants["llm"], restarted_s=report[1])})
        d = decide(state, o, spec)
        state = d.state
        kinds += [f"{i}:{e.kind} {e.lever}".strip() for e in d.events if e.kind != "hold"]
        applied.append(d.desired)
        if len(applied) > lag:
            plant.apply(applied[-1 - lag])
    return kinds, state


def test_the_reset_a_move_of_ours_makes_is_ours() -> None:
    """A move restarts the tenant too, and the scrape that sees its counters from zero comes with
    the completion or after it (live, the actuators report it once the copy answers its readiness
    probe): within the cooldown a completion starts, it is ours, nothing is charged again. On the
    toy host (fsm.examples.ToyPlant: an ETL burst, a guard that does not cut the tail, a resize),
    the reset reported on the completion's tick and on some of the next ones."""
    plain, state = _toy(None, 150)
    done = next(int(k.split(":")[0]) for k in plain if k.endswith("complete resize"))
    for at in (done, done + 1, done + 5, done + 10):
        kinds, st = _toy((at, 6.0), 150)
        assert kinds == plain, at
        assert st.tenants["llm"].outages == state.tenants["llm"].outages


def test_a_late_report_of_a_move_of_ours_is_ours_too() -> None:
    """A tenant whose latency comes from a file says it restarted at its first request after it
    serves again (controller/signals/procs.py), which at a low rate may be past the cooldown: a
    restart whose span began during an outage of ours is still ours (nothing charged, no event)."""
    plain, state = _toy(None, 200)
    took = next(int(k.split(":")[0]) for k in plain if k.endswith("escalate resize"))
    period = ToyPlant().period_s
    late = took + 60  # far past the completion's cooldown
    kinds, st = _toy((late, (late - took) * period), 200)
    assert kinds == plain
    assert st.tenants["llm"].outages == state.tenants["llm"].outages
    # a restart that went down after our outage and its slack is the tenant's own
    own, _ = _toy((late, 4 * period), 200)
    assert f"{late}:restarted" in own


def test_a_deploy_in_a_guards_cooldown_is_the_tenants_own() -> None:
    """A guard caps the aggressors and restarts nobody: a restart reported in its cooldown went
    down after it (a deploy) and is the tenant's, its backlog settled and its outage charged."""
    plain, _ = _toy(None, 60)
    guard = next(int(k.split(":")[0]) for k in plain if k.endswith("escalate guard"))
    at = guard + 3  # 6 s after it, in its 30 s cooldown
    kinds, st = _toy((at, 4.0), 60)
    assert f"{at}:restarted" in kinds
    assert st.tenants["llm"].outages  # charged to the budget


def test_a_restart_reported_after_a_slow_moves_completion_is_ours() -> None:
    """A relaunch that took far longer than charged (here 100 s: the desired state applied 50 ticks
    late) completes after the decision's slack ran out; the restart that began before it completed
    is ours however late its report (a file-fed tenant's first request after it serves again)."""
    lag = 50
    plain, state = _toy(None, 300, lag)
    done = next(int(k.split(":")[0]) for k in plain if k.endswith("complete resize"))
    took = next(int(k.split(":")[0]) for k in plain if k.endswith("escalate resize"))
    assert done - took >= lag
    period = ToyPlant().period_s
    late = done + 40  # past the completion's settle and cooldown: only `moved` says it was ours
    kinds, st = _toy((late, (late - done + 2) * period), 300, lag)
    assert kinds == plain
    assert st.tenants["llm"].outages == state.tenants["llm"].outages
    # one that went down after the completion and its cooldown is the tenant's own
    own, _ = _toy((late, 10 * period), 300, lag)
    assert f"{late}:restarted" in own


def test_a_restart_longer_than_the_configured_relaunch_prices_the_next_move() -> None:
    """Its relaunch is configured at 30 s. After a 20 s restart of its own the resize is priced at
    the configured 30 s; after a 35 s one, at 35 s (a restart bounds the relaunch from above, so a
    longer one says the configured figure is short), and the state keeps the shortest restart."""

    def window(i: int) -> tuple[int, float, float] | None:
        if DOWN_FROM <= i < BACK:
            return None
        return _tail_from(BACK + 60)(i)

    for down, priced in ((20.0, 30.0), (35.0, 35.0)):
        events, state = _run(window, {BACK: down})
        (esc, *_) = [e for evs in events for e in evs if e.kind == "escalate"]
        assert esc.lever == "resize" and esc.evidence["outage_s"] == priced
        assert state.tenants["llm"].own_restart_s == down


def test_the_priced_relaunch_is_the_configured_one_or_a_longer_restart_up_to_the_readiness_wait() -> None:
    from fsm.outage import priced_relaunch

    t = replace(_spec().tenants["llm"], relaunch_s=5.0, readiness_timeout_s=120.0)
    assert priced_relaunch(t, None) == (5.0, "configured")
    assert priced_relaunch(t, 4.0) == (5.0, "configured")
    assert priced_relaunch(t, 62.0) == (62.0, "own restarts")  # a vLLM server left at the default
    assert priced_relaunch(t, 900.0) == (120.0, "own restarts")  # a deploy's image pull: the wait caps it
    warm = replace(t, handover="warm")
    assert priced_relaunch(warm, 62.0) == (5.0, "configured")  # its moves' outage is a switch-over gap
