"""Bad numbers in, unavailable out: NaN, infinite or negative readings become None with a counted
reason (never a crash, never a silent zero)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from fsm.observation import GpuSample, HostSample, IoRate, LatencyWindow, MigSample, Observation, TenantSample

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


def _clean(obj: Any, where: str, reasons: Counter[str]) -> Any:
    changes: dict[str, Any] = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, int | float) and not isinstance(v, bool):
            why = _bad(v, f.name in _UNIT_FIELDS)
            if why:
                reasons[f"{where}.{f.name}: {why}"] += 1
                changes[f.name] = None
    return replace(obj, **changes) if changes else obj


def _window(w: LatencyWindow, where: str, reasons: Counter[str]) -> LatencyWindow | None:
    if w.count < 0:
        reasons[f"{where}.count: negative"] += 1
        return None
    w = _clean(w, where, reasons)
    if w.samples and any(_bad(s, False) for s in w.samples):
        reasons[f"{where}.samples: NaN, infinite or negative"] += 1
        w = replace(w, samples=tuple(s for s in w.samples if not _bad(s, False)))
    return w


def _map(m: Mapping[str, Any], where: str, reasons: Counter[str]) -> dict[str, Any]:
    return {k: _clean(v, f"{where}.{k}", reasons) for k, v in m.items()}


def sanitize(obs: Observation) -> tuple[Observation, Counter[str]]:
    reasons: Counter[str] = Counter()
    tenants: dict[str, TenantSample] = {}
    for name, ts in obs.tenants.items():
        where = f"tenant.{name}"
        t = _clean(ts, where, reasons)
        if t.latency is not None:
            t = replace(t, latency=_window(t.latency, f"{where}.latency", reasons))
        if t.io is not None:
            io: dict[str, IoRate] = _map(t.io, f"{where}.io", reasons)
            t = replace(t, io=io)
        tenants[name] = t
    gpus: dict[str, GpuSample] = {}
    for name, gs in obs.gpus.items():
        g = _clean(gs, f"gpu.{name}", reasons)
        if g.instances:
            inst: dict[str, MigSample] = _map(g.instances, f"gpu.{name}.mig", reasons)
            g = replace(g, instances=inst)
        gpus[name] = g
    host = obs.host
    if host is not None:
        host = HostSample(
            block_bps=_rates(host.block_bps, "host.block", reasons),
            nic_bps=_rates(host.nic_bps, "host.nic", reasons),
            irq_rate=_rates(host.irq_rate, "host.irq", reasons),
        )
    if not reasons:
        return obs, reasons
    return replace(obs, tenants=tenants, gpus=gpus, host=host), reasons


def _rates(m: Mapping[Any, float], where: str, reasons: Counter[str]) -> dict[Any, float]:
    out = {}
    for k, v in m.items():
        why = _bad(v, False)
        if why:
            reasons[f"{where}.{k}: {why}"] += 1
        else:
            out[k] = v
    return out
