"""Per-tenant cgroup I/O and pressure.

v2: `io.stat` lines `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..`.
v1 (and hybrid hosts): `blkio.throttle.io_service_bytes[_recursive]` / `io_serviced[_recursive]`,
lines `MAJ:MIN Read|Write|Sync|Async|Discard|Total N` and a final `Total N`.
PSI (`io.pressure`, `cpu.pressure`): `some avg10=.. avg60=.. avg300=.. total=..`; on a hybrid host
they live in the unified hierarchy (`<root>/unified/<path>`). Formats: the kernel's
Documentation/admin-guide/cgroup-v2.rst and cgroup-v1/blkio-controller.rst.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from controller.signals.base import FileReader, InlineOrThread, ParseError, Unavailable, counter
from controller.signals.procs import Process, ProcessTable, parse_cgroup_procs
from controller.signals.rates import CounterRates
from fsm.observation import IoRate
from schema.jsontext import U64_PATTERN, ascii_digits, fields, shown, text_lines

_DEV = re.compile(r"^[0-9]+:[0-9]+$")


class IoCounters(NamedTuple):  # a tuple: handed to CounterRates.update_many as is
    rbytes: int = 0
    wbytes: int = 0
    rios: int = 0
    wios: int = 0


# The kernel's io.stat line (dbytes/dios since 4.18); \d would take "١" and 5,000 digits, which
# int() refuses past 4,300. Lines with more keys (iocost's cost.*, a later kernel's) take the
# careful path, which also refuses a key given twice (the fast path read the first, it the last).
_C = U64_PATTERN
_N = rf"({_C})"
_IO_STAT_LINE = re.compile(
    rf"^([0-9]+:[0-9]+) rbytes={_N} wbytes={_N} rios={_N} wios={_N}(?: dbytes={_C} dios={_C})?$", re.M
)


_IO_STAT_COUNTERS = frozenset(("rbytes", "wbytes", "rios", "wios", "dbytes", "dios"))
_IO_STAT_OTHER = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?")
# With blkcg_debug_stats on (a module parameter, writable at run time) two keys print no u64:
# blk-cgroup's "use_delay=%d" (iocost sets -1 while a cgroup is in debt) and blk-iolatency's
# "depth=max" (no depth limit). Refused, they made the tenant's whole io.stat unreadable.
_IO_STAT_ODD = {"use_delay": re.compile(r"-?[0-9]{1,10}"), "depth": re.compile(r"max|[0-9]{1,10}")}


def parse_io_stat(text: str, source: str = "io.stat") -> dict[str, IoCounters]:
    fast = _IO_STAT_LINE.findall(text)
    # the kernel writes one "\n"-terminated line per device; anything else takes the careful path
    if len(fast) == text.count("\n") and (not text or text[-1] == "\n"):
        out = {d: IoCounters(int(a), int(b), int(c), int(e)) for d, a, b, c, e in fast}
        if len(out) == len(fast):  # a device given twice: the careful path names its line
            return out
    return _parse_io_stat_lines(text, source)


def _parse_io_stat_lines(text: str, source: str) -> dict[str, IoCounters]:
    out: dict[str, IoCounters] = {}
    for n, line in enumerate(text_lines(text), 1):
        f = fields(line)
        if not f:
            continue
        if not _DEV.match(f[0]):
            raise ParseError(source, n, f"expected MAJ:MIN first, got {f[0][:40]!r}")
        if f[0] in out:  # the kernel writes one line per device: which of the two is it?
            raise ParseError(source, n, f"device {f[0][:40]} twice")
        kv: dict[str, int] = {}
        seen: set[str] = set()
        for tok in f[1:]:
            k, sep, v = tok.partition("=")
            if not sep or not k:
                raise ParseError(source, n, f"expected key=number, got {tok[:40]!r}")
            if k in seen:
                raise ParseError(source, n, f"{shown(k)} twice")
            seen.add(k)
            if k in _IO_STAT_COUNTERS:
                kv[k] = counter(v, source, n, k)
            elif not _IO_STAT_ODD.get(k, _IO_STAT_OTHER).fullmatch(v):
                # not used, but a number: iocost prints the root's "cost.vrate=100.00"
                raise ParseError(source, n, f"{shown(k)} is not a number: {shown(v)}")
        out[f[0]] = IoCounters(kv.get("rbytes", 0), kv.get("wbytes", 0), kv.get("rios", 0), kv.get("wios", 0))
    return out


def parse_blkio_v1(text: str, source: str = "blkio") -> dict[str, tuple[int, int]]:
    """MAJ:MIN -> (Read, Write) from a blkio.throttle.* file."""
    out: dict[str, list[int]] = {}
    seen: set[tuple[str, str]] = set()
    for n, line in enumerate(text_lines(text), 1):
        f = fields(line)
        if not f:
            continue
        if f[0] == "Total" and len(f) == 2 and ascii_digits(f[1]):
            continue
        if len(f) != 3 or not _DEV.match(f[0]) or not ascii_digits(f[2]):
            raise ParseError(source, n, f"expected 'MAJ:MIN OP N', got {line.strip()[:80]!r}")
        if f[1] not in ("Read", "Write", "Sync", "Async", "Discard", "Total"):
            raise ParseError(source, n, f"unknown operation {f[1][:20]!r}")
        v = counter(f[2], source, n, f[1])
        if (f[0], f[1]) in seen:
            raise ParseError(source, n, f"{f[0][:40]} {f[1]} twice")
        seen.add((f[0], f[1]))
        rw = out.setdefault(f[0], [0, 0])
        if f[1] == "Read":
            rw[0] = v
        elif f[1] == "Write":
            rw[1] = v
    return {k: (v[0], v[1]) for k, v in out.items()}


# The kernel's lines (kernel/sched/psi.c, psi_show): "some avg10=%lu.%02lu avg60=%lu.%02lu
# avg300=%lu.%02lu total=%llu", then the same for "full" (cpu.pressure's "full" since 5.13).
# [0-9], not \d: float() reads any script's digits ("١.٠٠"). An average is a share of time, at
# most 100.00; a total of 20 digits takes the careful path, which checks it against 2**64.
_AVG = r"(?:[0-9]{1,2}\.[0-9]{2}|100\.00)"
_PSI_REST = rf"avg60={_AVG} avg300={_AVG} total={_C}\n"
_PSI_FILE = re.compile(rf"some avg10=({_AVG}) {_PSI_REST}(?:full avg10={_AVG} {_PSI_REST})?")
# the careful path's avg: digits '.' digits; float() also took "1_0", "1e1", "10", "+1.0", "inf"
_PSI_AVG = re.compile(r"[0-9]+\.[0-9]+")
_PSI_AVGS = ("avg10", "avg60", "avg300")
_PSI_KINDS = ("some", "full")


def parse_psi(text: str, source: str = "pressure") -> float:
    """`some avg10` as a fraction of time (0..1). The "full" line is not used, but checked: a file
    with garbage in it is no kernel file, and its "some" line may be garbage too."""
    m = _PSI_FILE.fullmatch(text)
    if m is not None:
        return float(m.group(1)) / 100.0
    return _parse_psi_lines(text, source)


def _parse_psi_lines(text: str, source: str) -> float:
    avg10: dict[str, float] = {}
    for n, line in enumerate(text_lines(text), 1):
        f = fields(line)
        if not f:
            continue
        if f[0] not in _PSI_KINDS:
            raise ParseError(source, n, f"expected a 'some' or 'full' line, got {shown(f[0])}")
        if f[0] in avg10:
            raise ParseError(source, n, f"a second {f[0]!r} line")
        seen: dict[str, float] = {}
        for tok in f[1:]:
            k, sep, v = tok.partition("=")
            if not sep:
                raise ParseError(source, n, f"expected key=value, got {shown(tok)}")
            if k in seen:
                raise ParseError(source, n, f"{shown(k)} twice")
            if k in _PSI_AVGS:
                if not _PSI_AVG.fullmatch(v):
                    raise ParseError(source, n, f"{k} is not a number: {shown(v)}")
                x = float(v)
                if x > 100.0:
                    raise ParseError(source, n, f"{k} out of range 0..100: {shown(v)}")
                seen[k] = x
            elif k == "total":
                seen[k] = counter(v, source, n, "total")
            # other keys: none so far; a later kernel's would not change avg10
        if "avg10" not in seen:
            raise ParseError(source, n, f"{f[0]!r} line without avg10=")
        avg10[f[0]] = seen["avg10"]
    if "some" not in avg10:
        raise ParseError(source, None, "no 'some' line")
    return avg10["some"] / 100.0


@dataclass(frozen=True, slots=True)
class CgroupTenant:
    io: Mapping[str, IoRate] | None = None
    io_pressure: float | None = None
    cpu_pressure: float | None = None
    processes: frozenset[Process] | None = None  # read for sensitive tenants: their restarts (procs.py)


@dataclass(frozen=True, slots=True)
class CgroupReading:
    tenants: Mapping[str, CgroupTenant]
    unavailable: Mapping[str, str] = field(default_factory=dict)  # "cgroup:<tenant>[:what]" -> reason


def detect_version(root: str) -> Literal["v1", "v2"]:
    """v2 when the root itself is a cgroup2 mount; anything else (v1, hybrid) reads blkio."""
    return "v2" if os.path.exists(os.path.join(root, "cgroup.controllers")) else "v1"


class CgroupSampler:
    name = "cgroup"

    def __init__(
        self,
        tenants: Mapping[str, str],  # tenant -> cgroup path relative to root
        root: str = "/sys/fs/cgroup",
        version: Literal["auto", "v1", "v2"] = "auto",
        timeout_s: float = 1.0,
        procs_of: Iterable[str] = (),  # tenants whose processes are listed (procs.py: their restarts)
        proc_root: str = "/proc",
    ) -> None:
        self.tenants = dict(tenants)
        self.procs_of = frozenset(procs_of) & set(self.tenants)
        self._procs = ProcessTable(proc_root)
        self.root = root
        self.version = detect_version(root) if version == "auto" else version
        self.timeout_s = timeout_s
        self._rates = CounterRates(max_rate=1e12)
        self._files = FileReader()
        self._runner = InlineOrThread()
        self._dirs: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}
        for tenant, rel in self.tenants.items():
            iodir, psidir = self._paths(rel)
            self._dirs[tenant] = (iodir, tuple((w, os.path.join(psidir, f"{w}.pressure")) for w in ("io", "cpu")))

    def _paths(self, rel: str) -> tuple[str, str]:
        """(directory holding the I/O counters, directory holding PSI)."""
        if self.version == "v2":
            d = os.path.join(self.root, rel)
            return d, d
        unified = os.path.join(self.root, "unified")
        return os.path.join(self.root, "blkio", rel), os.path.join(unified, rel)

    def _read(self, path: str) -> str:
        return self._files.read(path)

    def _io_v2(self, d: str) -> dict[str, IoCounters]:
        p = d + "/io.stat"
        return parse_io_stat(self._read(p), p)

    def _io_v1(self, d: str) -> dict[str, IoCounters]:
        def pick(base: str) -> str:
            rec = os.path.join(d, base + "_recursive")
            return rec if os.path.exists(rec) else os.path.join(d, base)

        pb, pn = pick("blkio.throttle.io_service_bytes"), pick("blkio.throttle.io_serviced")
        b = parse_blkio_v1(self._read(pb), pb)
        n = parse_blkio_v1(self._read(pn), pn)
        return {
            dev: IoCounters(b.get(dev, (0, 0))[0], b.get(dev, (0, 0))[1], n.get(dev, (0, 0))[0], n.get(dev, (0, 0))[1])
            for dev in set(b) | set(n)
        }

    def read(self, now: float) -> CgroupReading:
        out: dict[str, CgroupTenant] = {}
        reasons: dict[str, str] = {}
        seen: set[object] = set()
        for tenant, (iodir, psi_paths) in self._dirs.items():
            io: dict[str, IoRate] | None = None
            try:
                counters = self._io_v2(iodir) if self.version == "v2" else self._io_v1(iodir)
                io = {}
                for dev, c in counters.items():
                    key = (tenant, dev)
                    seen.add(key)
                    io[dev] = IoRate(*self._rates.update_many(key, now, c))
            except (OSError, ParseError) as e:
                reasons[f"cgroup:{tenant}:io"] = _reason(e)
            psi: list[float | None] = []
            for what, p in psi_paths:
                try:
                    psi.append(parse_psi(self._read(p), p))
                except (OSError, ParseError) as e:
                    psi.append(None)
                    reasons[f"cgroup:{tenant}:{what}_pressure"] = _reason(e)
            out[tenant] = CgroupTenant(io, psi[0], psi[1])
        self._rates.forget_missing(seen)
        if self.procs_of:
            self._processes(out, reasons)
        return CgroupReading(out, reasons)

    def _processes(self, out: dict[str, CgroupTenant], reasons: dict[str, str]) -> None:
        listed: dict[str, frozenset[int]] = {}
        for tenant in sorted(self.procs_of):
            p = os.path.join(self._dirs[tenant][0], "cgroup.procs")
            try:
                listed[tenant] = parse_cgroup_procs(self._read(p), p)
            except (OSError, ParseError) as e:
                reasons[f"cgroup:{tenant}:procs"] = _reason(e)
        self._procs.forget(frozenset().union(*listed.values()))
        for tenant, pids in listed.items():
            try:
                procs = self._procs.processes(pids)
            except (OSError, ParseError) as e:  # a bad /proc/PID/stat: this tenant's reason, not the tick's
                reasons[f"cgroup:{tenant}:procs"] = _reason(e)
                continue
            c = out[tenant]
            out[tenant] = CgroupTenant(c.io, c.io_pressure, c.cpu_pressure, procs)

    async def sample(self, now: float) -> CgroupReading | Unavailable:
        return await self._runner.call(self.read, now)


def _reason(e: Exception) -> str:
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    return str(e)
