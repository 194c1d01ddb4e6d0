"""Property tests: invariants of decide() over random observation streams and random actuation
outcomes (moves that finish, hang or fail)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsm.decide import decide
from fsm.desired import DecisionEvent
from fsm.examples import EXAMPLE_LAYOUTS, example_observation, example_spec
from fsm.mig import is_valid, model_by_name
from fsm.observation import ActuationStatus, InstanceRef, MigSample, Outcome
from fsm.spec import Policy, Role, TenantSpec
from fsm.state import ControllerState
from fsm.tick_base import outage_tail

A100 = model_by_name("A100-SXM4-40GB")
ACTIONS = ("escalate", "release")

tick_st = st.tuples(
    st.sampled_from([0.005, 0.010, 0.013, 0.016, 0.025, float("nan")]),  # llm p99
    st.sampled_from([0.005, 0.016, 0.030]),  # llm2 p99
    st.sampled_from([0.0, 2e8, 3e9, -1.0]),  # etl bytes/s
    st.sampled_from([0.2, 0.95]),  # victim SM active
    st.sampled_from(["finish", "finish", "fly", "fail"]),  # what happens to an operation
    st.sampled_from([2.0, 2.0, 5.0, 40.0]),  # time step
)


def _spec(budget: int):
    # a one-hour outage window, so random streams of minutes reach the budget
    pol = Policy(max_reconfigs_per_hour=budget, cooldown_s=20, dwell_s=30, z_windows=4, outage_budget_window_s=3600)
    spec = example_spec(pol)
    twin = TenantSpec("llm2", Role.SENSITIVE, "llm2.slice", "gpu3", InstanceRef("gpu3", "2g.10gb", 0), 0.015)
    return replace(spec, tenants={**spec.tenants, "llm2": twin})


def simulate(spec, ticks):
    """Closed loop: the 'host' applies what decide() wants, or keeps it in flight, or fails it."""
    state = ControllerState()
    at = {"llm": InstanceRef("gpu0", "2g.10gb", 0), "llm2": InstanceRef("gpu3", "2g.10gb", 0)}
    layouts = dict(EXAMPLE_LAYOUTS)
    desired = None
    t = 0.0
    log = []
    for p99, p99b, etl, sm, fate, dt in ticks:
        t += dt
        act = ActuationStatus()
        if desired is not None:
            changing = [n for n, ref in desired.placements.items() if at.get(n) != ref]
            if fate == "finish":
                for g, lay in desired.layouts.items():
                    if is_valid(A100, lay):
                        layouts[g] = lay
                for n in changing:
                    ref = desired.placements[n]
                    if ref.slot in layouts.get(ref.gpu, ()):
                        at[n] = ref
            elif fate == "fly":
                act = ActuationStatus(in_flight=tuple(f"tenant:{n}" for n in changing))
            else:
                act = ActuationStatus(outcomes=tuple(Outcome(f"tenant:{n}", False, "injected", t) for n in changing))
        obs = example_observation(t, p99, etl, llm_at=at["llm"], layouts=layouts)
        g = obs.gpus[at["llm"].gpu]
        inst = {k: (MigSample(sm_active=sm) if k == str(at["llm"].slot) else v) for k, v in g.instances.items()}
        t2 = replace(obs.tenants["llm"], instance=at["llm2"], latency=replace(obs.tenants["llm"].latency, p99=p99b))
        obs = replace(
            obs,
            tenants={**obs.tenants, "llm2": t2},
            gpus={**obs.gpus, at["llm"].gpu: replace(g, instances=inst)},
            actuation=act,
        )
        d = decide(state, obs, spec)
        log.append((obs, d))
        state, desired = d.state, d.desired
    return log


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tick_st, min_size=20, max_size=160), st.integers(0, 3))
def test_invariants_hold_on_random_streams(ticks, budget):
    spec = _spec(budget)
    log = simulate(spec, ticks)
    last_action: dict[str, float] = {}
    stacks: dict[str, list[str]] = {}
    reconfig_times: list[float] = []
    prev_reconfigs: tuple[float, ...] = ()
    outages: dict[str, list[tuple[float, float]]] = {}
    for obs, d in log:
        # never a throttle on a protected or sensitive tenant
        for c in d.desired.throttles:
            assert spec.tenants[c.tenant].role not in (Role.PROTECTED, Role.SENSITIVE)
            assert c.expires_at > obs.t
        # no two victims sent to one instance
        targets = list(d.desired.placements.values())
        assert len(targets) == len(set(targets))
        # every desired layout obeys the placement rules
        for lay in d.desired.layouts.values():
            assert is_valid(A100, lay)
        for e in d.events:
            _check_event(spec, e, last_action, stacks)
            if e.kind in ACTIONS and e.evidence.get("outage_s"):
                outages.setdefault(e.tenant, []).append((e.t, e.evidence["outage_s"]))
        new = [r for r in d.state.reconfigs if r not in prev_reconfigs]
        reconfig_times.extend(new)
        prev_reconfigs = d.state.reconfigs
        # the state always round-trips
        assert type(d.state).from_json(d.state.to_json()) == d.state
    # never more reconfigurations than the budget in any rolling hour
    for i, r in enumerate(reconfig_times):
        assert sum(1 for x in reconfig_times[i:] if x < r + 3600) <= budget
    # never more outage than the tenant's share of its error budget in any rolling budget window
    window = spec.policy.outage_budget_window_s
    for name, spent in outages.items():
        cap = spec.policy.outage_budget_share * outage_tail(spec.tenants[name].quantile) * window
        for i, (t0, _) in enumerate(spent):
            assert sum(s for t, s in spent[i:] if t < t0 + window) <= cap + 1e-9, (name, spent)


def _check_event(spec, e: DecisionEvent, last_action, stacks):
    if e.kind in ACTIONS:
        prev = last_action.get(e.tenant)
        # no action inside a cooldown
        assert prev is None or e.t >= prev + spec.policy.cooldown_s, (e, prev)
        last_action[e.tenant] = e.t
    stack = stacks.setdefault(e.tenant, [])
    if e.kind == "escalate":
        stack.append(e.lever)
    elif e.kind == "release" and e.lever == "guard" and e.level_from == e.level_to:
        # the one exception to the reverse order: a guard beneath a larger slice that stays
        assert "guard" in stack[:-1] and stack[-1] == "resize", (stack, e)
        del stack[len(stack) - 2 - stack[-2::-1].index("guard")]
    elif e.kind == "release":
        # release in the reverse order of escalation
        assert stack and stack[-1] == e.lever, (stack, e)
        stack.pop()
    elif e.kind in ("fail", "timeout") and e.level_from != e.level_to:
        assert stack and stack[-1] == e.lever
        stack.pop()


@settings(max_examples=25, deadline=None)
@given(st.lists(tick_st, min_size=10, max_size=80))
def test_same_input_same_output(ticks):
    spec = _spec(2)
    a = simulate(spec, ticks)
    b = simulate(spec, ticks)
    assert [(d.state.to_json(), d.desired, d.events) for _, d in a] == [
        (d.state.to_json(), d.desired, d.events) for _, d in b
    ]
