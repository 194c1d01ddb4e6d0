"""A policy canary over a fleet's recordings: the current and a candidate policy (each a TOML with
only a [policy] table, laid over each trace's recorded spec), host by host.

Decisions: both policies' shadow replays of what the host recorded (replay/fleet.py): actions per
hour, time at each isolation level, and where the two first differ. Nothing is simulated there.
Simulated outcomes (with from_trace): the host rebuilt from its recording (replay/fromtrace.py) and
run closed-loop through the simulator under each policy: latency and the others' throughput.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from replay.fleet import HostFiles, HostShadow, host_object, shadow_host
from schema.files import read_small_text
from schema.problems import loads_toml


class CanaryError(Exception):
    """A policy file that is not a TOML with only a [policy] table of known keys."""


def load_policy_table(path: str) -> dict[str, Any]:
    from replay.scenario import policy_from, policy_overrides

    try:
        data = loads_toml(read_small_text(path))
    except OSError as e:
        raise CanaryError(f"{path}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise CanaryError(f"{path}: not TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise CanaryError(f"{path}: not UTF-8 text: {e}") from None
    extra = sorted(set(data) - {"policy"})
    if extra or not isinstance(data.get("policy"), dict):
        raise CanaryError(f"{path}: expected only a [policy] table" + (f", found {', '.join(extra)}" if extra else ""))
    try:
        table = policy_overrides(data["policy"], f"{path}: policy")  # as Policy values: "numa" -> Tier.NUMA
        policy_from(table, f"{path}: policy")
    except ValueError as e:
        raise CanaryError(str(e)) from None
    return table


@dataclass(slots=True)
class Outcome:
    """One policy's simulated run of the rebuilt host."""

    p99_ms: float | None
    bad_request_fraction: float | None
    others_work: dict[str, float]  # non-sensitive tenants: work delivered (bytes or SM-seconds)
    actions_per_hour: float


@dataclass(slots=True)
class HostCanary:
    name: str
    current: HostShadow
    candidate: HostShadow
    first_difference: str | None
    simulated: dict[str, Outcome] | None = None
    simulate_error: str | None = None


def _first_difference(a: HostShadow, b: HostShadow) -> str | None:
    for i, (x, y) in enumerate(zip(a.decisions, b.decisions, strict=False)):
        if x != y:
            return (
                f"decision {i + 1}: current t={x[0]:.0f} {x[1]} {x[2]} -> {x[3]}; "
                f"candidate t={y[0]:.0f} {y[1]} {y[2]} -> {y[3]}"
            )
    if len(a.decisions) != len(b.decisions):
        longer, who = (a, "current") if len(a.decisions) > len(b.decisions) else (b, "candidate")
        x = longer.decisions[min(len(a.decisions), len(b.decisions))]
        return f"only {who} acts at t={x[0]:.0f}: {x[1]} {x[2]} -> {x[3]}"
    return None


def canary_host(args: tuple[HostFiles, dict[str, Any], dict[str, Any], bool]) -> HostCanary:
    """One task: both policies' decisions on one host, and with `simulate` both outcomes."""
    hf, cur, cand, simulate = args
    a, b = shadow_host((hf, cur)), shadow_host((hf, cand))
    out = HostCanary(hf.name, a, b, _first_difference(a, b))
    if simulate and a.error is None and b.error is None:
        try:
            out.simulated = {"current": _simulate(hf, cur), "candidate": _simulate(hf, cand)}
        except Exception as e:  # a host that cannot be rebuilt still has its decisions
            out.simulate_error = f"{hf.files[-1]}: {e}"
    return out


def _simulate(hf: HostFiles, table: dict[str, Any]) -> Outcome:
    from replay.fromtrace import estimate, to_toml
    from replay.runner import run_host
    from replay.scenario import parse_scenario
    from replay.trace import read_trace

    observations = []
    header = None
    for f in hf.files:
        header, obs = read_trace(f)
        observations += list(obs)
    assert header is not None
    est = estimate(header, observations)
    sc = parse_scenario(to_toml(est, header.spec, hf.files[-1]), hf.files[-1] + " (rebuilt)")
    policy = replace(header.spec.policy, **table)  # the levers as recorded, the table over them
    run = run_host(sc, 0, "canary", est.duration_s, sc.meta.seed, spec_policy=replace(policy, enforce=True))
    lat = run.latencies
    bad, total = 0, 0
    for n, tl in run.tenant_latencies.items():
        bad += int((tl > run.slo[n]).sum()) + run.rejected.get(n, 0)
        total += run.arrivals.get(n, 0)
    others = {n: float(v) for n, v in run.delivered.items() if run.roles.get(n) != "sensitive"}
    return Outcome(
        p99_ms=round(float(np.quantile(lat, 0.99)) * 1e3, 3) if lat.size else None,
        bad_request_fraction=round(bad / total, 6) if total else None,
        others_work=others,
        actions_per_hour=round(run.actions * 3600.0 / run.duration_s, 3),
    )


def canary_object(h: HostCanary) -> dict[str, Any]:
    return {
        "name": h.name,
        "host": h.current.host,
        "decisions": {
            "current": host_object(h.current),
            "candidate": host_object(h.candidate),
            "first_difference": h.first_difference,
        },
        "simulated_outcomes": None if h.simulated is None else {k: asdict(v) for k, v in h.simulated.items()},
        "simulate_error": h.simulate_error,
    }


def _pct_level(h: HostShadow) -> str:
    total = sum(h.level_s.values())
    if total <= 0:
        return "-"
    return ",".join(f"{k}={100 * v / total:.0f}%" for k, v in h.level_s.items() if k != "steady" and v > 0) or "steady"


def canary_tables(hosts: list[HostCanary]) -> str:
    rows = [["host", "file", "actions/h cur", "actions/h cand", "levels cur", "levels cand", "where they differ"]]
    for h in sorted(hosts, key=lambda h: (h.first_difference is None, h.name)):
        a, b = h.current, h.candidate
        if a.error is not None or b.error is not None:
            who, e = ("current", a.error) if a.error is not None else ("candidate", b.error)
            rows.append([a.host or b.host or "?", h.name, "-", "-", "-", "-", f"FAILED ({who} policy): {e}"])
            continue
        rows.append(
            [
                a.host,
                h.name,
                f"{a.actions_per_hour:.1f}",
                f"{b.actions_per_hour:.1f}",
                _pct_level(a),
                _pct_level(b),
                h.first_difference or "same decisions",
            ]
        )
    text = ["DECISIONS (shadow replay of what each host recorded; nothing simulated):", _grid(rows)]
    sim = [h for h in hosts if h.simulated is not None or h.simulate_error is not None]
    if sim:
        rows = [
            [
                "host",
                "file",
                "p99 ms cur",
                "p99 ms cand",
                "bad req. cur",
                "bad req. cand",
                "actions/h cur",
                "actions/h cand",
            ]
        ]
        for h in sim:
            if h.simulated is None:
                rows.append([h.current.host, h.name, "-", "-", "-", "-", "-", f"FAILED: {h.simulate_error}"])
                continue
            c, d = h.simulated["current"], h.simulated["candidate"]
            rows.append(
                [
                    h.current.host,
                    h.name,
                    _f(c.p99_ms),
                    _f(d.p99_ms),
                    _pct(c.bad_request_fraction),
                    _pct(d.bad_request_fraction),
                    f"{c.actions_per_hour:.1f}",
                    f"{d.actions_per_hour:.1f}",
                ]
            )
        text += [
            "",
            "SIMULATED OUTCOMES (each host rebuilt from its recording by `scenario from-trace` and run through the "
            "simulator under each policy; estimates, not measurements):",
            _grid(rows),
        ]
    return "\n".join(text)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
