"""What every lever shares: the journal, the clock, the GPUs and tenants, where each tenant runs,
the background operations (one asyncio task per target) and the outcomes they report.

The levers (throttles, MPS limits, MIG layouts, moves) each hold their own books and reach the
host through this object; none of them holds a reference to another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from actuators.cgroup import Caps, CgroupIO
from actuators.journal import Journal, JournalError
from actuators.launcher import Launcher
from actuators.nvsmi import GiRow, NvidiaSmi, NvsmiError
from fsm.mig import GpuModel, Layout, Slot, model_by_name
from fsm.observation import InstanceRef, Outcome
from fsm.outage import DEFAULT_READINESS_TIMEOUT_S

log = logging.getLogger("tailguard.actuators")
T = TypeVar("T")

Ready = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class TenantActuation:
    name: str
    cgroup: str | None = None
    home: InstanceRef | None = None
    launcher: Launcher | None = None
    readiness_timeout_s: float = DEFAULT_READINESS_TIMEOUT_S
    mps: bool = False


@dataclass(frozen=True, slots=True)
class GpuInfo:
    name: str
    index: int
    model: GpuModel | None = None  # None: ask nvidia-smi -L


@dataclass(frozen=True, slots=True)
class OwnedCap:
    tenant: str
    caps: Caps
    expires_at: float


@dataclass(slots=True)
class ReconcileReport:
    t: float
    dry_run: bool
    ops: list[str] = field(default_factory=list)  # what had to change (planned)
    applied: list[str] = field(default_factory=list)  # done inline
    started: list[str] = field(default_factory=list)  # background targets started
    busy: list[str] = field(default_factory=list)  # targets skipped: an operation still in flight
    errors: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # targets held back by the hands' backoff
    # `run --dry-run`: the host is not touched at all, not even to lift (ReconcileReport.lift)
    hands_off: bool = False

    def merge(self, other: ReconcileReport) -> None:
        for name in ("ops", "applied", "started", "busy", "errors", "deferred"):
            getattr(self, name).extend(getattr(other, name))

    def kept(self, wanted: Iterable[T]) -> set[T]:
        """Of what a lever owns, what this reconcile keeps (the rest is lifted, ReconcileReport.lift):
        the wanted, or nothing in a dry run that may lift."""
        return set() if self.dry_run and not self.hands_off else set(wanted)

    def lift(self, op: str) -> bool:
        """Whether to lift what tailguard set (`op` says what). A dry run of the config's mode (or
        the control topic's, or a pause) does: it holds nothing, since it sets and renews nothing,
        and a limit set before (by an enforcing run, or before the mode was switched) would stay past
        its expiry; the lift is logged as done (the reconciler logs a dry run's plan as what it
        "would" do). `run --dry-run` does not (hands off: it may run beside the enforcing daemon,
        whose journal it reads): planned only."""
        if self.hands_off:
            self.ops.append(op)
            return False
        if self.dry_run:
            log.info("%s (done in a dry run: tailguard holds no limits then)", op)
        else:
            self.ops.append(op)
        return True


@dataclass(frozen=True, slots=True)
class Check:
    """A lever's check started in the background: its report is final once `planned` is done
    (a change it started may still be running)."""

    target: str
    rep: ReconcileReport
    planned: asyncio.Future[None]


@dataclass(slots=True)
class Failing:
    failures: int
    until: float  # no new attempt before this (the hands' clock)
    key: object  # what was being applied: a different desired value is tried at once
    error: str


class Backoff:
    """Per-target exponential backoff for tool-bound levers whose apply keeps failing (an
    nvidia-smi printing garbage must not change layouts on every tick). Independent of the
    decision core's own backoff; a success, or a new desired value, starts afresh."""

    def __init__(self, base_s: float = 5.0, max_s: float = 300.0) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.failing: dict[str, Failing] = {}

    def failed(self, target: str, now: float, key: object, error: str) -> float:
        prev = self.failing.get(target)
        n = prev.failures + 1 if prev is not None and prev.key == key else 1
        delay = min(self.max_s, self.base_s * 2 ** (n - 1)) if self.base_s > 0 else 0.0
        self.failing[target] = Failing(n, now + delay, key, error)
        return delay

    def ok(self, target: str) -> None:
        self.failing.pop(target, None)

    def wait_s(self, target: str, now: float, key: object) -> float:
        """Seconds before `target` may be tried again with `key` (0: now)."""
        f = self.failing.get(target)
        if f is None or f.key != key:
            return 0.0
        return max(0.0, f.until - now)

    def status(self, now: float) -> dict[str, dict[str, Any]]:
        return {
            t: {"failures": f.failures, "retry_in_s": round(max(0.0, f.until - now), 3), "error": f.error}
            for t, f in sorted(self.failing.items())
        }


class Hands:
    def __init__(
        self,
        *,
        cgroup_root: str,
        cgroup_version: str,
        nvsmi: NvidiaSmi,
        gpus: Mapping[str, GpuInfo],
        tenants: Mapping[str, TenantActuation],
        journal: Journal,
        dry_run: bool,
        sys_root: str,
        readiness: Ready | None,
        clock: Callable[[], float],
        backoff: Backoff | None = None,
    ) -> None:
        self.cgroup_root = cgroup_root
        self.cgroup_version = cgroup_version
        self.cg_io: CgroupIO | None = None
        self.nvsmi = nvsmi
        self.gpus = dict(gpus)
        self.tenants = dict(tenants)
        self.journal = journal
        self.dry_run = dry_run
        self.sys_root = sys_root
        self.readiness = readiness
        self.clock = clock
        # Where each tenant with a launcher runs (None: unknown until a move finishes).
        self.placement: dict[str, InstanceRef | None] = {
            n: t.home for n, t in self.tenants.items() if t.launcher is not None
        }
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.outcomes: list[Outcome] = []
        self.backoff = backoff or Backoff()

    @property
    def cg(self) -> CgroupIO:
        if self.cg_io is None:
            self.cg_io = CgroupIO(self.cgroup_root, self.cgroup_version)
        return self.cg_io

    # ------------------------------------------------------------------ bookkeeping

    def outcome(self, target: str, ok: bool, error: str = "", outage_s: float | None = None) -> None:
        self.outcomes.append(Outcome(target, ok, error, self.clock(), outage_s))
        (log.info if ok else log.warning)("%s: %s", target, "ok" if ok else error)

    def in_flight(self, target: str) -> bool:
        t = self.tasks.get(target)
        return t is not None and not t.done()

    def jot(self, kind: str, **fields: Any) -> None:
        """Journal a record that recovery does not depend on; a failure is logged, not fatal."""
        try:
            self.journal.append(kind, **fields)
        except JournalError as e:
            log.error("%s", e)

    # ------------------------------------------------------------------ reading the host

    def tenant_cgroup(self, tenant: str, override: str | None) -> str:
        if override:
            return override
        t = self.tenants.get(tenant)
        if t is None or not t.cgroup:
            raise ValueError(f"tenant {tenant!r} has no cgroup configured")
        return t.cgroup

    async def gpu_model(self, g: GpuInfo) -> GpuModel:
        if g.model is not None:
            return g.model
        for e in await self.nvsmi.list_gpus():
            if e.index == g.index:
                m = model_by_name(e.name)
                self.gpus[g.name] = GpuInfo(g.name, g.index, m)
                return m
        raise NvsmiError(f"{g.name}: nvidia-smi -L lists no GPU {g.index}")

    async def gi_rows(self, g: GpuInfo) -> list[GiRow]:
        return [r for r in await self.nvsmi.lgi(g.index) if r.gpu == g.index]

    async def read_layout(self, gpu: str) -> Layout:
        g = self.gpus[gpu]
        model = await self.gpu_model(g)
        slots = []
        for r in await self.gi_rows(g):
            p = model.profile(r.profile_id)  # by the ID the tool printed; names vary by driver
            slots.append(Slot(r.start, p.name))
        return tuple(sorted(slots))

    async def safe_layout(self, gpu: str) -> Layout | None:
        try:
            return await self.read_layout(gpu)
        except (NvsmiError, KeyError):
            return None


def ref_str(r: InstanceRef | None) -> str | None:
    return str(r) if r is not None else None


def layout_strs(layout: Layout | None) -> list[str] | None:
    return None if layout is None else [str(s) for s in layout]


def fmt_layout(layout: Layout | None) -> str:
    return "unknown" if layout is None else (", ".join(map(str, layout)) or "(empty)")
