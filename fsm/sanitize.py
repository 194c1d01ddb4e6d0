"""Bad numbers in, unavailable out: NaN, infinite or negative readings become None with a counted
reason (never a crash, never a silent zero)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import fields, replace
from functools import cache
from typing import Any

from fsm.observation import GpuSample, HostSample, LatencyWindow, Observation, TenantSample

_INF = float("inf")
_UNIT_FIELDS = {"util", "sm_active", "dram_active", "io_pressure", "cpu_pressure"}


def _bad(value: float, unit: bool) -> str | None:
    if isinstance(value, bool):
        return None
    if not isinstance(value, int | float):
        return "not a number"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "infinite"
    if value < 0:
        return "negative"
    if unit and value > 1.0 + 1e-6:
        return "above 1"
    return None


@cache
def _numeric_fields(cls: Any) -> tuple[tuple[str, bool], ...]:
    hints = {f.name: str(f.type) for f in fields(cls)}
    return tuple(
        (n, n in _UNIT_FIELDS)
        for n, h in hints.items()
        if ("float" in h or h.startswith("int")) and "tuple" not in h and "Mapping" not in h
    )


def _clean(obj: Any, where: str, reasons: Counter[str]) -> Any:
    changes: dict[str, Any] = {}
    for name, unit in _numeric_fields(obj.__class__):
        v = getattr(obj, name)
        # fast path: a finite, non-negative number (and <= 1 for fractions) needs no look
        if v is None or (v.__class__ is float and (0.0 <= v <= 1.0 + 1e-6 if unit else 0.0 <= v < _INF)):
            continue
        why = _bad(v, unit)
        if why:
            reasons[f"{where}.{name}: {why}"] += 1
            changes[name] = None
    return replace(obj, **changes) if changes else obj


def _window(w: LatencyWindow, where: str, reasons: Counter[str]) -> LatencyWindow | None:
    if w.count < 0:
        reasons[f"{where}.count: negative"] += 1
        return None
    w = _clean(w, where, reasons)
    if w.over_slo is not None and w.over_slo > w.count + 1e-9:
        # More requests over the SLO than requests in the window: the source is confused.
        reasons[f"{where}.over_slo: above count"] += 1
        w = replace(w, over_slo=None, over_slo_range=None, over_slo_bucket=None)
    r = w.over_slo_range
    if r is not None and (len(r) != 2 or any(_bad(x, False) for x in r) or r[0] > r[1] + 1e-9 or r[1] > w.count + 1e-9):
        reasons[f"{where}.over_slo_range: not (certain <= possible <= count)"] += 1
        w = replace(w, over_slo_range=None, over_slo_bucket=None)
    bk = w.over_slo_bucket
    if bk is not None and (len(bk) != 2 or any(_bad(x, False) for x in bk) or not bk[0] < bk[1]):
        reasons[f"{where}.over_slo_bucket: not (0 <= lower < upper, finite)"] += 1
        w = replace(w, over_slo_bucket=None)
    if w.samples and any(_bad(s, False) for s in w.samples):
        reasons[f"{where}.samples: NaN, infinite or negative"] += 1
        w = replace(w, samples=tuple(s for s in w.samples if not _bad(s, False)))
    return w


def _map(m: Mapping[str, Any], where: str, reasons: Counter[str]) -> Mapping[str, Any]:
    out = {k: _clean(v, f"{where}.{k}", reasons) for k, v in m.items()}
    return m if all(out[k] is m[k] for k in m) else out


def sanitize(obs: Observation) -> tuple[Observation, Counter[str]]:
    """Return the observation with every bad number replaced by None, and the reasons counted.
    When nothing is wrong the very same object comes back (the common case, kept cheap)."""
    reasons: Counter[str] = Counter()
    tenants: dict[str, TenantSample] = {}
    for name, ts in obs.tenants.items():
        where = f"tenant.{name}"
        t = _clean(ts, where, reasons)
        if t.latency is not None:
            w = _window(t.latency, f"{where}.latency", reasons)
            if w is not t.latency:
                t = replace(t, latency=w)
        if t.io is not None:
            io = _map(t.io, f"{where}.io", reasons)
            if io is not t.io:
                t = replace(t, io=io)
        tenants[name] = t
    gpus: dict[str, GpuSample] = {}
    for name, gs in obs.gpus.items():
        g = _clean(gs, f"gpu.{name}", reasons)
        if g.instances:
            inst = _map(g.instances, f"gpu.{name}.mig", reasons)
            if inst is not g.instances:
                g = replace(g, instances=inst)
        gpus[name] = g
    host = obs.host
    if host is not None:
        block = _rates(host.block_bps, "host.block", reasons)
        nic = _rates(host.nic_bps, "host.nic", reasons)
        irq = _rates(host.irq_rate, "host.irq", reasons)
        if block is not host.block_bps or nic is not host.nic_bps or irq is not host.irq_rate:
            host = HostSample(block_bps=block, nic_bps=nic, irq_rate=irq)
    if not reasons:
        return obs, reasons
    return replace(obs, tenants=tenants, gpus=gpus, host=host), reasons


def _rates(m: Mapping[Any, float], where: str, reasons: Counter[str]) -> Mapping[Any, float]:
    bad = {
        k: why for k, v in m.items() if (v.__class__ is not float or not 0.0 <= v < _INF) and (why := _bad(v, False))
    }
    if not bad:
        return m
    for k, why in bad.items():
        reasons[f"{where}.{k}: {why}"] += 1
    return {k: v for k, v in m.items() if k not in bad}
