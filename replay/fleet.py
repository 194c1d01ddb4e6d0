"""Fleet shadow replay: many hosts' recorded traces through the decision core, one task per host.

A PATH is a trace file, a directory of them, or a glob. A recorder rotates `X` to `X.1`, `X.2`, ...
(the higher, the older), so a host's files are X.N, ..., X.1, X in that order, and the controller
state carries across them as if the daemon had run without a break. A host whose trace is bad is
reported with the file and line, and the other hosts complete.

Every figure here is a decision (what the controller would have done on what was recorded) or a
recorded measurement (the share of recorded windows over the SLO); none is a simulated outcome.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

from fsm.decide import decide
from fsm.spec import LEVEL_ORDER, HostSpec, Policy, Role
from fsm.state import ControllerState
from replay.trace import TraceError, read_trace

# TRACE.N, or TRACE.N.gz (.bz2, .xz) where logrotate compressed the part
_ROTATED = re.compile(r"^(?P<base>.+)\.(?P<n>[0-9]+)(?:\.(?:gz|bz2|xz))?$")


class FleetPathError(Exception):
    """A --shadow PATH that names no trace file."""


@dataclass(frozen=True, slots=True)
class HostFiles:
    """One recorder's files, oldest first."""

    name: str  # the base file's name (the host name comes from the trace's header)
    files: tuple[str, ...]


def expand(path: str) -> list[HostFiles]:
    """The hosts under PATH (a file, a directory or a glob), each with its rotated files in order."""
    if os.path.isdir(path):
        found = [os.path.join(path, n) for n in os.listdir(path)]
    elif os.path.isfile(path):
        base = path
        found = [path, *glob.glob(glob.escape(base) + ".*")]
    else:
        found = glob.glob(path)
    # Absolute: a task may run on another node (a Ray cluster) with another working directory.
    files = [os.path.abspath(f) for f in found if os.path.isfile(f) and not os.path.basename(f).startswith(".")]
    if not files:
        raise FleetPathError(f"--shadow {path}: no trace file there (a file, a directory or a glob)")
    groups: dict[str, list[tuple[int, str]]] = {}
    for f in files:
        m = _ROTATED.match(f)
        base, n = (m["base"], int(m["n"])) if m and m["base"] in files else (f, 0)
        groups.setdefault(base, []).append((n, f))
    return [
        HostFiles(os.path.basename(base), tuple(f for _, f in sorted(parts, key=lambda p: -p[0])))
        for base, parts in sorted(groups.items())
    ]


@dataclass(slots=True)
class HostShadow:
    """What the controller would have done on one host's recording (picklable: a task's result)."""

    name: str
    files: tuple[str, ...]
    host: str = ""
    ticks: int = 0
    span_s: float = 0.0
    events: dict[str, int] = field(default_factory=dict)  # kind -> count
    levers: dict[str, int] = field(default_factory=dict)  # lever of each escalation
    final_levels: dict[str, str] = field(default_factory=dict)
    level_s: dict[str, float] = field(default_factory=dict)  # highest level of any sensitive tenant -> seconds
    windows: int = 0  # recorded latency windows of sensitive tenants with enough requests
    windows_over: int = 0  # ... whose recorded quantile was over the tenant's SLO
    cut: list[tuple[str, int]] = field(default_factory=list)  # (file, line) cut short and skipped
    decisions: list[tuple[float, str, str, str, str]] = field(default_factory=list)  # t, tenant, kind, to, lever
    error: str | None = None  # a bad trace: "FILE:LINE: why"
    error_file: str | None = None
    error_line: int | None = None

    @property
    def actions(self) -> int:
        return self.events.get("escalate", 0) + self.events.get("release", 0)

    @property
    def actions_per_hour(self) -> float:
        return self.actions * 3600.0 / self.span_s if self.span_s > 0 else 0.0

    @property
    def over_share(self) -> float | None:
        return self.windows_over / self.windows if self.windows else None


MAX_DECISIONS = 5000  # per host, for the canary's "where the two differ"


def overlay_policy(spec: HostSpec, policy: dict[str, Any] | None) -> HostSpec:
    """The recorded spec with a [policy] table laid over its policy (enforce always off)."""
    pol = spec.policy
    if policy:
        pol = replace(pol, **policy)
    return replace(spec, policy=replace(pol, enforce=False))


def shadow_host(args: tuple[HostFiles, dict[str, Any] | None]) -> HostShadow:
    """One task: every file of one host, in order, through fsm.decide with one carried state."""
    hf, policy = args
    out = HostShadow(hf.name, hf.files)
    state = ControllerState()
    first_t: float | None = None
    prev_t: float | None = None
    prev_level = 0
    level_s: dict[str, float] = {}
    for file in hf.files:

        def cut(line: int, file: str = file) -> None:
            out.cut.append((file, line))

        try:
            header, observations = read_trace(file, cut)
            out.host = out.host or header.host
            spec = overlay_policy(header.spec, policy)
            sensitive = [t for t in spec.tenants.values() if t.role is Role.SENSITIVE]
            for obs in observations:
                d = decide(state, obs, spec)
                state = d.state
                out.ticks += 1
                first_t = obs.t if first_t is None else first_t
                if prev_t is not None and obs.t > prev_t:
                    key = LEVEL_ORDER[prev_level].value
                    level_s[key] = level_s.get(key, 0.0) + obs.t - prev_t
                prev_t = obs.t
                prev_level = max((LEVEL_ORDER.index(c.level) for c in state.tenants.values()), default=0)
                for e in d.events:
                    out.events[e.kind] = out.events.get(e.kind, 0) + 1
                    if e.kind == "escalate":
                        out.levers[e.lever] = out.levers.get(e.lever, 0) + 1
                    if e.kind in ("escalate", "release") and len(out.decisions) < MAX_DECISIONS:
                        out.decisions.append((e.t, e.tenant, e.kind, str(e.level_to), e.lever or ""))
                _count_windows(out, obs, sensitive, spec.policy)
        except TraceError as e:
            out.error, out.error_file, out.error_line = str(e), e.file, e.line
            break
        except (ValueError, TypeError) as e:  # a value the decision core refuses
            out.error, out.error_file = f"{file}: {e}", file
            break
    out.span_s = (prev_t - first_t) if prev_t is not None and first_t is not None else 0.0
    out.final_levels = {n: c.level.value for n, c in sorted(state.tenants.items())}
    out.level_s = {k: round(v, 3) for k, v in sorted(level_s.items())}
    return out


def _count_windows(out: HostShadow, obs: Any, sensitive: list[Any], policy: Policy) -> None:
    for t in sensitive:
        ts = obs.tenants.get(t.name)
        lat = ts.latency if ts is not None else None
        if lat is None or lat.count < policy.min_window_count or t.slo_s is None:
            continue
        q = lat.quantile(t.quantile)
        if q is None:
            continue
        out.windows += 1
        out.windows_over += int(q > t.slo_s)


def worst_first(hosts: list[HostShadow]) -> list[HostShadow]:
    """Failed hosts first, then by the recorded share of windows over the SLO, then actions/h."""
    return sorted(
        hosts,
        key=lambda h: (h.error is None, -(h.over_share or 0.0), -h.actions_per_hour, h.name),
    )


def host_object(h: HostShadow) -> dict[str, Any]:
    return {
        "name": h.name,
        "host": h.host,
        "files": list(h.files),
        "ticks": h.ticks,
        "span_s": round(h.span_s, 3),
        "recorded_windows": h.windows,
        "recorded_over_slo_share": None if h.over_share is None else round(h.over_share, 6),
        "decisions": dict(sorted(h.events.items())),
        "escalations_by_lever": dict(sorted(h.levers.items())),
        "actions_per_hour": round(h.actions_per_hour, 3),
        "seconds_at_level": h.level_s,
        "final_levels": h.final_levels,
        "cut_lines": [f"{f}:{n}" for f, n in h.cut],
        "error": h.error,
    }


def fleet_table(hosts: list[HostShadow]) -> str:
    head = ["host", "file", "hours", "rec. over SLO", "actions/h", "escalations by lever", "final levels"]
    rows = [head]
    for h in worst_first(hosts):
        if h.error is not None:
            rows.append([h.host or "?", h.name, "-", "-", "-", f"FAILED: {h.error}", "-"])
            continue
        share = "n/a" if h.over_share is None else f"{100 * h.over_share:.1f}%"
        levers = ",".join(f"{k}={v}" for k, v in sorted(h.levers.items())) or "-"
        finals = ",".join(f"{k}={v}" for k, v in h.final_levels.items()) or "-"
        rows.append([h.host, h.name, f"{h.span_s / 3600:.2f}", share, f"{h.actions_per_hour:.1f}", levers, finals])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
