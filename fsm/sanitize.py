"""Bad numbers in, unavailable out: NaN, infinite or negative readings become None with a counted
reason (never a crash, never a silent zero)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import fields, replace
from functools import cache
from typing import Any

from fsm.observation import GpuSample, HostSample, IoRate, LatencyWindow, MigSample, Observation, TenantSample

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
    if _all_fine(obs):
        return obs, Counter()
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


# -- the common case in bulk ------------------------------------------------------------------------
# An observation of a big host holds ~200 samples and ~1,000 numbers: looking at each from Python
# cost a quarter of a millisecond per tick. _all_fine checks them all at once and says only
# "nothing is wrong" or "look closer": on False, sanitize's field-by-field pass above decides, so
# its reasons and output are unchanged. The numbers are read by plain attribute loads in
# comprehensions (which the interpreter specialises; getattr and attrgetter it does not) and
# checked in one loop per list (_values_fine).

# The numeric fields read below, per class: (plain, fractions). They must be those _numeric_fields
# finds (tests/test_fsm_sanitize_bulk.py checks it); should they ever differ, _all_fine always says
# "look closer" rather than skip a field.
FIELDS_READ: dict[type, tuple[frozenset[str], frozenset[str]]] = {
    TenantSample: (
        frozenset({"throughput", "pcie_bps", "outage_s", "restarted_s", "served_total", "uptime_s"}),
        frozenset({"io_pressure", "cpu_pressure"}),
    ),
    LatencyWindow: (frozenset({"count", "p50", "p99", "p999", "over_slo"}), frozenset()),
    IoRate: (frozenset({"read_bps", "write_bps", "read_iops", "write_iops"}), frozenset()),
    GpuSample: (frozenset({"pcie_tx_bps", "pcie_rx_bps", "pcie_replay_rate"}),
                frozenset({"util", "sm_active", "dram_active"})),
    MigSample: (frozenset(), frozenset({"sm_active", "dram_active"})),
}  # fmt: skip


@cache
def fields_read_match() -> bool:
    """FIELDS_READ names exactly the numeric fields sanitize's field-by-field pass looks at."""
    for cls, (plain, unit) in FIELDS_READ.items():
        fields_ = _numeric_fields(cls)
        if plain != {n for n, u in fields_ if not u} or unit != {n for n, u in fields_ if u}:
            return False
    return True


_UNIT_HI = math.nextafter(1.0 + 1e-6, _INF)  # v < _UNIT_HI exactly when v <= 1 + 1e-6 (a fraction's bound)
_INT_MAX = 1 << 53  # a larger int goes the field-by-field way (one too large for a float raises there)


def _values_fine(vals: list[Any], unit: bool, none_ok: bool = True) -> bool:
    """Every value None (where that is allowed), or a plain finite, non-negative number (<= 1 for
    fractions). One loop with the type test and the chained comparison inline (the interpreter
    specialises both for floats): half the cost of C-level passes for the types, min, max and sum."""
    hi = _UNIT_HI if unit else _INF
    for v in vals:
        if type(v) is float:
            if not 0.0 <= v < hi:  # NaN fails it too
                return False
        elif v is None:
            if not none_ok:
                return False
        elif type(v) is int or type(v) is bool:
            if not 0 <= v < hi or v > _INT_MAX:
                return False
        else:
            return False  # a subclass or another type: the field-by-field pass decides
    return True


def _all_fine(obs: Observation) -> bool:
    """True when sanitize would find nothing wrong; False: look field by field."""
    if not fields_read_match():
        return False
    tenants = list(obs.tenants.values())
    windows = [ts.latency for ts in tenants if ts.latency is not None]
    rates = [r for ts in tenants if ts.io for r in ts.io.values()]
    gpus = list(obs.gpus.values())
    migs = [m for g in gpus if g.instances for m in g.instances.values()]
    for objs, cls in ((tenants, TenantSample), (windows, LatencyWindow), (rates, IoRate), (gpus, GpuSample),
                      (migs, MigSample)):  # fmt: skip
        if objs and set(map(type, objs)) != {cls}:
            return False  # a subclass may hold more numbers
    # One comprehension per field: a tuple per object and an inner loop cost three times as much.
    plain = [t.throughput for t in tenants]
    plain += [t.pcie_bps for t in tenants]
    plain += [t.outage_s for t in tenants]
    plain += [t.restarted_s for t in tenants]
    plain += [t.served_total for t in tenants]
    plain += [t.uptime_s for t in tenants]
    plain += [w.count for w in windows]
    plain += [w.p50 for w in windows]
    plain += [w.p99 for w in windows]
    plain += [w.p999 for w in windows]
    plain += [w.over_slo for w in windows]
    plain += [r.read_bps for r in rates]
    plain += [r.write_bps for r in rates]
    plain += [r.read_iops for r in rates]
    plain += [r.write_iops for r in rates]
    plain += [g.pcie_tx_bps for g in gpus]
    plain += [g.pcie_rx_bps for g in gpus]
    plain += [g.pcie_replay_rate for g in gpus]
    for w in windows:
        if w.samples:
            plain += w.samples
    unit = [t.io_pressure for t in tenants]
    unit += [t.cpu_pressure for t in tenants]
    unit += [g.util for g in gpus]
    unit += [g.sm_active for g in gpus]
    unit += [g.dram_active for g in gpus]
    unit += [m.sm_active for m in migs]
    unit += [m.dram_active for m in migs]
    rates_host: list[Any] = []
    host = obs.host
    if host is not None:  # a host rate may not be None (_rates: "not a number")
        rates_host += host.block_bps.values()
        rates_host += host.nic_bps.values()
        rates_host += host.irq_rate.values()
    if not (_values_fine(plain, False) and _values_fine(unit, True) and _values_fine(rates_host, False, False)):
        return False
    for w in windows:  # the checks of _window beyond the numbers themselves (all numbers are fine here)
        if w.over_slo is not None and w.over_slo > w.count + 1e-9:
            return False
        r = w.over_slo_range
        if r is not None and (
            len(r) != 2 or any(_bad(x, False) for x in r) or r[0] > r[1] + 1e-9 or r[1] > w.count + 1e-9
        ):
            return False
        bk = w.over_slo_bucket
        if bk is not None and (len(bk) != 2 or any(_bad(x, False) for x in bk) or not bk[0] < bk[1]):
            return False
    return True
