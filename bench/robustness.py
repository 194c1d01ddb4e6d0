"""Never worse than doing nothing, off the suite: every suite scenario under random perturbations
of what an unseen host would change (request rate or trace speed, the SLO, the aggressors'
demand, SM activity and timing, the relaunch time, the seed; with --bursts, MMPP bursts; with
--protect, aggressors an operator has marked `protected`: never capped, never moved; with
--quantiles, SLOs on another quantile than the p99: a p95 or a p999 at the same latency; with
--shapes, the shapes real request traces have and the suite's synthetic tenants do not: service
times as variable as real prompt lengths, Gamma-renewal arrivals; with --low-quantiles, SLOs on
the median or the p90 at a quarter to half of the latency; with --traces, request traces of
another shape than the bundled one: started elsewhere, time-warped into bursts and lulls of
their own; with --low-rates, sensitive tenants at 0.1-2 requests a second; with --signals, a
host's signals (no DCGM, noisy PCIe, failing scrapes, late ticks); with --actuation, a host's actuators
(outages off the configured figures, failing moves, refused reconfigurations); with --duty,
aggressors that come and go on a cycle of 2-60 minutes, on 10-90% of it; with --restarts,
sensitive tenants that restart on their own, a deploy or a crash every 1-24 hours; with --writes,
aggressors that write to their drives where they read them; with --cgroup-v1, caps by cgroup v1's
blkio, which does not hold buffered writes; with --tight-slos, SLOs at 0.2-0.8 of the scenario's,
often under what the tenant reaches on a quiet host; with --vm-topology, the controller sees the
PCIe tree a VM shows, not the host's; with --uptime, sensitive servers that were up for 10
minutes to 24 hours before the controller began (their counters hold it); with --trace PATH,
every trace-driven tenant's arrivals from another real request trace, as busy in its busy seconds
as the bundled one (and with --fit-trace, its max_model_len and SLO fitted to that trace's prompt
lengths as the scenario's are to the bundled one's); with --alone, a third run per case, the
sensitive tenants alone: what the neighbours added, and how much of it full cured),
`static` against `full`, judged by the regression gate (replay.suite.gate_problems).

    python -m bench.robustness --per 3 --seed 7 [--duration S] [--jobs 2] [--json out.json]
                               [--policy KEY=VALUE ...] [--exact-latency] [--bursts] [--protect]
                               [--quantiles] [--low-quantiles] [--shapes] [--traces] [--low-rates]
                               [--signals] [--actuation] [--duty] [--restarts] [--writes] [--cgroup-v1]
                               [--tight-slos] [--vm-topology] [--uptime] [--scenario KEY=VALUE ...] [--tick-s S]
                               [--trace PATH [--fit-trace]] [--alone]

`--policy` lays a [policy] key over every scenario's (a TOML value: 0.9, true, "numa"), to try
a knob on the same cases.

Each case's perturbation is drawn from a generator seeded by (seed, scenario, case number), so a
case can be re-run alone (`--only vllm-ttft:2`). Prints one row per case and the worse cases'
problems with the moves and resizes `full` bought there, their price (cost, benefit, rent, episode:
fsm.levercost) and what each outage met (the rate over its seconds, read off the static run, and
those requests' share of the run's: 1% of them wait out the outage, and that is a p99), each worse
case's first suspect (worse_kind) and their tally; exit code 1 when any case is worse.
"""

from __future__ import annotations

import argparse
import collections
import copy
import functools
import json
import math
import random
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fsm.outage import DEFAULT_READINESS_TIMEOUT_S
from replay.arrivals import load_request_trace, trace_cycle
from replay.report import summarise
from replay.runner import HostRun, run_host
from replay.scenario import SCENARIO_DIR, Scenario, resolve_data, scenario_from_data, suite
from replay.suite import gate_problems, others_low

SHIFTABLE = ("bulk", "compute")


def _scale(
    table: dict[str, Any], key: str, rng: random.Random, lo: float, hi: float, notes: list[str], who: str
) -> None:
    if table.get(key) is None:
        return
    k = rng.uniform(lo, hi)
    table[key] = table[key] * k
    notes.append(f"{who}.{key} x{k:.2f}")


def _shift(schedule: dict[str, Any], rng: random.Random, notes: list[str], who: str) -> None:
    """Move the on-windows inside their period (kept inside it: the schedule's rule)."""
    period, on = schedule.get("period_s"), schedule.get("on") or []
    if not period or not on:
        return
    lo = -min(a for a, _ in on)
    hi = period - max(b for _, b in on)
    d = rng.uniform(lo, hi)
    schedule["on"] = [[a + d, b + d] for a, b in on]
    notes.append(f"{who}.on {d:+.0f} s")


def _writes(t: dict[str, Any], nvme: set[str], rng: random.Random, notes: list[str], who: str) -> None:
    """perturb's `writes` for one aggressor: with odds one half, every flow of it with a block
    device at one end runs the other way, the job writing where it read (an ETL that writes its
    output, a checkpoint). The same bytes on the same links, the other direction of each."""
    if rng.random() >= 0.5:
        return
    flipped = 0
    for flows in [t.get("flows") or [], *[r.get("flows") or [] for r in t.get("reroute") or []]]:
        for f in flows:
            src, dst = f["path"]
            if src in nvme or dst in nvme:
                f["path"] = [dst, src]
                flipped += 1
    if flipped:
        notes.append(f"{who} writes")


def _duty(t: dict[str, Any], rng: random.Random, notes: list[str], who: str) -> None:
    """perturb's `duty` for one aggressor: on for a share of every period, off the rest (a job
    that runs every few minutes, an hourly ETL), at the level it had. A diurnal profile is kept:
    its period is the day's."""
    schedule = t.setdefault("schedule", {})
    if schedule.get("profile"):
        return
    period = _log_uniform(rng, 120.0, 3600.0)
    share = rng.uniform(0.1, 0.9)
    start = rng.uniform(0.0, period * (1.0 - share))
    schedule.update(period_s=round(period, 1), on=[[round(start, 1), round(start + share * period, 1)]])
    notes.append(f"{who} on {100 * share:.0f}% of every {period:.0f} s")


def _shape(req: dict[str, Any], rng: random.Random, notes: list[str], who: str) -> None:
    """perturb's `shapes` for one sensitive tenant's requests."""
    req["noise_cv"] = rng.uniform(0.1, 1.0)
    notes.append(f"{who}.noise_cv {req['noise_cv']:.2f}")
    if req.get("trace") is None and req.get("arrivals", "poisson") == "poisson" and rng.random() < 0.5:
        req.update(arrivals="gamma", cv=rng.uniform(0.5, 3.0))
        notes.append(f"{who} gamma cv {req['cv']:.2f}")


def _trace(req: dict[str, Any], who: str) -> tuple[Any, Any, Any]:
    """The bundled request trace a tenant's `trace` names: (arrival times, prompt, output tokens)."""
    path = resolve_data(req["trace"], SCENARIO_DIR)
    if path is None:
        raise ValueError(f"{who}: request trace {req['trace']!r} not found")
    return load_request_trace(str(path))


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _low_rate(req: dict[str, Any], level: float, rng: random.Random, notes: list[str], who: str) -> None:
    """perturb's `low_rates` for one tenant: its mean request rate set to 0.1-2 a second
    (log-uniform), whatever the scenario's, through its trace's speed where a trace drives it, and
    over the thinning of its schedule's `level` (low-rate keeps 12% of its trace); a diurnal
    profile's levels (0.3-1) scale it still. The regime where the tail is a handful of requests a
    minute, and interference still stretches every one of them (the issue's "blind at low request
    rate")."""
    target = _log_uniform(rng, 0.1, 2.0)
    if level <= 0:
        return  # a tenant switched off stays off
    if req.get("trace") is None:
        req["rate"] = target / level
        notes.append(f"{who}.rate {target:.2f}/s (low rates)")
        return
    times = _trace(req, who)[0]
    req["trace_speed"] = target * trace_cycle(times) / len(times) / level  # its rate x speed x level
    notes.append(f"{who}.trace_speed {req['trace_speed']:.3f}: {target:.2f}/s (low rates)")


def _busy_rate(times: Any, tokens: Any) -> float:
    """A trace's prompt tokens per second in its busy seconds: the 99th percentile of its 10 s bins."""
    per_bin = np.bincount((np.asarray(times) // 10.0).astype(np.int64), weights=np.asarray(tokens, dtype=float))
    return float(np.percentile(per_bin, 99)) / 10.0


def _retrace(req: dict[str, Any], path: Path, notes: list[str], who: str, fit: dict[str, Any] | None = None) -> None:
    """perturb's `trace`: the tenant's arrivals and tokens from another request trace (any format
    replay reads), played at the speed that gives its busy seconds (_busy_rate) the prompt tokens per
    second of the bundled trace's (the load its server was sized for: the Azure code trace at the
    conversation trace's mean would be a server overloaded by its own bursts, 2.5 times as busy in
    them, no tail a neighbour made): a real trace the controller has not been tuned on. `fit` (the
    tenant's table, with --fit-trace): its model and SLO fitted to the trace's prompts too
    (_fit_prompts)."""
    times, tokens, _ = _trace(req, who)
    new_times, new_tokens, _ = load_request_trace(str(path))
    k = _busy_rate(times, tokens) / _busy_rate(new_times, new_tokens)
    req["trace"] = str(path)
    req["trace_speed"] = req.get("trace_speed", 1.0) * k
    notes.append(f"{who} trace {path.name} x{k:.3f} (its busy seconds' prompt tokens)")
    if fit is not None:
        _fit_prompts(fit, req, np.asarray(tokens, dtype=float), np.asarray(new_tokens, dtype=float), notes, who)


def _fit_prompts(t: dict[str, Any], req: dict[str, Any], old: Any, new: Any, notes: list[str], who: str) -> None:
    """--fit-trace: a tenant's model and SLO for another trace's prompt lengths, as the scenario's
    are for the bundled trace's. Its `max_model_len` refuses the same share of the new prompts as of
    the bundled ones (a long-context trace, ten times the Azure prompts as Mooncake's are, was
    otherwise mostly refused at 4096 tokens, and the cases measured refusals), never less than the
    scenario's; its SLO scales with the mean admitted prompt (a prefill's time grows with its
    tokens, and the SLO was set where the bundled prompts meet it on a quiet host)."""
    limit = req.get("max_model_len")
    if limit is not None:
        refused = float(np.mean(old >= limit))
        fitted = max(int(limit), int(np.quantile(new, 1.0 - refused)) + 1)
        if fitted != limit:
            req["max_model_len"] = fitted
            notes.append(f"{who}.max_model_len {fitted} (refuses {100 * refused:.1f}% of the prompts)")
        old, new = old[old < limit], new[new < fitted]
    ratio = float(np.mean(new)) / float(np.mean(old)) if old.size and new.size else 1.0
    if t.get("slo_ms") is not None and ratio != 1.0:
        t["slo_ms"] *= ratio
        notes.append(f"{who}.slo_ms x{ratio:.2f} (its mean prompt)")


def _reshape(req: dict[str, Any], rng: random.Random, notes: list[str], who: str, out: Path) -> None:
    """perturb's `traces` for one trace-driven tenant: the bundled trace made into one of another
    shape, written to `out` (BurstGPT's CSV columns) and put in its place. The same requests (their
    prompt and output lengths, their mean rate), arranged otherwise: the trace starts at a random
    point of its cycle, and its time is warped piecewise, segments of exponential length (mean 20 to
    300 s) each played at a lognormal speed (sigma 0.3 to 1.0, so a segment at 1/3 to 3x its rate
    is common), the whole rescaled to its cycle so that the mean rate stays. Real traces differ from
    the bundled one mostly there: where their peaks fall, how sharp and how long their bursts are."""
    times, tokens, generated = _trace(req, who)
    cycle = trace_cycle(times)
    off = rng.uniform(0.0, cycle)
    t = np.mod(times - off, cycle)
    order = np.argsort(t, kind="stable")
    t, tokens, generated = t[order], tokens[order], generated[order]
    mean_s, sigma = rng.uniform(20.0, 300.0), rng.uniform(0.3, 1.0)
    edges = [0.0]
    while edges[-1] < cycle:
        edges.append(min(cycle, edges[-1] + rng.expovariate(1.0 / mean_s)))
    speed = np.array([rng.lognormvariate(0.0, sigma) for _ in edges[1:]])
    starts = np.array(edges[:-1])
    played = np.diff(np.array(edges)) / speed  # each segment's length once played at its speed
    before = np.concatenate(([0.0], np.cumsum(played)[:-1]))
    k = np.searchsorted(starts, t, side="right") - 1
    warped = (before[k] + (t - starts[k]) / speed[k]) * (cycle / float(played.sum()))
    dest = out / f"{who}.csv"
    with dest.open("w", encoding="utf-8") as f:
        f.write("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n")
        for at, tok, gen in zip(warped.tolist(), tokens.tolist(), generated.tolist(), strict=True):
            f.write(f"{at:.6f},warped,{tok:g},{gen:g},{tok + gen:g},Conversation log\n")
    req["trace"] = str(dest)
    notes.append(f"{who} trace from {off:.0f} s, warped (segments ~{mean_s:.0f} s, sigma {sigma:.2f})")


def perturb(
    data: dict[str, Any],
    rng: random.Random,
    bursts: random.Random | None = None,
    protect: random.Random | None = None,
    quantiles: random.Random | None = None,
    shapes: random.Random | None = None,
    low_quantiles: random.Random | None = None,
    traces: random.Random | None = None,
    trace_dir: Path | None = None,
    low_rates: random.Random | None = None,
    signals: random.Random | None = None,
    actuation: random.Random | None = None,
    duty: random.Random | None = None,
    restarts: random.Random | None = None,
    writes: random.Random | None = None,
    cgroup_v1: random.Random | None = None,
    tight_slos: random.Random | None = None,
    vm_topology: random.Random | None = None,
    uptime: random.Random | None = None,
    trace: Path | None = None,
    fit_trace: bool = False,
) -> list[str]:
    """Perturb a scenario's TOML tables in place; the notes say what changed. `bursts` (a generator
    of its own, so the other draws stay those of a run without it): Poisson arrivals may turn
    into bursts. `protect` (one of its own too): each bulk or compute tenant is marked protected
    with odds one half, as an operator does with a job nobody may slow down; its traffic stays.
    `quantiles` (one of its own): each sensitive tenant's SLO is on the p95, the p99 or the p999
    (odds one third each), at the same latency: a budget five times larger or ten times smaller.
    `shapes` (one of its own): each sensitive tenant's service-time noise gets a coefficient of
    variation between 0.1 and 1.0 (the real Azure conversation trace's prompt lengths have a CV of
    0.96: replay/data), and Poisson arrivals turn with odds one half into a Gamma renewal process
    of CV 0.5 to 3 (BurstGPT, Wang et al., arXiv 2401.17644, models real LLM arrivals with Gamma
    inter-arrival times): a tail of the tenant's own that no lever cures, and bursts of another law.
    `low_quantiles` (one of its own): each sensitive tenant's SLO is on the median or the p90 (odds
    one half each), at 0.25-0.5 of its latency (the same latency would never be reached there): a
    budget of half or a tenth of the requests, which the p99 gate does not judge. `traces` (one of
    its own; with `trace_dir`, where the new traces go): each trace-driven tenant's trace is given
    another shape (_reshape). `low_rates` (one of its own): each sensitive tenant's mean request rate
    is set to 0.1-2 a second (_low_rate). `signals` (one of its own): the host's signals as a real
    one gives them ([scenario.signals]): no DCGM with odds one half, PCIe readings with a noise
    CV of 0-1, 0-10% of latency scrapes failing, and 0-10% of ticks running 1-3 periods late.
    `actuation` (one of its own): the host's actuators as a real one has them
    ([scenario.actuation]): relaunches and MIG reconfigurations 0.5-2x the configured figures
    (log-uniform) and each operation's within a CV of 0-0.5, up to 20% of moves failing (the new
    copy never ready) and up to 20% of reconfigurations refused, the launchers waiting for
    readiness as long as by default (a relaunch past it fails the move), 0-100% of the failing
    copies exiting where the launcher sees it (the rest hang until the wait). `duty` (one of its own):
    each bulk or compute tenant without a diurnal profile runs on a cycle of 2-60 minutes
    (log-uniform), on for 10-90% of it (_duty). `restarts` (one of its own): the sensitive tenants
    restart on their own ([scenario.restarts]: a deploy, an out-of-memory kill, a crash), each on
    average once every 1 to 24 hours (log-uniform), down for its relaunch as the host has it.
    `writes` (one of its own): each bulk or compute tenant writes where it read with odds one half
    (_writes). `cgroup_v1` (one of its own): the host caps with cgroup v1's blkio, which holds
    neither the buffered writes nor charges them to the group: 30-90% of every tenant's writes
    ([scenario.actuation] cap_leak). `tight_slos` (one of its own): each sensitive tenant's SLO times
    0.2-0.8 (log-uniform) at the same quantile: often under what the tenant reaches on a quiet host,
    an operator's SLO that no lever meets, whose tail is the tenant's own. `vm_topology` (one of its
    own): the controller sees the PCIe tree a VM shows ([scenario.signals] topology), every device
    behind one root complex or each on its own (odds one half each), the physics the host's.
    `uptime` (one of its own): each sensitive tenant's server was up, with odds one half, for 10
    minutes to 24 hours (log-uniform) before the run and the controller began: its latency source's
    counters hold those requests at the first scrape, as a daemon started on a busy host finds them
    (the run's arrivals are unchanged). `trace` (no draw): every trace-driven tenant's trace
    replaced by this one first (_retrace; `fit_trace`: with the tenant's max_model_len and SLO fitted
    to its prompts, _fit_prompts)."""
    notes: list[str] = []
    meta = data["scenario"]
    off = rng.randrange(1, 10_000)
    meta["seed"] = meta.get("seed", 1) + off
    notes.append(f"seed +{off}")
    if rng.random() < 0.5:
        k = rng.choice([0.5, 2.0])
        meta["relaunch_s"] = meta.get("relaunch_s", 5.0) * k
        notes.append(f"relaunch x{k:g}")
    if signals is not None:
        sig = {
            "dcgm": signals.random() >= 0.5,
            "pcie_noise_cv": round(signals.uniform(0.0, 1.0), 3),
            "latency_dropout": round(signals.uniform(0.0, 0.1), 3),
            "tick_overruns": round(signals.uniform(0.0, 0.1), 3),  # drawn last: the others stay as they were
        }
        meta["signals"] = sig
        notes.append(
            f"signals: {'DCGM' if sig['dcgm'] else 'no DCGM'}, PCIe noise CV {sig['pcie_noise_cv']:g},"
            f" {100 * sig['latency_dropout']:.1f}% of scrapes failing, {100 * sig['tick_overruns']:.1f}% of ticks late"
        )
    if actuation is not None:
        act = {
            "relaunch_factor": round(_log_uniform(actuation, 0.5, 2.0), 3),
            "reconfig_factor": round(_log_uniform(actuation, 0.5, 2.0), 3),
            "outage_cv": round(actuation.uniform(0.0, 0.5), 3),
            "move_failures": round(actuation.uniform(0.0, 0.2), 3),
            "reconfig_refusals": round(actuation.uniform(0.0, 0.2), 3),
            # the launcher's default wait, raised to twice a tenant's relaunch_s where check-config asks
            "readiness_timeout_s": DEFAULT_READINESS_TIMEOUT_S,
            # of the copies that never get ready, those that exit and are seen to (a systemd unit);
            # drawn last: the draws above stay as they were
            "failed_exits": round(actuation.uniform(0.0, 1.0), 3),
        }
        meta["actuation"] = act
        notes.append(
            f"actuation: relaunch x{act['relaunch_factor']:g}, reconfig x{act['reconfig_factor']:g}, CV"
            f" {act['outage_cv']:g}, {100 * act['move_failures']:.0f}% of moves failing,"
            f" {100 * act['reconfig_refusals']:.0f}% of reconfigurations refused, readiness wait"
            f" {act['readiness_timeout_s']:g} s, {100 * act['failed_exits']:.0f}% of failing copies exiting"
        )
    if cgroup_v1 is not None:
        leak = round(cgroup_v1.uniform(0.3, 0.9), 3)
        meta.setdefault("actuation", {})["cap_leak"] = leak
        notes.append(f"cgroup v1: {100 * leak:.0f}% of writes buffered")
    if vm_topology is not None:
        view = vm_topology.choice(["one-root", "apart"])
        meta.setdefault("signals", {})["topology"] = view
        notes.append(f"the controller sees the PCIe tree {view}")
    if restarts is not None:
        meta["restarts"] = {"every_s": round(_log_uniform(restarts, 3600.0, 86400.0))}
        notes.append(f"own restarts every {meta['restarts']['every_s']} s on average")
    for host in data.get("hosts", []):
        for t in host.get("tenants", []):
            who = t["name"]
            if t.get("role") == "sensitive":
                _scale(t, "slo_ms", rng, 0.8, 1.5, notes, who)
                if low_quantiles is not None:
                    t["quantile"] = low_quantiles.choice([0.5, 0.9])
                    _scale(t, "slo_ms", low_quantiles, 0.25, 0.5, notes, who)
                    notes.append(f"{who}.quantile {t['quantile']:g}")
                if tight_slos is not None and t.get("slo_ms") is not None:
                    k = _log_uniform(tight_slos, 0.2, 0.8)
                    t["slo_ms"] *= k
                    notes.append(f"{who}.slo_ms x{k:.2f} (tight)")
                if quantiles is not None:
                    q = quantiles.choice([0.95, 0.99, 0.999])
                    if q != t.get("quantile", 0.99):
                        t["quantile"] = q
                        notes.append(f"{who}.quantile {q:g}")
                req = t.get("requests") or {}
                if shapes is not None:
                    _shape(req, shapes, notes, who)
                if req.get("trace") is not None:
                    if trace is not None:
                        _retrace(req, trace, notes, who, t if fit_trace else None)
                    if traces is not None:
                        if trace_dir is None:
                            raise ValueError("perturb(traces=...) needs a trace_dir")
                        _reshape(req, traces, notes, who, trace_dir)
                    req["trace_speed"] = req.get("trace_speed", 1.0)
                    _scale(req, "trace_speed", rng, 0.6, 1.4, notes, who)
                else:
                    _scale(req, "rate", rng, 0.6, 1.4, notes, who)
                    if bursts is not None and req.get("arrivals", "poisson") == "poisson" and bursts.random() < 0.5:
                        # bursts the scenario did not have (MMPP: a burst rate x ratio, then calm)
                        req.update(arrivals="mmpp", burst_ratio=bursts.uniform(2.0, 5.0))
                        req.update(burst_mean_s=bursts.uniform(10.0, 60.0), calm_mean_s=bursts.uniform(30.0, 300.0))
                        notes.append(f"{who} bursts x{req['burst_ratio']:.1f}")
                if low_rates is not None:
                    _low_rate(req, float((t.get("schedule") or {}).get("level", 1.0)), low_rates, notes, who)
                if uptime is not None and uptime.random() < 0.5:
                    req["uptime_s"] = round(_log_uniform(uptime, 600.0, 86400.0))
                    notes.append(f"{who} up {req['uptime_s']} s before")
                if t.get("relaunch_s") is not None and "relaunch_s" not in meta:
                    _scale(t, "relaunch_s", rng, 0.5, 2.0, notes, who)
            elif t.get("role") in SHIFTABLE:
                if protect is not None and protect.random() < 0.5:
                    t["role"] = "protected"
                    notes.append(f"{who} protected")
                _scale(t, "demand_gbps", rng, 0.5, 1.5, notes, who)
                if t.get("sm_active"):
                    t["sm_active"] = min(1.0, t["sm_active"] * rng.uniform(0.8, 1.1))
                if t.get("schedule"):
                    _shift(t["schedule"], rng, notes, who)
                if duty is not None:
                    _duty(t, duty, notes, who)
                if writes is not None:
                    nvme = {n["id"] for n in host.get("nodes", []) if n.get("kind") == "nvme"}
                    _writes(t, nvme, writes, notes, who)
    return notes


# perturb's extra generators, by keyword; each is a command-line flag (low_quantiles: --low-quantiles)
GENERATORS = (
    "bursts", "protect", "quantiles", "shapes", "low_quantiles", "traces", "low_rates", "signals", "actuation",
    "duty", "restarts", "writes", "cgroup_v1", "tight_slos", "vm_topology", "uptime",
)  # fmt: skip


def case_generators(seed: int, name: str, case: int, which: Iterable[str]) -> dict[str, random.Random]:
    """perturb's extra generators (`which`: its keywords) for one case, each seeded by the case and
    its own name, so that turning one on leaves every other draw as it was."""
    return {k: random.Random(f"{seed}:{name}:{case}:{k.replace('_', '-')}") for k in which}


def run_case(
    args: tuple[str, int, int, float | None, dict[str, Any]],
    exact: bool = False,
    tick_s: float | None = None,
    which: Iterable[str] = (),
    overlay: Mapping[str, Any] | None = None,
    trace: Path | None = None,
    alone: bool = False,
    fit_trace: bool = False,
) -> dict[str, Any]:
    """One case: the scenario perturbed (with perturb's extra generators `which`, its keywords),
    then static and full run on it and judged by the gate. `overlay`: [scenario] keys set after the
    perturbation, dotted into its tables ("signals.dcgm_interval_s": 30), the same in every case
    (no draw): one of the lab's figures A/B'd on the same cases. `trace`: perturb's. `alone`: the
    sensitive tenants' own tail too, static with every other tenant gone (`alone` in the result)."""
    which = tuple(which)
    if "traces" in which:  # the reshaped traces live as long as the case
        with tempfile.TemporaryDirectory(prefix="tailguard-robustness-") as tmp:
            try:
                return _run_case(args, exact, tick_s, which, Path(tmp), overlay, trace, alone, fit_trace)
            finally:
                load_request_trace.cache_clear()  # keyed by path: the next case's would never hit
    return _run_case(args, exact, tick_s, which, None, overlay, trace, alone, fit_trace)


def _run_case(
    args: tuple[str, int, int, float | None, dict[str, Any]],
    exact: bool,
    tick_s: float | None,
    which: tuple[str, ...],
    trace_dir: Path | None,
    overlay: Mapping[str, Any] | None = None,
    trace: Path | None = None,
    alone: bool = False,
    fit_trace: bool = False,
) -> dict[str, Any]:
    name, case, seed, duration, policy = args
    path = SCENARIO_DIR / f"{name}.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    data.setdefault("policy", {}).update(policy)
    rng = random.Random(f"{seed}:{name}:{case}")
    mutated = copy.deepcopy(data)
    gens = case_generators(seed, name, case, which)
    notes = perturb(mutated, rng, **gens, trace_dir=trace_dir, trace=trace, fit_trace=fit_trace)
    for key, value in (overlay or {}).items():
        *tables, last = key.split(".")
        at = mutated["scenario"]
        for k in tables:
            at = at.setdefault(k, {})
        at[last] = value
        notes.append(f"scenario.{key} = {value!r}")
    if tick_s is not None:
        mutated["scenario"]["tick_s"] = tick_s  # the controller's sample period (the daemon's: 2 s)
    sc = scenario_from_data(mutated, str(path))
    dur = duration or min(14400.0, sc.meta.suite_duration_s or 14400.0)
    t0 = time.perf_counter()
    runs = {p: _every_host(sc, p, dur, exact) for p in ("static", "full")}
    rows = summarise(sc, runs)
    s, f = rows["static"], rows["full"]
    extra: dict[str, Any] = {}
    if alone:
        extra["alone"] = _alone(mutated, path, dur, exact)
    return {
        "scenario": name,
        "case": case,
        "perturbation": notes,
        "duration_s": dur,
        "static": {"p99_ms": s["p99_ms"], "bad": s["bad_request_fraction"]},
        "full": {"p99_ms": f["p99_ms"], "bad": f["bad_request_fraction"], "others": others_low(f)},
        "reconfigs_per_h": sum(r.reconfigs for r in runs["full"]) / (len(sc.hosts) * dur / 3600),
        "problems": gate_problems(s, f),
        # what full bought and why (fsm.levercost's evidence), and what its outage met: the first
        # thing to read of a worse case
        "levers": [
            {**c, **outage_met(rs, c), **outage_had(rf, c)}
            for rs, rf in zip(runs["static"], runs["full"], strict=True)
            for c in rf.lever_costs
        ],
        "own_restarts": [list(o) for r in runs["static"] for o in r.own_restarts],
        **extra,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _every_host(sc: Scenario, policy: str, duration: float, exact: bool) -> list[HostRun]:
    """Each host of the scenario under one policy, on the scenario's seed."""
    return [run_host(sc, h, policy, duration, sc.meta.seed, exact_latency=exact) for h in range(len(sc.hosts))]


def _alone(data: dict[str, Any], path: Path, duration: float, exact: bool) -> dict[str, float]:
    """The sensitive tenants' own tail: the case's scenario with every other tenant gone, static.
    What static has over it is the neighbours' doing, the most any lever of tailguard's can cure
    (a tenant whose own arrivals overload its server keeps the rest whatever is done)."""
    quiet = copy.deepcopy(data)
    for h in quiet["hosts"]:
        h["tenants"] = [t for t in h["tenants"] if t.get("role") == "sensitive"]
    sc = scenario_from_data(quiet, str(path))
    row = summarise(sc, {"static": _every_host(sc, "static", duration, exact)})["static"]
    return {"p99_ms": row["p99_ms"], "bad": row["bad_request_fraction"]}


def cured_share(r: Mapping[str, Any]) -> float | None:
    """Of what the neighbours added to the share over the SLO (static's over the tenants' own,
    `alone`), the part full took away; None without an alone run or where they added under 2
    points (a share of nothing)."""
    a = r.get("alone")
    if a is None:
        return None
    added = r["static"]["bad"] - a["bad"]
    return (r["static"]["bad"] - r["full"]["bad"]) / added if added > 0.02 else None


def outage_met(static: HostRun, c: dict[str, Any]) -> dict[str, float]:
    """What a move's or resize's outage met, read off the static run of the same case (the same
    arrivals: one seed; static's windows count them as they come, where full's hold them): the
    tenant's requests over the outage's seconds after the decision, as a rate, and as a share of
    its requests over the run. An outage whose requests are 1% of the run makes a p99 of their
    wait; the price was set on the rate before it (`rate_rps`)."""
    seconds = c.get("outage_s") or 0.0
    total = static.arrivals.get(c["tenant"], 0)
    if seconds <= 0 or total <= 0:
        return {}
    t0, tenant = c["t"], c["tenant"]
    n = sum(count for t, name, count, _ in static.windows if name == tenant and t0 < t <= t0 + seconds)
    return {
        "met_rps": round(n / seconds, 3),
        "met_share": round(n / total, 5),
        "run_rps": round(total / static.duration_s, 3),
    }


def outage_had(full: HostRun, c: dict[str, Any]) -> dict[str, Any]:
    """The outage the lever's operation had on the host (its seconds and whether it succeeded),
    which under [scenario.actuation] differs from the one it was priced at; none for an operation
    refused before anything stopped (the tenant's next outage is its next lever's)."""
    nxt = min((o["t"] for o in full.lever_costs if o["tenant"] == c["tenant"] and o["t"] > c["t"]), default=math.inf)
    for start, tenant, seconds, ok in full.outages:
        if tenant == c["tenant"] and c["t"] - 1e-6 <= start < nxt - 1e-6:
            return {"had_s": round(seconds, 1), "had_ok": ok}
    return {}


def lever_line(c: dict[str, Any], duration_s: float) -> str:
    """One move or resize with its price, as the worse cases are read."""
    head = f"t={c['t']:.0f} s ({c['t'] / duration_s:.2f} of the run) {c['tenant']} {c['lever']}:"
    if "cost_requests" not in c:  # taken without the cost check: a guard's relief, or cost_margin unset
        return f"{head} not priced"
    return (
        f"{head} outage {c['outage_s']:g} s, cost {c['cost_requests']:.0f} requests, benefit "
        f"{c['benefit_requests']:.0f} (rent so far {c['rent_requests']:.0f}; {c['rate_rps']:.2f} req/s at "
        f"{100 * c['bad_share']:.1f}% over the SLO, episode {c['episode_elapsed_s']:.0f} s old, "
        f"{c['expected_episode_s']:.0f} s expected)"
        + (
            f"; its outage met {c['met_rps']:.2f} req/s, the run's mean {c['run_rps']:.2f}:"
            f" {100 * c['met_share']:.2f}% of the run's requests"
            if "met_share" in c
            else ""
        )
        + (f"; it took {c['had_s']:g} s" + ("" if c["had_ok"] else ", and failed") if "had_s" in c else "")
    )


EARLY_S = 600.0  # a lever in a run's first ten minutes, on a rate and spread read over a few of them
LONG = 1.5  # an operation that took this many times the outage it was priced at ran long


def worse_kind(r: Mapping[str, Any]) -> str:
    """What a worse case's first suspect is, from what its levers had (the kinds the results name):
    "failed" (an operation failed and ran long: a copy that never got ready, then the move back),
    "slow" (one succeeded, far slower than priced), "own restarts" (the tenant restarted on its
    own after a lever), "early" (a lever in the run's first ten minutes), "no lever" (guards
    only), else "other"."""
    levers = r.get("levers") or []

    def long(c: Mapping[str, Any]) -> bool:  # an unpriced one (a relief) has no outage_s
        o, h = c.get("outage_s"), c.get("had_s")
        return h is not None and (o is None or h > LONG * o)

    if any(c.get("had_ok") is False and long(c) for c in levers):
        return "failed"
    if any(c.get("had_ok") and c.get("outage_s") is not None and long(c) for c in levers):
        return "slow"
    if not levers:
        return "no lever"
    first = min(c["t"] for c in levers)
    if any(at > first for at, _, _ in r.get("own_restarts") or ()):
        return "own restarts"
    return "early" if first < EARLY_S else "other"


def _key_values(ap: argparse.ArgumentParser, flag: str, pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in pairs:
        key, _, value = kv.partition("=")
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            ap.error(f'{flag} {kv}: the value must be a TOML value (0.9, true, "numa")')
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per", type=int, default=3, help="perturbed cases per scenario")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--duration", type=float, help="simulated s per case (default: the suite's, at most 4 h)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", help="NAME or NAME:CASE")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--policy", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--exact-latency", action="store_true", help="the controller sees every request's latency")
    ap.add_argument("--bursts", action="store_true", help="Poisson arrivals may turn into MMPP bursts (half of them)")
    ap.add_argument("--protect", action="store_true", help="bulk and compute tenants may be protected (half of them)")
    ap.add_argument("--quantiles", action="store_true", help="SLOs on the p95, p99 or p999 (a third each)")
    ap.add_argument("--low-quantiles", action="store_true", help="SLOs on the p50 or p90 at 0.25-0.5 of the latency")
    ap.add_argument("--shapes", action="store_true", help="service-time CV 0.1-1.0, Gamma arrivals (half)")
    ap.add_argument("--traces", action="store_true", help="request traces started elsewhere and time-warped")
    ap.add_argument("--low-rates", action="store_true", help="sensitive tenants at 0.1-2 requests/s (log-uniform)")
    ap.add_argument("--signals", action="store_true", help="no DCGM (half), noisy PCIe, failing latency scrapes")
    ap.add_argument(
        "--actuation", action="store_true", help="relaunches and reconfigurations off the configured, failing moves"
    )
    ap.add_argument("--duty", action="store_true", help="aggressors on a 2-60 min cycle, on 10-90%% of it")
    ap.add_argument("--restarts", action="store_true", help="sensitive tenants restart on their own, 1-24 h apart")
    ap.add_argument("--writes", action="store_true", help="aggressors write where they read (half of them)")
    ap.add_argument("--cgroup-v1", action="store_true", help="caps by cgroup v1 blkio: 30-90%% of writes buffered")
    ap.add_argument("--tight-slos", action="store_true", help="SLOs at 0.2-0.8 of the scenario's (often unmet)")
    ap.add_argument("--vm-topology", action="store_true", help="the controller sees a VM's PCIe tree, not the host's")
    ap.add_argument(
        "--uptime", action="store_true", help="sensitive servers up 10 min-24 h before the controller (half of them)"
    )
    ap.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [scenario] key in every case, dotted into its tables (signals.dcgm_interval_s=30)",
    )
    ap.add_argument("--tick-s", type=float, help="every scenario's tick (the controller's sample period), s")
    ap.add_argument(
        "--trace",
        type=Path,
        metavar="PATH",
        help="every trace-driven tenant's arrivals from this request trace (Azure, BurstGPT, Mooncake or"
        " Qwen-Bailian format), as busy in its busy seconds as the bundled one; before --traces reshapes it",
    )
    ap.add_argument(
        "--fit-trace",
        action="store_true",
        help="with --trace: each tenant's max_model_len and SLO fitted to the trace's prompt lengths",
    )
    ap.add_argument(
        "--alone",
        action="store_true",
        help="also run static with the sensitive tenants alone: what the neighbours added, how much full cured",
    )
    a = ap.parse_args(argv)
    if a.trace is not None:
        try:
            load_request_trace(str(a.trace.resolve()))
        except (OSError, ValueError) as e:
            ap.error(f"--trace: {e}")
        a.trace = a.trace.resolve()
    if a.fit_trace and a.trace is None:
        ap.error("--fit-trace: needs --trace")
    if a.quantiles and a.low_quantiles:
        ap.error("--quantiles and --low-quantiles: choose one (both set the SLO's quantile)")
    if a.tick_s is not None and not 0.1 <= a.tick_s <= 60:
        ap.error("--tick-s: between 0.1 and 60 s")
    policy = _key_values(ap, "--policy", a.policy)
    overlay = _key_values(ap, "--scenario", a.scenario)
    names = [s.name for s in suite()]
    jobs = [(n, k, a.seed, a.duration, policy) for n in names for k in range(a.per)]
    if a.only:
        name, _, case = a.only.partition(":")
        jobs = [(name, int(case), a.seed, a.duration, policy)] if case else [j for j in jobs if j[0] == name]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max(1, a.jobs)) as ex:
        which = [k for k in GENERATORS if getattr(a, k)]
        case = functools.partial(
            run_case,
            exact=a.exact_latency,
            tick_s=a.tick_s,
            which=which,
            overlay=overlay,
            trace=a.trace,
            alone=a.alone,
            fit_trace=a.fit_trace,
        )
        results = list(ex.map(case, jobs))
    worse = [r for r in results if r["problems"]]
    head = "| scenario | case | static p99 ms | static bad | full p99 ms | full bad | others | reconf/h | verdict |"
    print(head + (" alone bad | cured |" if a.alone else ""))
    print("|---" * (11 if a.alone else 9) + "|")
    for r in results:
        s, f = r["static"], r["full"]
        others = f"{f['others']:.3f}" if f["others"] is not None else "-"
        row = (
            f"| {r['scenario']} | {r['case']} | {s['p99_ms']:.1f} | {100 * s['bad']:.2f}% | {f['p99_ms']:.1f} | "
            f"{100 * f['bad']:.2f}% | {others} | {r['reconfigs_per_h']:.2f} | {'WORSE' if r['problems'] else 'ok'} |"
        )
        if a.alone:
            cured = cured_share(r)
            row += f" {100 * r['alone']['bad']:.2f}% | {'-' if cured is None else f'{cured:.0%}'} |"
        print(row)
    for r in worse:
        print(
            f"WORSE {r['scenario']}:{r['case']} [{worse_kind(r)}] ({', '.join(r['perturbation'])}):"
            f" {'; '.join(r['problems'])}"
        )
        for c in r["levers"]:
            print(f"    {lever_line(c, r['duration_s'])}")
        for at, tenant, seconds in r.get("own_restarts", ()):
            print(f"    t={at:.0f} s {tenant} restarted on its own: down {seconds:g} s")
    better = sum(1 for r in results if r["full"]["bad"] < r["static"]["bad"] - 1e-5)
    cuts = [1 - r["full"]["bad"] / r["static"]["bad"] for r in results if r["static"]["bad"] > 0.02]
    print(
        f"{len(results)} cases, {len(worse)} worse than static, {better} better on the share over the SLO; "
        f"median cut where static > 2%: {statistics.median(cuts):.0%} of {len(cuts)}"
        if cuts
        else f"{len(results)} cases, {len(worse)} worse than static, {better} better on the share over the SLO",
    )
    if a.alone:
        shares = [c for c in (cured_share(r) for r in results) if c is not None]
        print(
            f"of what the neighbours added to the share over the SLO (over 2 points in {len(shares)} cases),"
            f" full cured a median {statistics.median(shares):.0%}"
            if shares
            else "the neighbours added over 2 points to the share over the SLO in no case"
        )
    if worse:
        kinds = collections.Counter(worse_kind(r) for r in worse)
        print("worse by first suspect: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
    print(f"({time.perf_counter() - t0:.0f} s wall, {a.jobs} jobs)")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
