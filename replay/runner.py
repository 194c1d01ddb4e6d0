"""The policy ablation: every policy is the real decision core (fsm.decide) with levers switched,
closed-loop against the simulator, one controller per host. Jobs (policy x host) run in parallel
processes; results are merged per policy in a fixed order, so the same seed gives the same report.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fsm.decide import decide
from fsm.spec import LEVEL_ORDER, HostSpec, Policy, Role
from fsm.state import ControllerState
from fsm.tick_base import PLACE, RESIZE
from replay.scenario import Scenario, load_scenario
from replay.simulator import HostSim

if TYPE_CHECKING:
    from replay.executor import Executor

POLICIES: dict[str, dict[str, bool]] = {
    "static": {"guards": False, "placement": False, "mig": False, "mps": False},
    "guards-only": {"guards": True, "placement": False, "mig": False, "mps": True},
    "placement-only": {"guards": False, "placement": True, "mig": False, "mps": False},
    "mig-only": {"guards": False, "placement": False, "mig": True, "mps": False},
    "full": {"guards": True, "placement": True, "mig": True, "mps": True},
}
ACTION_KINDS = ("escalate", "release")
LEVEL_EVERY_S = 30.0  # resolution of the isolation-level time series kept for the plot


def judged_policy(policy: Policy, duration_s: float, keep_window: bool = False) -> Policy:
    """The policy a replay of `duration_s` runs under: a replay judges the tail over the run, so an
    outage budget window longer than the run is capped at it (`keep_window`: as configured).

    The window is the span the operator's SLO is judged over; the outage budget lets moves and
    resizes spend half its error budget. Over a shorter judged span the requests one relaunch holds
    can outnumber the span's whole p99 slots (a 60 s relaunch against an hour's 1%: vllm-ttft's
    default hour, docs/results.md), so the lever that pays over 4 h makes the run's p99."""
    if keep_window or duration_s >= policy.outage_budget_window_s:
        return policy
    return replace(policy, outage_budget_window_s=duration_s)


def policy_for(base: Policy, name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
    levers = POLICIES[name]
    return replace(base, guards=levers["guards"], placement=levers["placement"], mig=levers["mig"], mps=levers["mps"])


@dataclass(slots=True)
class HostRun:
    """One host under one policy (picklable, returned by the worker processes)."""

    policy: str
    host: str
    duration_s: float
    latencies: np.ndarray  # float32 seconds, every sensitive request
    windows: list[tuple[float, str, int, float]]  # (t, tenant, count, quantile the controller saw)
    slo: dict[str, float]
    delivered: dict[str, float]  # sensitive tenants: requests served (completed in the run)
    roles: dict[str, str]
    actions: int
    reconfigs: int
    moves: int
    failed_ops: int
    levels: list[tuple[float, int]]  # (t, highest isolation level of any sensitive tenant)
    events: list[str] = field(default_factory=list)
    # Per sensitive tenant: its latencies (float32 s, every request with a known latency), the
    # requests that arrived, were served in the run, and were rejected (never served).
    tenant_latencies: dict[str, np.ndarray] = field(default_factory=dict)
    arrivals: dict[str, int] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # refused at admission
    quantile: dict[str, float] = field(default_factory=dict)  # the tenant's SLO quantile (0.99: p99)
    exact_latency: bool = False  # the controller's view: raw samples (True) or vLLM's histogram
    # Every move or resize taken, with its price (fsm.levercost's evidence) when it was priced.
    lever_costs: list[dict[str, Any]] = field(default_factory=list)
    outages: list[tuple[float, str, float, bool]] = field(default_factory=list)  # replay.simulator.Stats.outages
    own_restarts: list[tuple[float, str, float]] = field(default_factory=list)  # Stats.own_restarts
    outage_window_s: float = math.inf  # the outage budget window the run was decided under (judged_policy)


def run_host(
    scenario: Scenario,
    host_index: int,
    policy: str,
    duration_s: float,
    seed: int,
    progress: Callable[[float], None] | None = None,
    exact_latency: bool = False,
    spec_policy: Policy | None = None,
    keep_window: bool = False,
) -> HostRun:
    """`spec_policy`: run under exactly this Policy (a canary's), `policy` only naming the run.
    `keep_window`: the outage budget's window as configured, even past the run (judged_policy)."""
    model = scenario.hosts[host_index]
    chosen = spec_policy if spec_policy is not None else policy_for(model.spec.policy, policy)
    n_ticks = max(1, math.ceil(duration_s / scenario.meta.tick_s - 1e-9))
    chosen = judged_policy(chosen, n_ticks * scenario.meta.tick_s, keep_window)
    spec: HostSpec = replace(model.spec, policy=chosen)
    sim = HostSim(model, scenario.meta, seed, host_index, exact_latency=exact_latency)
    state = ControllerState()
    desired = None
    actions = 0
    levels: list[tuple[float, int]] = []
    next_level_t = 0.0
    events: list[str] = []
    lever_costs: list[dict[str, Any]] = []
    i = 0
    while i < n_ticks:
        # A tick that runs late (signals.tick_overruns) skips the slots it missed, as the daemon does.
        late = min(sim.overrun(), n_ticks - 1 - i)
        obs = sim.step(desired, late)
        d = decide(state, obs, spec)
        state, desired = d.state, d.desired
        for e in d.events:
            if e.kind in ACTION_KINDS:
                actions += 1
            if len(events) < 2000:
                events.append(f"t={e.t:.0f} {e.tenant} {e.kind} {e.level_from}->{e.level_to} {e.lever} {e.reason}")
            if e.kind == "escalate" and e.lever in (PLACE, RESIZE) and len(lever_costs) < 200:
                lever_costs.append({"t": e.t, "tenant": e.tenant, **e.evidence.get("cost", {"lever": e.lever})})
        if obs.t >= next_level_t:
            lvl = max((LEVEL_ORDER.index(c.level) for c in state.tenants.values()), default=0)
            levels.append((obs.t, lvl))
            next_level_t += LEVEL_EVERY_S
        if progress is not None and i % 500 <= late:
            progress(i / n_ticks)
        i += 1 + late
    sim.drain()  # batched servers: requests still queued at the end count too, as FCFS ones do
    st = sim.stats
    lat = np.concatenate(st.latencies).astype(np.float32) if st.latencies else np.empty(0, np.float32)
    by_tenant = {n: np.concatenate(parts).astype(np.float32) for n, parts in st.tenant_latencies.items()}
    sensitive = [n for n, t in spec.tenants.items() if t.role is Role.SENSITIVE]
    rejected = st.rejected  # refused at admission: never served, never in `latencies`
    return HostRun(
        policy=policy,
        host=model.name,
        duration_s=n_ticks * scenario.meta.tick_s,
        latencies=lat,
        windows=sim.stats.windows,
        slo={n: t.slo_s or math.inf for n, t in spec.tenants.items() if t.role is Role.SENSITIVE},
        delivered=dict(sim.stats.delivered),
        roles={n: t.role.value for n, t in spec.tenants.items()},
        actions=actions,
        reconfigs=sim.stats.reconfigs,
        moves=sim.stats.moves,
        failed_ops=sim.stats.failed_ops,
        levels=levels,
        events=events,
        tenant_latencies=by_tenant,
        arrivals={n: st.admitted.get(n, 0) + rejected.get(n, 0) for n in sensitive},
        served={n: st.served.get(n, 0) for n in sensitive},
        rejected={n: rejected.get(n, 0) for n in sensitive},
        quantile={n: spec.tenants[n].quantile for n in sensitive},
        exact_latency=exact_latency,
        lever_costs=lever_costs,
        outages=list(st.outages),
        own_restarts=list(st.own_restarts),
        outage_window_s=chosen.outage_budget_window_s,
    )


def _job(args: tuple[str, int, str, float, int, bool, bool]) -> HostRun:
    path, host_index, policy, duration_s, seed, exact, keep_window = args
    return run_host(
        load_scenario(path), host_index, policy, duration_s, seed, exact_latency=exact, keep_window=keep_window
    )


def run_all(
    scenario: Scenario,
    policies: list[str],
    duration_s: float,
    seed: int,
    jobs: int | None = None,
    progress: bool = False,
    exact_latency: bool = False,
    executor: Executor | None = None,
    keep_window: bool = False,
) -> dict[str, list[HostRun]]:
    """policy -> one HostRun per host, in scenario order. `executor`: where the jobs run (default:
    a process pool of `jobs` here); the merge is in submission order whichever it is."""
    for p in policies:
        policy_for(Policy(), p)
    hosts = range(len(scenario.hosts))
    work = [(scenario.file, h, p, duration_s, seed, exact_latency, keep_window) for p in policies for h in hosts]
    jobs = jobs if jobs is not None else min(len(work), os.cpu_count() or 1)
    results: list[HostRun] = []
    if executor is not None:
        from replay.executor import Bar, results_in_order

        tbar = Bar(len(work), "runs") if progress else None
        results = results_in_order([executor.submit(_job, w) for w in work], tbar)
        if tbar:
            tbar.done()
        return _by_policy(policies, results)
    bar = Progress(len(work)) if progress else None
    if jobs <= 1 or len(work) == 1:
        for w in work:
            results.append(_job(w))
            if bar:
                bar.advance()
    else:
        with ProcessPoolExecutor(max_workers=jobs) as ex:
            for r in ex.map(_job, work):
                results.append(r)
                if bar:
                    bar.advance()
    if bar:
        bar.done()
    return _by_policy(policies, results)


def _by_policy(policies: list[str], results: list[HostRun]) -> dict[str, list[HostRun]]:
    out: dict[str, list[HostRun]] = {p: [] for p in policies}
    for r in results:
        out[r.policy].append(r)
    return out


class Progress:
    """A plain progress bar on stderr (only when stderr is a terminal or forced)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0
        self.enabled = sys.stderr.isatty() or os.environ.get("TAILGUARD_PROGRESS") == "1"
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.n / max(1, self.total))
        sys.stderr.write(f"\rreplay [{'#' * filled}{'.' * (width - filled)}] {self.n}/{self.total} runs")
        sys.stderr.flush()

    def advance(self) -> None:
        self.n += 1
        self._draw()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
