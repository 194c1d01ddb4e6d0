"""A guard's relief move must leave the victim's tail inside its quantile even if it fails
(Policy.relief_worst_case, tick_base._relief_short): the move cures nothing of the tail, and a new
copy that never gets ready keeps a restart hand-over down for the launcher's readiness wait and a
relaunch back."""

from __future__ import annotations

from dataclasses import replace

from fsm.decide import decide
from fsm.evolve import evolve
from fsm.examples import UNPRICED_OUTAGES, example_observation, example_spec
from fsm.observation import LatencyWindow
from fsm.spec import Level, Policy
from fsm.state import ControllerState
from fsm.topology import Tier

# The ladder's relief test's host (tests/test_fsm_ladder.py): llm at 100 requests/s (68/s in the
# rate's average by the relief, at 0.35% over the SLO by its quantiles), SM activity 0.4, a 5 s
# relaunch, 120 s readiness wait; etl capped on the victim's switch at t=4. The window's room at
# the relief (t=64): (1% - 0.35%) x 68/s x 14,336 s = 6,320 requests.
BASE = {**UNPRICED_OUTAGES, "io_share_tier": Tier.SWITCH, "guard_cost_share": None, "relief_worst_case": True}


def _spec(tenant: dict[str, object] | None = None, **policy: object):
    spec = example_spec(Policy(**{**BASE, **policy}))  # type: ignore[arg-type]
    if tenant:
        llm = replace(spec.tenants["llm"], **tenant)  # type: ignore[arg-type]
        spec = replace(spec, tenants={**spec.tenants, "llm": llm})
    return spec


def _relief_events(
    spec,
    t0: float = 0.0,
    measured_s: float | None = None,
    overspend: float = 0.0,
    kind: str = "escalate",
    n: int = 34,
    counted: bool = False,
) -> list[str]:
    """A guard on at t0 + 4, a calm tail under it with the ETL at its cap for 2 x n - 6 s: the
    relief moves taken (their reasons; `kind` "hold": the holds). `measured_s`: the relaunch the
    actuators report; `overspend`: requests over the SLO beyond the budget so far in the window,
    as the guard goes on."""
    state = ControllerState()
    out: list[str] = []
    for i in range(n):
        etl = 3e9 if i < 3 else 1.5e9
        p99 = 0.020 if i < 3 else 0.010
        obs = example_observation(t0 + 2.0 * i, p99, etl)
        if counted:  # a source that counts the requests over the SLO: half of them, then none
            lat = LatencyWindow(200, over_slo=100.0 if i < 3 else 0.0)
            obs = replace(obs, tenants={**obs.tenants, "llm": replace(obs.tenants["llm"], latency=lat)})
        if measured_s is not None:
            llm = replace(obs.tenants["llm"], outage_s=measured_s)
            obs = replace(obs, tenants={**obs.tenants, "llm": llm})
        d = decide(state, obs, spec)
        state = d.state
        if i == 2:
            ctl = state.tenant("llm")
            assert ctl.level is Level.GUARDED
            if overspend:
                ctl = evolve(ctl, overspend=overspend, overspend_t=t0 + 4.0)
                state = replace(state, tenants={**state.tenants, "llm": ctl})
        out += [e.reason for e in d.events if e.kind == kind and (kind == "hold" or "relieve the guard" in e.reason)]
    return out


def test_a_relief_move_that_would_break_the_tail_if_it_failed_is_not_taken():
    # failing, it holds 68/s x 125 s / (1 - 0.4) = 14,100 requests past the SLO
    assert not _relief_events(_spec())
    # the same move without the worst case (the budgets a cure's move meets) is taken
    assert _relief_events(_spec(relief_worst_case=False))
    # the hold says why, with its figures, once for the guard (tried again every guard_relief_s)
    (why,) = _relief_events(_spec(), kind="hold", n=120)
    assert why.startswith("relief not worth its risk") and "125 s down" in why and "room for" in why


def test_what_shrinks_the_worst_case_or_widens_the_room_lets_it_through():
    # a warm hand-over: the old copy serves while the new one starts, a failure costs nothing more
    assert _relief_events(_spec({"handover": "warm"}))
    # a launcher that gives up on a copy after 30 s: 35 s down, 3,960 requests
    assert _relief_events(_spec({"readiness_timeout_s": 30.0}))
    # a p99 judged over a day: room for 38,000
    assert _relief_events(_spec(outage_budget_window_s=86400.0))


def test_the_room_is_what_is_left_of_the_window():
    # the same day-long window, with 1,000 s of it left: room for 440 requests
    assert not _relief_events(_spec(outage_budget_window_s=86400.0, outage_window_anchor_s=-85400.0 + 4.0))
    # the next window's start: all of it ahead
    assert _relief_events(_spec(outage_budget_window_s=86400.0, outage_window_anchor_s=0.0))


def test_a_measured_relaunch_replaces_the_configured_one():
    # a 30 s readiness wait: 35 s down at the configured 5 s relaunch (taken above); at the 60 s
    # relaunch the actuators measured, 90 s: 10,200 requests
    assert not _relief_events(_spec({"readiness_timeout_s": 30.0}), measured_s=60.0)
    assert _relief_events(_spec({"readiness_timeout_s": 30.0}), measured_s=5.0)


def test_an_overspent_window_has_less_room():
    # 35 s down: 3,960 requests, in room for 6,320; not once the window's tail has spent 3,000
    # requests beyond its budget (decayed over the window: 2,990 by the relief)
    assert _relief_events(_spec({"readiness_timeout_s": 30.0}), overspend=1000.0)
    assert not _relief_events(_spec({"readiness_timeout_s": 30.0}), overspend=3000.0)


def test_a_window_in_credit_has_more_room():
    # the default 125 s down, 14,100 requests: in room once the window so far has 9,000 requests of
    # its budget unspent (6,320 + 8,960)
    assert not _relief_events(_spec(), overspend=-7000.0)
    assert _relief_events(_spec(), overspend=-9000.0)
    # a p98 tenant's credit is counted against its 2%, not the 1% an outage's requests fill: none
    p99 = _spec()
    assert _relief_events(p99, overspend=-40000.0, counted=True)
    assert not _relief_events(_spec({"quantile": 0.98}), overspend=-40000.0, counted=True)
