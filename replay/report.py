"""Summaries of a replay: the metrics per policy, the table (ours beside the paper's), the JSON
and the plot. Definitions (also in docs/scenarios.md):

- p50/p99/p999: over every request of every sensitive tenant on every host (pooled), in ms;
- violation_rate: fraction of controller windows (ticks with at least `min_window_count`
  requests) whose quantile (p99) exceeds the tenant's SLO: the controller's own view (through
  vLLM's histogram unless --exact-latency); null (printed n/a) when no window counted, never 0;
- windows_counted: the windows that rate is over;
- bad_request_fraction: the request-level evidence: the share of the sensitive tenants' requests
  (those with a latency, plus the rejected ones) whose latency exceeded their own tenant's SLO,
  rejected requests counting as bad (a p99 SLO allows 1%);
- served_fraction / rejected_fraction: requests completed within the run / rejected (never
  served), over the requests that arrived;
- tenants: the same per sensitive tenant (pooled over the hosts it runs on), against its own SLO;
- throughput: per role, the work delivered (requests served, not arrived; bytes moved; SM-seconds)
  divided by what the same tenants delivered under `static`;
- actions_per_hour: escalations + releases the controller decided, per host and hour;
- reconfigs_per_hour: MIG layout changes started, per host and hour;
- time_to_mitigate_s: mean length of a violation episode, from its first violating window to the
  first window of `y_windows` consecutive good ones (None when no window violated).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import numpy as np

from replay.runner import HostRun
from replay.scenario import Scenario

ROLES = ("sensitive", "bulk", "compute")


def _episodes(
    windows: list[tuple[float, str, int, float]], slo: dict[str, float], min_count: int, y: int
) -> list[float]:
    by_tenant: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for t, name, count, q in windows:
        if count >= min_count and not math.isnan(q):
            by_tenant[name].append((t, q > slo.get(name, math.inf)))
    out = []
    for seq in by_tenant.values():
        start: float | None = None
        good = 0
        for t, bad in seq:
            if bad:
                if start is None:
                    start = t
                good = 0
            elif start is not None:
                good += 1
                if good >= y:
                    # Ends at the first of the good windows that stayed good.
                    out.append(seq_time_back(seq, t, y) - start)
                    start, good = None, 0
    return out


def seq_time_back(seq: list[tuple[float, bool]], t: float, y: int) -> float:
    idx = next(i for i, (tt, _) in enumerate(seq) if tt == t)
    return seq[idx - y + 1][0]


def _counted(
    windows: list[tuple[float, str, int, float]], slo: dict[str, float], min_count: int
) -> dict[str, list[int]]:
    """tenant -> [windows counted, windows over the SLO] (a window counts with >= min_count requests
    and a quantile the controller could read)."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for _, name, count, q in windows:
        if count >= min_count and not math.isnan(q):
            c = out[name]
            c[0] += 1
            c[1] += q > slo.get(name, math.inf)
    return out


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _ms(x: float) -> float:
    return round(float(x) * 1000, 3)


def _tenants(hr: list[HostRun], min_count: int) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[int, int]]]:
    """Per sensitive tenant, pooled over the hosts it runs on (copies share names), each request
    judged against its own host's SLO for it; and per tenant (requests judged, windows over)."""
    names = sorted({n for r in hr for n in r.slo})
    out: dict[str, dict[str, Any]] = {}
    raw: dict[str, tuple[int, int]] = {}
    for name in names:
        runs = [r for r in hr if name in r.slo]
        lat = np.concatenate([r.tenant_latencies.get(name, np.empty(0, np.float32)) for r in runs])
        over = sum(int(np.count_nonzero(r.tenant_latencies.get(name, np.empty(0)) > r.slo[name])) for r in runs)
        arrivals = sum(r.arrivals.get(name, 0) for r in runs)
        served = sum(r.served.get(name, 0) for r in runs)
        rejected = sum(r.rejected.get(name, 0) for r in runs)
        judged = int(lat.size) + rejected  # requests with an outcome: a latency, or a rejection
        counted = bad_w = 0
        for r in runs:
            c, b = _counted(r.windows, r.slo, min_count).get(name, [0, 0])
            counted, bad_w = counted + c, bad_w + b
        raw[name] = (judged, bad_w)
        slos = {r.slo[name] for r in runs}
        qs = np.quantile(lat, [0.5, 0.99, 0.999]) if lat.size else [math.nan] * 3
        out[name] = {
            "slo_ms": _ms(next(iter(slos))) if len(slos) == 1 else None,
            "quantile": runs[0].quantile.get(name, 0.99),
            "requests": arrivals,
            "served": served,
            "rejected": rejected,
            "p50_ms": _ms(qs[0]),
            "p99_ms": _ms(qs[1]),
            "p999_ms": _ms(qs[2]),
            "bad_requests": over + rejected,
            "bad_request_fraction": _share(over + rejected, judged),
            "served_fraction": _share(served, arrivals),
            "rejected_fraction": _share(rejected, arrivals),
            "violation_rate": round(bad_w / counted, 4) if counted else None,
            "windows_counted": counted,
        }
    return out, raw


def summarise(
    scenario: Scenario, runs: dict[str, list[HostRun]], baseline: list[HostRun] | None = None
) -> dict[str, dict[str, Any]]:
    policy = scenario.hosts[0].spec.policy
    base = runs.get("static") or baseline or []
    base_work = _work_by_role(base)
    out: dict[str, dict[str, Any]] = {}
    for name, hr in runs.items():
        lat = np.concatenate([r.latencies for r in hr]) if hr else np.empty(0)
        qs = np.quantile(lat, [0.5, 0.99, 0.999]) * 1000 if lat.size else [math.nan] * 3
        episodes: list[float] = []
        for r in hr:
            episodes.extend(_episodes(r.windows, r.slo, policy.min_window_count, policy.y_windows))
        tenants, raw = _tenants(hr, policy.min_window_count)
        counted = sum(t["windows_counted"] for t in tenants.values())
        bad_w = sum(b for _, b in raw.values())
        judged = sum(j for j, _ in raw.values())
        bad_r = sum(t["bad_requests"] for t in tenants.values())
        arrivals = sum(t["requests"] for t in tenants.values())
        hours = sum(r.duration_s for r in hr) / 3600.0
        work = _work_by_role(hr)
        thr = {
            role: round(work[role] / base_work[role], 4)
            for role in ROLES
            if role in work and base_work.get(role, 0) > 0
        }
        out[name] = {
            "p50_ms": round(float(qs[0]), 3),
            "p99_ms": round(float(qs[1]), 3),
            "p999_ms": round(float(qs[2]), 3),
            "violation_rate": round(bad_w / counted, 4) if counted else None,
            "windows_counted": counted,
            "bad_request_fraction": _share(bad_r, judged),
            "served_fraction": round(sum(t["served"] for t in tenants.values()) / arrivals, 6) if arrivals else None,
            "rejected_fraction": round(sum(t["rejected"] for t in tenants.values()) / arrivals, 6)
            if arrivals
            else None,
            "requests": arrivals,
            "throughput": thr,
            "actions_per_hour": round(sum(r.actions for r in hr) / hours, 3) if hours else 0.0,
            "reconfigs_per_hour": round(sum(r.reconfigs for r in hr) / hours, 3) if hours else 0.0,
            "time_to_mitigate_s": round(float(np.mean(episodes)), 1) if episodes else None,
            "tenants": tenants,
        }
    return out


def judged_window(runs: dict[str, list[HostRun]]) -> float:
    """The outage budget window the runs were decided under (the shortest, were they to differ)."""
    return min((r.outage_window_s for hr in runs.values() for r in hr), default=math.inf)


def horizon_note(
    scenario: Scenario, duration_s: float, runs: dict[str, list[HostRun]], keep_window: bool
) -> str | None:
    """What the run says about the span its tail is judged over, when that is not the configured
    outage budget window.

    The outage budget and the cost check price an outage against the error budget of
    `outage_budget_window_s`. A replay shorter than the window judges the tail over the run, so
    runner.judged_policy capped the window at it; with --keep-window it did not, and a lever
    bought may not repay its outage within the run: the requests an outage held may make its p99
    (docs/results.md, vllm-ttft's default hour).
    """
    window = scenario.hosts[0].spec.policy.outage_budget_window_s
    if duration_s >= window:
        return None
    if not keep_window:
        return (
            f"note: the tail is judged over this run, so [policy] outage_budget_window_s ({window:g} s) was "
            f"capped at its {judged_window(runs):g} s: moves and resizes whose outage that span's error budget "
            "cannot hold are not taken (--keep-window: decide as over the configured window)"
        )
    dear = sorted({p for p, hr in runs.items() for r in hr for c in r.lever_costs if c.get("cost_requests", 0) > 0})
    if not dear:
        return None
    return (
        f"note: this run ({duration_s:g} s) is shorter than the outage budget's window ({window:g} s, "
        f"[policy] outage_budget_window_s), over which the moves and resizes of {', '.join(dear)} are meant "
        "to repay their outage; within the run the requests an outage held may make its p99. Judge over "
        "the window, or set the window to the span the tail is judged over"
    )


def _work_by_role(hr: list[HostRun]) -> dict[str, float]:
    work: dict[str, float] = defaultdict(float)
    for r in hr:
        for n, w in r.delivered.items():
            work[r.roles[n]] += w
    return dict(work)


def to_json(
    scenario: Scenario,
    seed: int,
    duration_s: float,
    summary: dict[str, dict[str, Any]],
    exact_latency: bool = False,
    outage_window_s: float | None = None,
) -> str:
    """`outage_window_s`: the outage budget window the runs were decided under (judged_window)."""
    doc: dict[str, Any] = {
        "scenario": scenario.name,
        "seed": seed,
        "duration_s": duration_s,
        "latency_view": "exact" if exact_latency else "histogram",
        "policies": summary,
    }
    if outage_window_s is not None and math.isfinite(outage_window_s):
        doc["outage_budget_window_s"] = outage_window_s
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def _rate(v: float | None) -> str:
    """A window rate: n/a when no window counted (never a 0.0% that nothing measured)."""
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _share_pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def table(scenario: Scenario, summary: dict[str, dict[str, Any]]) -> str:
    paper = scenario.meta.paper
    show_paper = bool(paper)
    head = ["policy", "p50 ms", "p99 ms", "p999 ms", "SLO viol.", "bad req."]
    if show_paper:
        head += ["paper p99", "paper viol."]
    head += ["thr sens", "thr bulk", "thr comp", "actions/h", "reconf/h", "mitigate s"]
    rows = [head]
    for name, m in summary.items():
        row = [name, _fmt(m["p50_ms"]), _fmt(m["p99_ms"]), _fmt(m["p999_ms"])]
        row += [_rate(m["violation_rate"]), _share_pct(m["bad_request_fraction"])]
        if show_paper:
            p = paper.get(name, {})
            row += [_fmt(p.get("p99_ms")), _fmt(p.get("violation_rate"), True)]
        thr = m["throughput"]
        row += [
            f"{thr['sensitive']:.3f}" if "sensitive" in thr else "-",
            f"{thr['bulk']:.3f}" if "bulk" in thr else "-",
            f"{thr['compute']:.3f}" if "compute" in thr else "-",
            _fmt(m["actions_per_hour"]),
            _fmt(m["reconfigs_per_hour"]),
            _fmt(m["time_to_mitigate_s"]),
        ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for k, r in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(scenario: Scenario, summary: dict[str, dict[str, Any]]) -> str:
    paper = scenario.meta.paper
    lines = [
        "| policy | p50 ms | p99 ms | p999 ms | SLO violations | bad requests | paper p99 ms | paper violations "
        "| throughput bulk | throughput compute | actions/h | reconfigs/h | time to mitigate s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in summary.items():
        p = paper.get(name, {})
        thr = m["throughput"]
        lines.append(
            f"| {name} | {_fmt(m['p50_ms'])} | {_fmt(m['p99_ms'])} | {_fmt(m['p999_ms'])} "
            f"| {_rate(m['violation_rate'])} | {_share_pct(m['bad_request_fraction'])} "
            f"| {_fmt(p.get('p99_ms'))} | {_fmt(p.get('violation_rate'), True)} "
            f"| {thr.get('bulk', float('nan')):.3f} | {thr.get('compute', float('nan')):.3f} "
            f"| {_fmt(m['actions_per_hour'])} | {_fmt(m['reconfigs_per_hour'])} | {_fmt(m['time_to_mitigate_s'])} |"
        )
    return "\n".join(lines)


def plot(scenario: Scenario, runs: dict[str, list[HostRun]], out: str) -> None:
    """Latency CDF per policy with the SLO line, and the isolation level over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 8))
    slo_ms = None
    for name, hr in runs.items():
        lat = np.sort(np.concatenate([r.latencies for r in hr])) * 1000 if hr else np.empty(0)
        if lat.size == 0:
            continue
        step = max(1, lat.size // 4000)
        ys = np.arange(1, lat.size + 1) / lat.size
        ax1.plot(lat[::step], ys[::step], label=name)
        for r in hr:
            slo_ms = min(r.slo.values()) * 1000 if r.slo else slo_ms
        h0 = hr[0]
        if h0.levels:
            ts, lv = zip(*h0.levels, strict=True)
            ax2.step(np.asarray(ts) / 60.0, lv, where="post", label=f"{name} ({h0.host})")
    if slo_ms is not None:
        ax1.axvline(slo_ms, color="red", linestyle="--", label=f"SLO {slo_ms:g} ms")
    ax1.set_xscale("log")
    ax1.set_ylim(0.9, 1.0005)
    ax1.set_xlabel("latency (ms, log)")
    ax1.set_ylabel("CDF (upper tail)")
    ax1.set_title(f"{scenario.name}: latency of the sensitive tenants")
    ax1.legend(loc="lower right", fontsize=8)
    ax2.set_yticks(range(4), ["steady", "guarded", "placed", "resized"])
    ax2.set_xlabel("simulated time (min)")
    ax2.set_title("isolation level (highest of the sensitive tenants, first host)")
    ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
