"""decide(): one controller tick. Pure and deterministic: the same state, observation and spec
always give the same new state, desired state and events. No I/O, no clock (time is obs.t).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fsm.desired import DecisionEvent, DesiredState
from fsm.ladder import Tick
from fsm.observation import Observation
from fsm.sanitize import sanitize
from fsm.spec import HostSpec, Role, TenantSpec
from fsm.state import ControllerState


@dataclass(frozen=True, slots=True)
class Decision:
    state: ControllerState
    desired: DesiredState
    events: tuple[DecisionEvent, ...]


def decide(state: ControllerState, obs: Observation, spec: HostSpec) -> Decision:
    obs, bad = sanitize(obs)
    bad_input = dict(state.bad_input)
    for reason, n in bad.items():
        bad_input[reason] = bad_input.get(reason, 0) + n
    if state.last_t is not None and obs.t < state.last_t:
        # Time went backwards (clock step or a reordered trace): never act on it.
        bad_input["observation.t: went backwards"] = bad_input.get("observation.t: went backwards", 0) + 1
        held = replace(state, bad_input=bad_input)
        return Decision(held, _desired(Tick.start(held, replace(obs, t=state.last_t), spec)), ())
    tick = Tick.start(state, obs, spec)
    # Most urgent first, so a shared resource (a free instance, the budget) goes to the worst tail.
    order = sorted(spec.by_role(Role.SENSITIVE), key=lambda t: (-_urgency(obs, t), t.name))
    for t in order:
        tick.step(t)
    desired = _desired(tick)
    new_state = ControllerState(
        tenants=dict(sorted(tick.tenants.items())),
        layouts=dict(sorted(tick.layouts.items())),
        reconfigs=tuple(tick.reconfigs),
        bad_input=bad_input,
        seq=tick.seq,
        last_t=obs.t,
        guard_cost=dict(sorted(tick.guard_cost.items())),
        capped=tuple(sorted({c.tenant for c in desired.throttles})) if desired.enforce else (),
    )
    return Decision(new_state, desired, tuple(tick.events))


def _urgency(obs: Observation, t: TenantSpec) -> float:
    ts = obs.tenants.get(t.name)
    v = ts.latency.quantile(t.quantile) if ts is not None and ts.latency is not None else None
    if v is None or not t.slo_s:
        return 0.0
    return v / t.slo_s


def _desired(tick: Tick) -> DesiredState:
    throttles, mps = tick.throttles()
    placements = {n: c.target for n, c in sorted(tick.tenants.items()) if c.target is not None}
    return DesiredState(
        t=tick.obs.t,
        throttles=throttles,
        mps=mps,
        placements=placements,
        layouts=dict(sorted(tick.layouts.items())),
        enforce=tick.spec.policy.enforce,
    )
