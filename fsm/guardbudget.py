"""The capped tenants' side of a guard: is a cap holding its tenant, and how long has each capped
tenant been held against how long it ran (policy.guard_cost_share, docs/decisions.md)."""

from __future__ import annotations

import math

from fsm.desired import Throttle
from fsm.observation import Observation
from fsm.spec import HostSpec, Policy, Role
from fsm.state import ControllerState


def trial_s(p: Policy) -> float:
    """How long a guard not yet judged may hold a tenant that has run little: until the futility
    stop's first look (one rate_tau_s). tick_base's guard_budget_spent and guard_trial_fits read
    the same."""
    return p.rate_tau_s


def trial_run_s(p: Policy) -> float:
    """How long a tenant must have run before a guard's trial may cap it: long enough for the
    trial to be its guard_cost_share of twice that (tick_base, guard_trial_wait_s); 0 without a
    budget."""
    share = p.guard_cost_share
    return trial_s(p) / (2.0 * share) if share else 0.0


def binds(c: Throttle, obs: Observation) -> bool:
    """The capped tenant runs at 90% of its cap or more on the capped device: were the cap in
    force, it holds the tenant."""
    ts = obs.tenants.get(c.tenant)
    rate = ts.io.get(c.device) if ts is not None and ts.io else None
    if rate is None:
        return False
    return bool(
        (c.read_bps and (rate.read_bps or 0.0) >= 0.9 * c.read_bps)
        or (c.write_bps and (rate.write_bps or 0.0) >= 0.9 * c.write_bps)
    )


def holds(c: Throttle, obs: Observation, capped: tuple[str, ...]) -> bool:
    """The cap was in force after the last decision (its tenant's budget not spent) and binds.
    A guard stays on the victim's ladder when its caps are lifted for their budget; its tenant
    then runs past them, but is no longer held by them."""
    return c.tenant in capped and binds(c, obs)


def charge_guards(state: ControllerState, obs: Observation, spec: HostSpec) -> dict[str, tuple[float, float, float]]:
    """Per tenant that could be capped: (seconds held at its caps, seconds it ran, as of t), both
    exponentially weighted over guard_budget_window_s. A cap binds when the tenant runs at >= 90%
    of it on a capped device; a tenant runs when it moves at least io_aggressor_min_bps. The budget
    is a share of the time it runs: its throughput exists only then, so a share of the clock would
    let a guard take much more than that share of an aggressor that runs one hour in four."""
    p = spec.policy
    now = obs.t
    binding: set[str] = set()
    # dry-run and shadow: no cap holds anybody, but how long each tenant ran is counted as live (a
    # trial may wait for it: tick_base.guard_trial_wait_s)
    for ctl in state.tenants.values() if p.enforce else ():
        for step in ctl.stack:
            for c in step.caps:
                if c.tenant not in binding and holds(c, obs, state.capped):
                    binding.add(c.tenant)
    running: set[str] = set()
    floor = p.io_aggressor_min_bps
    tenants = obs.tenants
    for name in spec.derived("guardbudget.cappable", _cappable_names):
        ts = tenants.get(name)
        io = ts.io if ts is not None else None
        if not io:
            continue
        total = 0.0  # sum(r.total_bps for r in io.values()), the same additions without a generator
        for r in io.values():
            total += (r.read_bps or 0.0) + (r.write_bps or 0.0)
        if total >= floor:
            running.add(name)
    out: dict[str, tuple[float, float, float]] = {}
    decays: dict[float, float] = {}  # the tenants last charged at the same time share their decay
    before = state.guard_cost
    for name, (held, ran, t0) in before.items():  # in no order: decide() sorts the new state
        dt = now - t0 if now > t0 else 0.0
        decay = decays.get(dt)
        if decay is None:
            decay = decays[dt] = math.exp(-dt / p.guard_budget_window_s)
        bound = name in binding
        ran_now = bound or name in running
        held, ran = held * decay + (dt if bound else 0.0), ran * decay + (dt if ran_now else 0.0)
        if ran_now or ran > 1e-3:
            out[name] = (held, ran, now)
    fresh = (0.0, 0.0, now)  # first charged now: nothing held or run yet
    for name in (binding | running) - before.keys():
        out[name] = fresh
    return out


def _cappable_names(spec: HostSpec) -> tuple[str, ...]:
    return tuple(t.name for t in spec.by_role(Role.BULK, Role.COMPUTE))
