"""`tailguard replay --suite`: every suite scenario under the five policies plus the hindsight
oracle, in one process pool shared by all scenarios (the oracle's searches run in threads that
only wait on the pool), and one matrix.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from replay import oracle
from replay.runner import POLICIES, HostRun, run_host
from replay.scenario import Scenario, load_scenario

if TYPE_CHECKING:
    from replay.executor import Executor

SUITE_POLICIES = (*POLICIES, "oracle")


def _policy_job(args: tuple[str, int, str, float, int, bool]) -> HostRun:
    path, host_index, policy, duration_s, seed, keep_window = args
    return run_host(load_scenario(path), host_index, policy, duration_s, seed, keep_window=keep_window)


def _choice_job(args: tuple[str, int, oracle.Choice, float, int]) -> HostRun:
    """One oracle candidate: the host from the chosen instances, all levers off."""
    path, host_index, choice, duration_s, seed = args
    return run_choice(load_scenario(path), host_index, choice, duration_s, seed)


def run_choice(scenario: Scenario, host_index: int, choice: oracle.Choice, duration_s: float, seed: int) -> HostRun:
    hosts = list(scenario.hosts)
    hosts[host_index] = oracle.apply_choice(hosts[host_index], choice)
    return run_host(replace(scenario, hosts=tuple(hosts)), host_index, "static", duration_s, seed)


class _Inline:
    """The pool's interface, run in this process (--jobs 1)."""

    def submit(self, fn: Callable[[Any], HostRun], arg: Any) -> Future[HostRun]:
        f: Future[HostRun] = Future()
        f.set_result(fn(arg))
        return f


@dataclass(slots=True)
class ScenarioRuns:
    scenario: Scenario
    duration_s: float
    seed: int
    runs: dict[str, list[HostRun]]  # policy (and "oracle") -> one HostRun per host
    oracle: list[oracle.OracleResult]


def run_oracle(
    scenario: Scenario, duration_s: float, seed: int, static: list[HostRun], pool: Any, prune: bool = True
) -> list[oracle.OracleResult]:
    out = []
    for h in range(len(scenario.hosts)):

        def run_many(jobs: list[tuple[int, oracle.Choice, float]]) -> list[HostRun]:
            futs = [pool.submit(_choice_job, (scenario.file, hi, c, d, seed)) for hi, c, d in jobs]
            return [f.result() for f in futs]

        out.append(oracle.search(scenario, h, duration_s, static[h], run_many, prune))
    return out


def run_suite(
    scenarios: list[Scenario],
    duration_s: float | None,
    seed: int | None,
    jobs: int | None,
    executor: Executor | Any | None = None,
    keep_window: bool = False,
) -> list[ScenarioRuns]:
    """`executor` (replay.executor; anything with submit(fn, arg) -> Future): where the runs go;
    default a process pool of `jobs` here. Results merge in a fixed order whichever it is."""
    jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    local: Any = ProcessPoolExecutor(max_workers=jobs) if jobs > 1 and executor is None else _Inline()
    pool: Any = executor if executor is not None else local
    try:
        plans = []
        for sc in scenarios:
            dur = duration_s if duration_s is not None else (sc.meta.suite_duration_s or sc.meta.duration_s)
            sd = seed if seed is not None else sc.meta.seed
            # Static first: the oracle's searches start from it.
            futs = {
                p: [pool.submit(_policy_job, (sc.file, h, p, dur, sd, keep_window)) for h in range(len(sc.hosts))]
                for p in ("static", *[p for p in POLICIES if p != "static"])
            }
            plans.append((sc, dur, sd, futs))

        def finish(plan: tuple[Scenario, float, int, dict[str, list[Future[HostRun]]]]) -> ScenarioRuns:
            sc, dur, sd, futs = plan
            static = [f.result() for f in futs["static"]]
            found = run_oracle(sc, dur, sd, static, pool)
            runs = {p: [f.result() for f in futs[p]] for p in POLICIES}
            runs["oracle"] = [replace(r.run, policy="oracle") for r in found]
            return ScenarioRuns(sc, dur, sd, runs, found)

        if isinstance(pool, _Inline):
            return [finish(p) for p in plans]
        with ThreadPoolExecutor(max_workers=max(1, len(plans))) as threads:
            return list(threads.map(finish, plans))
    finally:
        if isinstance(pool, ProcessPoolExecutor):
            pool.shutdown()


# -- the per-scenario object and the matrix --------------------------------------------------------
def scenario_object(sr: ScenarioRuns) -> dict[str, Any]:
    """What `replay --json` writes for one scenario, with the oracle row and the regret."""
    from replay import report

    summary = report.summarise(sr.scenario, sr.runs, baseline=sr.runs["static"])
    summary["oracle"]["placement"] = {r.host: oracle.describe(r.choice) for r in sr.oracle}
    summary["oracle"]["search"] = {r.host: {"method": r.method, "runs": r.evaluated} for r in sr.oracle}
    full, orc = summary["full"]["bad_request_fraction"], summary["oracle"]["bad_request_fraction"]
    regret = round(100 * (full - orc), 3) if full is not None and orc is not None else None
    doc: dict[str, Any] = json.loads(
        report.to_json(sr.scenario, sr.seed, sr.duration_s, summary, outage_window_s=report.judged_window(sr.runs))
    )
    doc["regret_bad_pts"] = regret
    return doc


def others_low(row: dict[str, Any]) -> float | None:
    thr = {k: v for k, v in row["throughput"].items() if k != "sensitive"}
    return min(thr.values()) if thr else None


# The regression gate of issue 10: `full` may not be worse than `static` (doing nothing) by more.
GATE_P99_RATIO = 1.05
GATE_BAD_PTS = 0.005
GATE_OTHERS_MIN = 0.95


def gate_problems(static: dict[str, Any], full: dict[str, Any]) -> list[str]:
    """How `full`'s summary row is worse than `static`'s beyond the gate (empty: it passes). p999
    is not gated: an outage the error budget pays for may raise it."""
    out = []
    if full["p99_ms"] > GATE_P99_RATIO * static["p99_ms"]:
        out.append(f"p99 {full['p99_ms']:.1f} ms > {GATE_P99_RATIO:g} x static's {static['p99_ms']:.1f}")
    if full["bad_request_fraction"] > static["bad_request_fraction"] + GATE_BAD_PTS:
        out.append(
            f"over the SLO {100 * full['bad_request_fraction']:.2f}% > static's "
            f"{100 * static['bad_request_fraction']:.2f}% + {100 * GATE_BAD_PTS:g} points"
        )
    low = others_low(full)
    if low is not None and low < GATE_OTHERS_MIN:
        out.append(f"the others' work {low:.3f} < {GATE_OTHERS_MIN:g} of static's")
    return out


def matrix(objs: dict[str, dict[str, Any]]) -> str:
    head = ["scenario", "policy", "p99 ms", "p999 ms", "bad req.", "others thr", "actions/h"]
    rows = [head]
    for name, obj in objs.items():
        for pol, m in obj["policies"].items():
            low = others_low(m)
            bad = m.get("bad_request_fraction")
            rows.append(
                [
                    name,
                    pol,
                    _f(m["p99_ms"]),
                    _f(m["p999_ms"]),
                    "-" if bad is None else f"{100 * bad:.2f}%",
                    "-" if low is None else f"{low:.3f}",
                    _f(m["actions_per_hour"]),
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for k, r in enumerate(rows):
        cells = (c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        lines.append("  ".join(cells))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for name, obj in objs.items():
        where = obj["policies"]["oracle"]["placement"]
        lines.append(f"{name}: regret_bad_pts (full - oracle) = {obj['regret_bad_pts']}; oracle {where}")
    return "\n".join(lines)


def markdown_matrix(objs: dict[str, dict[str, Any]], policies: tuple[str, ...] = ("static", "oracle", "full")) -> str:
    """static / oracle / full side by side, for docs/results.md."""
    cols = " | ".join(f"{p} p99 ms | {p} bad" for p in policies)
    head = f"| scenario | {cols} | full others thr | full actions/h | regret pts |"
    lines = [head, "|" + "---|" * (1 + 2 * len(policies) + 3)]
    for name, obj in objs.items():
        cells = []
        for p in policies:
            m = obj["policies"][p]
            bad = m.get("bad_request_fraction")
            cells += [_f(m["p99_ms"]), "-" if bad is None else f"{100 * bad:.2f}%"]
        full = obj["policies"]["full"]
        low = others_low(full)
        cells += ["-" if low is None else f"{low:.3f}", _f(full["actions_per_hour"]), str(obj["regret_bad_pts"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _f(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def suite_json(results: list[ScenarioRuns], wall_s: float, where: dict[str, Any] | None = None) -> dict[str, Any]:
    """`where`: the executor's description ({"executor": "ray", "ray_version": ...})."""
    return {
        "suite": {sr.scenario.name: scenario_object(sr) for sr in results},
        "wall_s": round(wall_s, 2),
        **(where or {"executor": "local"}),
    }


def timed_suite(
    scenarios: list[Scenario],
    duration_s: float | None,
    seed: int | None,
    jobs: int | None,
    executor: Executor | None = None,
    progress: bool = False,
    keep_window: bool = False,
) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    if executor is None:
        results = run_suite(scenarios, duration_s, seed, jobs, keep_window=keep_window)
        where = None
    else:
        from replay.executor import Bar, Tracked

        bar = Bar(0, "runs") if progress else None
        pool: Any = Tracked(executor, bar) if bar is not None else executor
        try:
            results = run_suite(scenarios, duration_s, seed, jobs, executor=pool, keep_window=keep_window)
        finally:
            if bar is not None:
                bar.done()
        where = executor.describe()
    wall = time.monotonic() - t0
    return suite_json(results, wall, where), wall
