"""The hindsight oracle: the best *static* configuration of a host, found offline with the whole
run known, as a bound on what a controller could reach without acting at runtime.

For each sensitive tenant the candidates are its instances at t=0: any profile at any placement the
GPU's MIG rules (fsm.mig) allow around the other tenants' instances as they are. Others are never
moved, shrunk or evicted; instances nobody uses may be replaced. Every candidate runs under the
`static` policy (all levers off) from its layout, so the oracle row takes no runtime action.

Search (documented in docs/scenarios.md, "The oracle"):
- per GPU only the largest profile that fits is kept: in the simulator a tenant's service time
  falls with its slices and its KV cache grows with its memory, while its PCIe path and its
  neighbours depend only on the GPU, so a smaller slice on the same GPU never does better
  (`prune=False` keeps every profile: the tests check both agree on small cases);
- one tenant, or few enough joint choices (<= EXHAUSTIVE_MAX): every joint choice of GPUs;
  otherwise greedy, most urgent tenant first (the largest bad_request_fraction under `static`), each
  tenant's best GPU chosen with the others where they are or were already put;
- every candidate is screened on a shorter horizon (one period of the host's longest schedule,
  at least an hour); the best SCREEN_KEEP go on to the full run, and the best full run wins;
- ranked by bad_request_fraction, then p99, then the others' lowest throughput (higher is
  better), then the placement's text: deterministic. The figures are replay.report's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from fsm.mig import Slot, is_valid
from fsm.observation import InstanceRef
from fsm.spec import Role
from replay import report
from replay.runner import HostRun
from replay.scenario import HostModel, Scenario, kv_fits

EXHAUSTIVE_MAX = 24  # joint GPU choices above this: greedy
SCREEN_KEEP = 3  # candidates that go on from the screening horizon to the full run
SCREEN_MIN_S = 3600.0

Choice = tuple[tuple[str, InstanceRef], ...]  # (tenant, its instance at t=0), by tenant name
Runner = Callable[[list[tuple[int, Choice, float]]], list[HostRun]]  # (host, choice, duration) -> runs


@dataclass(frozen=True, slots=True)
class OracleResult:
    host: str
    choice: Choice
    run: HostRun
    evaluated: int  # candidate runs (screening and full)
    method: str  # exhaustive | greedy


def describe(choice: Choice) -> dict[str, str]:
    return {n: str(i) for n, i in choice}


# -- the configuration a choice stands for ---------------------------------------------------------
def apply_choice(model: HostModel, choice: Choice) -> HostModel:
    """The host with the chosen tenants' instances (and their GPUs' layouts) at t=0: on every GPU a
    chosen instance lands on, the tenants' slots stay and the free slots stay where they still fit."""
    where = {n: t.instance for n, t in model.spec.tenants.items() if t.instance is not None}
    moved = {n: i for n, i in choice if where.get(n) != i}
    if not moved:
        return model
    where.update(moved)
    layouts = dict(model.layouts)
    for gpu in sorted({i.gpu for i in moved.values()}):
        gm = model.models[gpu]
        taken = sorted(i.slot for i in where.values() if i.gpu == gpu)
        if not is_valid(gm, taken):
            raise ValueError(f"{gpu}: {[str(s) for s in taken]} is not a valid layout")
        keep = list(taken)
        for s in layouts[gpu]:
            if s not in taken and is_valid(gm, [*keep, s]):
                keep.append(s)
        layouts[gpu] = tuple(sorted(keep))
    spec_tenants = dict(model.spec.tenants)
    cfgs = dict(model.tenants)
    for name, inst in moved.items():
        spec_tenants[name] = replace(spec_tenants[name], instance=inst, gpu=inst.gpu)
        cfgs[name] = cfgs[name].model_copy(update={"instance": str(inst)})
    return replace(model, spec=replace(model.spec, tenants=spec_tenants), layouts=layouts, tenants=cfgs)


def placements(model: HostModel, tenant: str, others: dict[str, InstanceRef], prune: bool = True) -> list[InstanceRef]:
    """Where `tenant` may run at t=0 with the other tenants at `others`: per GPU, the profiles (the
    largest only, with `prune`) that fit around them at their first allowed start, and whose KV
    cache fits (vLLM would not start otherwise)."""
    req = model.tenants[tenant].requests
    out: list[InstanceRef] = []
    for gpu in sorted(model.layouts):
        gm = model.models[gpu]
        taken = [i.slot for n, i in others.items() if n != tenant and i.gpu == gpu]
        fits = []
        for p in sorted(gm.ladder(), key=lambda p: -p.slices):
            start = next((s for s in p.placements if is_valid(gm, [*taken, Slot(s, p.name)])), None)
            if start is None or not kv_fits(req, gm, p.name):
                continue
            fits.append(InstanceRef(gpu, p.name, start))
            if prune:
                break
        out.extend(fits)
    return out


def _joint(model: HostModel, order: list[str], gpus: tuple[str, ...], prune: bool) -> Choice | None:
    """Place the tenants of `order` on `gpus` in that order, each at the largest profile that fits."""
    where = {n: t.instance for n, t in model.spec.tenants.items() if t.instance is not None}
    out: dict[str, InstanceRef] = {}
    for name, gpu in zip(order, gpus, strict=True):
        cand = [i for i in placements(model, name, where, prune) if i.gpu == gpu]
        if not cand:
            return None
        where[name] = out[name] = cand[0]
    return tuple(sorted(out.items()))


def _valid(model: HostModel, choice: Choice) -> Choice | None:
    try:
        apply_choice(model, choice)
    except ValueError:
        return None
    return choice


# -- ranking ---------------------------------------------------------------------------------------
def judge(scenario: Scenario, run: HostRun, static: HostRun) -> dict[str, Any]:
    """The report's row for one host run (replay.report: bad_request_fraction, p99, throughput)."""
    return report.summarise(scenario, {"x": [run]}, baseline=[static])["x"]


def others_throughput(row: dict[str, Any]) -> float:
    """The lowest work ratio (vs static) of the non-sensitive roles; 1.0 when there are none."""
    thr = [v for k, v in row["throughput"].items() if k != Role.SENSITIVE.value]
    return min(thr) if thr else 1.0


def rank_key(scenario: Scenario, run: HostRun, static: HostRun, choice: Choice) -> tuple[float, float, float, str]:
    row = judge(scenario, run, static)
    bad = row["bad_request_fraction"] or 0.0
    p99 = row["p99_ms"] if not math.isnan(row["p99_ms"]) else 0.0
    return (bad, p99, -others_throughput(row), str(describe(choice)))


def urgency(scenario: Scenario, static: HostRun) -> list[str]:
    """Sensitive tenants, the largest bad_request_fraction under static first (ties by name)."""
    tenants = judge(scenario, static, static)["tenants"]
    return sorted(tenants, key=lambda n: (-(tenants[n]["bad_request_fraction"] or 0.0), n))


def screen_horizon(scenario: Scenario, host_index: int, duration_s: float) -> float:
    """One period of the host's longest schedule (at least an hour), never past the run."""
    periods = [SCREEN_MIN_S]
    for t in scenario.hosts[host_index].tenants.values():
        periods += [p for p in (t.schedule.period_s, t.reroute_period_s) if p is not None]
    return min(duration_s, max(periods))


# -- the search --------------------------------------------------------------------------------------
def search(
    scenario: Scenario,
    host_index: int,
    duration_s: float,
    static: HostRun,
    run_many: Runner,
    prune: bool = True,
) -> OracleResult:
    """The best static choice for one host. `run_many` runs (host, choice, duration) jobs under the
    static policy (in a process pool, or inline) and returns their HostRuns in order."""
    model = scenario.hosts[host_index]
    order = urgency(scenario, static)
    start = {n: i for n in order if (i := model.spec.tenants[n].instance) is not None}
    home: Choice = tuple(sorted(start.items()))
    screen_s = screen_horizon(scenario, host_index, duration_s)
    evaluated = 0

    def best(choices: list[Choice]) -> tuple[Choice, HostRun]:
        nonlocal evaluated
        uniq = sorted(set(choices), key=lambda c: str(describe(c)))
        if screen_s < duration_s and len(uniq) > SCREEN_KEEP:
            runs = run_many([(host_index, c, screen_s) for c in uniq])
            base = run_many([(host_index, home, screen_s)])[0] if home not in uniq else runs[uniq.index(home)]
            evaluated += len(uniq) + (home not in uniq)
            ranked = sorted(zip(uniq, runs, strict=True), key=lambda cr: rank_key(scenario, cr[1], base, cr[0]))
            uniq = [c for c, _ in ranked[:SCREEN_KEEP]]
        runs = run_many([(host_index, c, duration_s) for c in uniq])
        evaluated += len(uniq)
        choice, run = min(zip(uniq, runs, strict=True), key=lambda cr: rank_key(scenario, cr[1], static, cr[0]))
        return choice, run

    gpus = sorted(model.layouts)
    if not order or not gpus:
        return OracleResult(model.name, home, run_many([(host_index, home, duration_s)])[0], 1, "exhaustive")
    if len(gpus) ** len(order) <= EXHAUSTIVE_MAX:
        if prune:  # every joint choice of GPUs, each tenant at the largest profile that fits there
            joint = [_joint(model, order, g, prune) for g in itertools.product(gpus, repeat=len(order))]
        else:  # every joint choice of instances, each around the others as they are
            each = [placements(model, n, dict(start), prune=False) for n in order]
            joint = [_valid(model, tuple(sorted(zip(order, c, strict=True)))) for c in itertools.product(*each)]
        choices = [c for c in joint if c is not None] + [home]
        choice, run = best(choices)
        return OracleResult(model.name, choice, run, evaluated, "exhaustive")
    # Greedy: the most urgent tenant first, each with the others where they are or were put.
    where = dict(start)
    choice, run = home, static
    for name in order:
        fixed = {n: t.instance for n, t in model.spec.tenants.items() if t.instance is not None} | where
        cands: list[Choice] = []
        for inst in placements(model, name, fixed, prune):
            cands.append(tuple(sorted({**where, name: inst}.items())))
        cands.append(choice)  # staying put is always a candidate
        choice, run = best(cands)
        where = dict(choice)
    return OracleResult(model.name, choice, run, evaluated, "greedy")
