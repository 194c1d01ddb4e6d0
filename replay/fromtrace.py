"""`tailguard scenario from-trace TRACE`: a scenario rebuilt from one recorded host, so a fleet's
recordings give counterfactual outcomes (through the simulator), not only decisions.

What a trace holds (replay/trace.py): the header's HostSpec (topology, tenants, policy) and one
Observation per tick. What is estimated from it, and how:
- topology, tenants' roles, instances, SLOs, devices, cgroups: copied from the spec; each GPU's
  starting MIG layout from the first observation that reports one;
- a sensitive tenant's request rate: its windows' counts over the time they cover;
- its service time, from quiet ticks (no other tenant moving bytes or keeping an SM busy on its GPU):
  the compute seconds per request are its MIG instance's SM activity x tick / requests, the bytes
  per request the GPU's PCIe receive (transmit) rate / request rate;
- the slowdown next to a busy neighbour (compute_coupling): the same per-request compute in ticks
  where neighbours on the GPU were busy, against the quiet value;
- a bulk/compute tenant's flows and schedule: each device it read (wrote) in io.stat is a leg
  device -> cpu (cpu -> device); its GPU's PCIe rate less the sensitive tenants' is cpu -> GPU
  legs of the same rate; its SM activity; on/off windows from the ticks where it moved bytes.
Recorded latency quantiles are never copied: the rebuilt host's latencies come from the simulator.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from fsm.observation import Observation
from fsm.placement import whole_slices
from fsm.spec import HostSpec, Policy, Role
from fsm.topology import NodeKind, Topology
from replay.trace import TraceHeader, read_trace
from schema.jsontext import ascii_digits

ON_FRACTION = 0.05  # a tenant moving more than this share of its typical rate is "on"
MIN_QUIET_TICKS = 5  # the service time: a median over at least this many quiet ticks
MIN_NOISE_TICKS = 10  # the noise's cv: a spread needs more


class FromTraceError(Exception):
    """A trace a scenario cannot be built from (no sensitive tenant, no quiet tick, ...)."""


@dataclass(slots=True)
class Rebuilt:
    """The estimates, for the TOML and for tests."""

    name: str
    tick_s: float
    duration_s: float
    rate: dict[str, float] = field(default_factory=dict)  # sensitive tenant -> requests/s
    compute_ms: dict[str, float] = field(default_factory=dict)  # on its recorded instance
    bytes: dict[str, float] = field(default_factory=dict)  # per request
    d2h_share: dict[str, float] = field(default_factory=dict)
    noise_cv: dict[str, float] = field(default_factory=dict)
    demand_bps: dict[str, float] = field(default_factory=dict)  # bulk/compute: per leg, while on
    legs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    sm_active: dict[str, float] = field(default_factory=dict)
    on: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    compute_coupling: float = 0.0
    layouts: dict[str, list[str]] = field(default_factory=dict)
    assumed: list[str] = field(default_factory=list)
    quiet_ticks: int = 0


def _median(xs: Iterable[float]) -> float | None:
    v = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(v) if v else None


def _slices(profile: str) -> int:
    return int(profile.split("g", 1)[0]) if ascii_digits(profile[:1]) else 1


def estimate(header: TraceHeader, observations: list[Observation], slice_exponent: float = 1.0) -> Rebuilt:
    spec = header.spec
    topo = spec.topology
    if len(observations) < 2:
        raise FromTraceError("the trace holds fewer than 2 observations")
    dts = [b.t - a.t for a, b in itertools.pairwise(observations) if b.t > a.t]
    tick = _median(dts) or 1.0
    t0 = observations[0].t - tick  # the first observation covers the tick before it
    span = observations[-1].t - t0
    out = Rebuilt(header.host, round(tick, 6), round(span, 3))
    # What each observation covers: a daemon that overran its tick (--speed on a loaded machine)
    # observes a longer span, so per-tick figures use each one's own span.
    dt = [tick] + [max(1e-9, b.t - a.t) for a, b in itertools.pairwise(observations)]
    sensitive = [t for t in spec.tenants.values() if t.role is Role.SENSITIVE]
    others = [t for t in spec.tenants.values() if t.role is not Role.SENSITIVE]
    if not sensitive:
        raise FromTraceError("no sensitive tenant in the trace's spec: nothing to rebuild requests for")
    for o in observations:
        for gid, gs in o.gpus.items():
            if gid not in out.layouts and gs.layout is not None:
                out.layouts[gid] = [f"{s.profile}@{s.start}" for s in gs.layout]

    # Per tick: each other tenant's bytes/s on its devices and its instance's SM activity.
    def dev_node(dev: str) -> str | None:
        nid = topo.resolve(dev)
        return nid if nid is not None and topo.node(nid).kind in (NodeKind.NVME, NodeKind.NIC) else None

    io_rate: dict[str, list[float]] = {t.name: [] for t in others}
    for o in observations:
        for t in others:
            ts = o.tenants.get(t.name)
            total = sum(r.total_bps for r in (ts.io or {}).values()) if ts is not None else 0.0
            io_rate[t.name].append(total)
    sm_of = {t.name: [_inst_sm(o, t.instance) for o in observations] for t in others}
    typical = {n: max(v, default=0.0) for n, v in io_rate.items()}
    on_flags: dict[str, list[bool]] = {}
    for t in others:
        io_on = [typical[t.name] > 0 and r > ON_FRACTION * typical[t.name] for r in io_rate[t.name]]
        sm_on = [(s or 0.0) > 0.05 for s in sm_of[t.name]]
        on_flags[t.name] = [a or b for a, b in zip(io_on, sm_on, strict=True)]

    for t in others:
        flags = on_flags[t.name]
        out.on[t.name] = _windows(flags, [o.t for o in observations], tick, t0)
        if not any(flags):
            continue
        # Legs from io.stat: per device, read -> device to cpu, write -> cpu to device.
        legs: list[tuple[str, str]] = []
        per_leg: list[float] = []
        for dev in sorted({d for o in observations for d in ((o.tenants.get(t.name) or _NO).io or {})}):
            rd = [
                ((o.tenants.get(t.name) or _NO).io or {}).get(dev)
                for o, f in zip(observations, flags, strict=True)
                if f
            ]
            reads = _median(r.read_bps or 0.0 for r in rd if r is not None) or 0.0
            writes = _median(r.write_bps or 0.0 for r in rd if r is not None) or 0.0
            nid = dev_node(dev)
            if nid is None:
                out.assumed.append(f"{t.name}: device {dev} is not in the topology; its I/O is left out")
                continue
            if reads > 0:
                legs.append((nid, "cpu"))
                per_leg.append(reads)
            if writes > 0:
                legs.append(("cpu", nid))
                per_leg.append(writes)
        sm = _median(s for s, f in zip(sm_of[t.name], flags, strict=True) if f and s is not None)
        if sm:
            out.sm_active[t.name] = round(min(1.0, sm), 4)
        if per_leg:
            leg = statistics.median(per_leg)
            out.demand_bps[t.name] = leg
            gpu = t.instance.gpu if t.instance is not None else t.gpu
            if gpu is not None:
                # The GPU's PCIe rate less its sensitive tenants' (from their quiet-tick bytes, below),
                # in whole legs of the tenant's rate.
                out.legs[t.name] = legs
                out.legs[t.name + "@gpu"] = [("cpu", gpu)]  # count filled in below
        else:
            out.legs[t.name] = legs

    # Quiet ticks: no other tenant on (no bytes, no SM) anywhere on the host.
    quiet = [i for i in range(len(observations)) if not any(on_flags[t.name][i] for t in others)]
    out.quiet_ticks = len(quiet)
    for s in sensitive:
        counts, covered = 0, 0.0
        for i, o in enumerate(observations):
            ts = o.tenants.get(s.name)
            if ts is not None and ts.latency is not None and ts.instance is not None:
                counts += ts.latency.count
                covered += dt[i]
        if covered <= 0 or counts == 0:
            raise FromTraceError(f"tenant {s.name}: no latency window with requests in the trace")
        rate = counts / covered
        out.rate[s.name] = rate
        if len(quiet) < MIN_QUIET_TICKS:
            raise FromTraceError(
                f"only {len(quiet)} quiet ticks (every other tenant idle); {MIN_QUIET_TICKS} are needed to "
                "estimate the service time"
            )
        inst = s.instance
        if inst is None:
            raise FromTraceError(f"tenant {s.name}: no instance in the spec")
        per_req: list[float] = []
        weights: list[int] = []
        rx_per: list[float] = []
        tx_per: list[float] = []
        for i in quiet:
            o = observations[i]
            ts = o.tenants.get(s.name)
            sm = _inst_sm(o, inst)
            if ts is None or ts.latency is None or ts.latency.count <= 0 or sm is None:
                continue
            n = ts.latency.count
            per_req.append(sm * dt[i] / n)
            weights.append(n)
            g = o.gpus.get(inst.gpu)
            if g is not None:
                r = n / dt[i]
                rx_per.append((g.pcie_rx_bps or 0.0) / r)
                tx_per.append((g.pcie_tx_bps or 0.0) / r)
        if not per_req:
            raise FromTraceError(f"tenant {s.name}: no quiet tick with its instance's SM activity")
        # Medians, not means: a tick the daemon overran covers a longer, uneven span, an outlier here.
        base = statistics.median(per_req)
        out.compute_ms[s.name] = 1e3 * base * _slices(inst.profile) ** slice_exponent
        # Each quiet tick's mean over n requests of a mean-one noise: its spread x sqrt(n) is the noise's
        # cv (the median absolute deviation x 1.4826, a standard deviation that outliers do not move).
        z = [(p - base) / base * math.sqrt(w) for p, w in zip(per_req, weights, strict=True)]
        if len(z) >= MIN_NOISE_TICKS:
            mad = statistics.median(abs(v - statistics.median(z)) for v in z)
            out.noise_cv[s.name] = round(min(3.0, 1.4826 * mad), 4)
        else:
            out.noise_cv[s.name] = 0.2
            out.assumed.append(f"{s.name}: noise_cv 0.2 (too few quiet ticks to estimate it)")
        rx, tx = _median(rx_per) or 0.0, _median(tx_per) or 0.0
        out.bytes[s.name] = rx + tx
        out.d2h_share[s.name] = round(tx / (rx + tx), 4) if rx + tx > 0 else 0.0
        # Coupling: per-request compute next to busy neighbours on the same GPU.
        ratios = []
        for i, o in enumerate(observations):
            if i in quiet:
                continue
            ts = o.tenants.get(s.name)
            sm = _inst_sm(o, inst)
            if ts is None or ts.latency is None or ts.latency.count <= 0 or sm is None:
                continue
            nb = _neighbours(o, inst, whole_slices(spec, inst.gpu))
            if nb > 0.1:
                ratios.append((sm * dt[i] / ts.latency.count / base - 1.0) / nb)
        c = _median(ratios)
        if c is not None:
            out.compute_coupling = max(out.compute_coupling, round(min(1.0, max(0.0, c)), 4))

    # cpu -> GPU legs of each other tenant: its GPU's rate while it is on, less the sensitive ones'.
    for t in others:
        key = t.name + "@gpu"
        if key not in out.legs:
            continue
        gpu = out.legs.pop(key)[0][1]
        extra: list[float] = []
        for i, o in enumerate(observations):
            if not on_flags[t.name][i]:
                continue
            if any(on_flags[u.name][i] for u in others if u.name != t.name and _gpu_of(u) == gpu):
                continue  # another tenant on the same GPU: its bytes cannot be told apart
            g = o.gpus.get(gpu)
            if g is None:
                continue
            total = (g.pcie_rx_bps or 0.0) + (g.pcie_tx_bps or 0.0)
            for s in sensitive:
                if s.instance is not None and s.instance.gpu == gpu:
                    ts = o.tenants.get(s.name)
                    n = ts.latency.count if ts is not None and ts.latency is not None else 0
                    total -= out.bytes[s.name] * n / dt[i]
            extra.append(total)
        legs_to_gpu = round((_median(extra) or 0.0) / out.demand_bps[t.name]) if out.demand_bps[t.name] else 0
        if legs_to_gpu <= 0:
            out.assumed.append(f"{t.name}: no PCIe traffic of its own seen at {gpu}")
        out.legs[t.name] = out.legs[t.name] + [("cpu", gpu)] * legs_to_gpu
    out.assumed += [
        "arrivals are Poisson at the recorded mean rate (a trace holds counts per tick, not arrival times)",
        f"compute scales with MIG slices ** {slice_exponent:g} (a trace sees one instance size per tenant)",
        "the recorded span repeats (schedule period = the trace's span); demand is constant while on",
        "the seed, reconfiguration and relaunch times are the scenario defaults unless the spec has them",
    ]
    return out


_NO = type("_No", (), {"io": None})()


def _gpu_of(t: object) -> str | None:
    inst = getattr(t, "instance", None)
    return inst.gpu if inst is not None else getattr(t, "gpu", None)


def _inst_sm(o: Observation, inst: object) -> float | None:
    if inst is None:
        return None
    g = o.gpus.get(inst.gpu)  # type: ignore[attr-defined]
    if g is None:
        return None
    m = g.instances.get(f"{inst.profile}@{inst.start}")  # type: ignore[attr-defined]
    return None if m is None else m.sm_active


def _neighbours(o: Observation, inst: object, whole: int) -> float:
    """The neighbours' SM load on the GPU, each instance weighted by its share of the GPU's `whole`
    compute slices (7 on A100/H100, 4 on RTX PRO 6000)."""
    g = o.gpus.get(inst.gpu)  # type: ignore[attr-defined]
    if g is None:
        return 0.0
    own = f"{inst.profile}@{inst.start}"  # type: ignore[attr-defined]
    return sum((m.sm_active or 0.0) * _slices(k.split("@")[0]) / whole for k, m in g.instances.items() if k != own)


def _windows(flags: list[bool], ts: list[float], tick: float, t0: float) -> list[tuple[float, float]]:
    """Runs of 'on' ticks as [start, end) seconds from the trace's start (a tick covers (t - tick, t])."""
    out: list[tuple[float, float]] = []
    start: float | None = None
    for f, t in zip(flags, ts, strict=True):
        if f and start is None:
            start = t - tick - t0
        if not f and start is not None:
            out.append((round(start, 3), round(t - tick - t0, 3)))
            start = None
    if start is not None:
        out.append((round(start, 3), round(ts[-1] - t0, 3)))
    return out


# -- the TOML ------------------------------------------------------------------------------------
def _cpus(cpus: tuple[int, ...]) -> str:
    parts, run = [], list[int]()
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _num(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() or abs(x) >= 1e15 else f"{float(x):.1f}"


def to_toml(est: Rebuilt, spec: HostSpec, source: str) -> str:
    lines = [
        f"# Rebuilt by `tailguard scenario from-trace` from {source} (host {est.name}).",
        "# Estimated from the recording (replay/fromtrace.py says how): request rates, service times,",
        "# the aggressors' flows, rates and on/off windows, the neighbours' slowdown. Recorded latency",
        "# quantiles are not copied: this host's latencies come from the simulator.",
        f"# Quiet ticks used for the service time: {est.quiet_ticks}.",
        "# ASSUMED (not in a trace):",
        *[f"#   - {a}" for a in est.assumed],
        "",
        "[scenario]",
        f"name = {_q(est.name + '-from-trace')}",
        f"description = {_q('rebuilt from a recording of ' + est.name)}",
        f"duration_s = {_num(est.duration_s)}",
        f"tick_s = {_num(est.tick_s)}",
        "seed = 1",
        f"compute_coupling = {_num(est.compute_coupling)}",
    ]
    sens = spec.sensitive()
    if sens:
        lines += [f"reconfig_s = {_num(sens[0].reconfig_s)}", f"relaunch_s = {_num(sens[0].relaunch_s)}"]
    pol = _policy_overrides(spec.policy)
    lines += ["", "[policy]", *[f"{k} = {v}" for k, v in pol], "", "[[hosts]]", f"name = {_q(est.name)}", ""]
    lines += _nodes(spec.topology, est.layouts)
    for t in sorted(spec.tenants.values(), key=lambda t: (t.role is not Role.SENSITIVE, t.name)):
        lines += ["[[hosts.tenants]]", f"name = {_q(t.name)}", f"role = {_q(t.role.value)}"]
        if t.instance is not None:
            lines.append(f"instance = {_q(str(t.instance))}")
        if t.cgroup:
            lines.append(f"cgroup = {_q(t.cgroup)}")
        if t.devices:
            lines.append("devices = [" + ", ".join(_q(d) for d in t.devices) + "]")
        if t.role is Role.SENSITIVE:
            lines += [f"slo_ms = {_num((t.slo_s or 0) * 1e3)}", f"quantile = {_num(t.quantile)}"]
            lines += [
                "[hosts.tenants.requests]",
                f"rate = {_num(round(est.rate[t.name], 4))}",
                f"compute_ms = {_num(round(est.compute_ms[t.name], 5))}",
                "slice_exponent = 1.0",
                f"bytes = {_num(round(est.bytes[t.name]))}",
                f"d2h_share = {_num(est.d2h_share[t.name])}",
                f"noise_cv = {_num(est.noise_cv[t.name])}",
            ]
        else:
            legs = est.legs.get(t.name, [])
            if t.name in est.sm_active:
                lines.append(f"sm_active = {_num(est.sm_active[t.name])}")
            if legs and t.name in est.demand_bps:
                lines.append(f"demand_gbps = {_num(round(est.demand_bps[t.name] / 1e9, 6))}")
                lines.append("flows = [")
                lines += [f"  {{ path = [{_q(a)}, {_q(b)}] }}," for a, b in legs]
                lines.append("]")
            on = est.on.get(t.name, [])
            if on:
                wins = ", ".join(f"[{_num(a)}, {_num(b)}]" for a, b in on)
                lines.append(f"schedule = {{ period_s = {_num(est.duration_s)}, on = [{wins}] }}")
        lines.append("")
    return "\n".join(lines)


def _policy_overrides(p: Policy) -> list[tuple[str, str]]:
    base = Policy()
    out = []
    for f in fields(Policy):
        v, d = getattr(p, f.name), getattr(base, f.name)
        if v == d or f.name in ("guards", "placement", "mig", "mps", "enforce"):
            continue
        if isinstance(v, bool):
            out.append((f.name, "true" if v else "false"))
        elif isinstance(v, int | float):
            out.append((f.name, _num(v) if isinstance(v, float) else str(v)))
    return out


def _nodes(topo: Topology, layouts: dict[str, list[str]]) -> list[str]:
    lines: list[str] = []
    # A NUMA group of unknown index (the daemon's readers make one when sysfs knows none) gets an
    # index no other node has: a scenario's NUMA indexes are unique.
    known = {n.numa for n in topo.of_kind(NodeKind.NUMA) if n.numa is not None}
    spare = (i for i in range(len(known) + len(topo.nodes) + 1) if i not in known)
    for n in topo.nodes:
        if n.kind is NodeKind.HOST or n.kind is NodeKind.OTHER:
            continue
        lines += ["[[hosts.nodes]]", f"id = {_q(n.id)}", f"kind = {_q(n.kind.value)}"]
        parent = topo.node(n.parent) if n.parent else None
        if parent is not None and parent.kind is not NodeKind.HOST:
            lines.append(f"parent = {_q(n.id and parent.id)}")
        if n.kind is NodeKind.NUMA:
            lines.append(f"index = {n.numa if n.numa is not None else next(spare)}")
            if n.cpus:
                lines.append(f"cpus = {_q(_cpus(n.cpus))}")
        if n.link_bps:
            lines.append(f"link_gbps = {_num(n.link_bps / 1e9)}")
        if n.model and n.kind is NodeKind.GPU:
            lines.append(f"model = {_q(n.model)}")
        if n.kind is NodeKind.GPU and n.id in layouts:
            lines.append("layout = [" + ", ".join(_q(s) for s in layouts[n.id]) + "]")
        if n.aliases:
            lines.append("aliases = [" + ", ".join(_q(a) for a in n.aliases) + "]")
        lines.append("")
    return lines


def from_trace(path: str) -> tuple[Rebuilt, str]:
    """The estimates and the scenario TOML of one trace file."""
    header, obs = read_trace(path)
    observations = list(obs)
    est = estimate(header, observations)
    return est, to_toml(est, header.spec, path)
