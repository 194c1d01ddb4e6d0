"""What every lever shares: the journal, the clock, the GPUs and tenants, where each tenant runs,
the background operations (one asyncio task per target) and the outcomes they report.

The levers (throttles, MPS limits, MIG layouts, moves) each hold their own books and reach the
host through this object; none of them holds a reference to another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actuators.cgroup import Caps, CgroupIO
from actuators.journal import Journal, JournalError
from actuators.launcher import Launcher
from actuators.nvsmi import GiRow, NvidiaSmi, NvsmiError
from fsm.mig import GpuModel, Layout, Slot, model_by_name
from fsm.observation import InstanceRef, Outcome

log = logging.getLogger("tailguard.actuators")

Ready = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class TenantActuation:
    name: str
    cgroup: str | None = None
    home: InstanceRef | None = None
    launcher: Launcher | None = None
    readiness_timeout_s: float = 120.0
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

    @property
    def cg(self) -> CgroupIO:
        if self.cg_io is None:
            self.cg_io = CgroupIO(self.cgroup_root, self.cgroup_version)
        return self.cg_io

    # ------------------------------------------------------------------ bookkeeping

    def outcome(self, target: str, ok: bool, error: str = "") -> None:
        self.outcomes.append(Outcome(target, ok, error, self.clock()))
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
