"""The declarative reconciler: make the host match a DesiredState, whatever it was before.

A thin coordinator over one part per lever, all over one journal and one recovery:
  actuators/throttles.py   I/O caps (cgroup file writes, inline)
  actuators/mpslimits.py   MPS active-thread limits
  actuators/miglayouts.py  MIG layouts (a background task per GPU)
  actuators/moves.py       tenant moves, warm hand-over (a background task per tenant)
  actuators/recovery.py    read the journal at start, hand each lever what it owned
Each call reads the actual state, diffs it against the desired one, applies the fewest operations
(idempotently: nothing when they already match) and reads back. Every operation writes an intent
to the journal before touching the host and an outcome after; a throttle whose intent cannot be
journaled is not applied (fail safe). Plain values come in: building them from a config file is
the shell's job (controller/actuation.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actuators.cgroup import Caps, CgroupError, CgroupIO
from actuators.hands import Backoff, Check, GpuInfo, Hands, OwnedCap, Ready, ReconcileReport, TenantActuation
from actuators.journal import Journal
from actuators.miglayouts import MigLayouts
from actuators.moves import Moves
from actuators.mps import MpsControl, MpsError
from actuators.mpslimits import MpsLimits
from actuators.nvsmi import NvidiaSmi, NvsmiError
from actuators.paths import PathError
from actuators.recovery import Recovery
from actuators.throttles import Throttles
from fsm.desired import DesiredState
from fsm.mig import GpuModel, Layout, model_by_name
from fsm.observation import ActuationStatus, InstanceRef

__all__ = ["ActualState", "GpuInfo", "OwnedCap", "Ready", "ReconcileReport", "Reconciler", "TenantActuation"]

log = logging.getLogger("tailguard.actuators")


@dataclass(frozen=True, slots=True)
class ActualState:
    throttles: Mapping[tuple[str, str], Caps]  # (cgroup, MAJ:MIN) -> caps, for the tenants' groups
    layouts: Mapping[str, Layout]
    placements: Mapping[str, InstanceRef | None]
    mps: Mapping[str, float]
    errors: tuple[str, ...] = ()


class Reconciler:
    def __init__(
        self,
        *,
        cgroup_root: str = "/sys/fs/cgroup",
        cgroup_version: str = "auto",
        nvidia_smi: str = "nvidia-smi",
        mps_control: str = "nvidia-cuda-mps-control",
        gpus: Mapping[str, int] | None = None,
        gpu_models: Mapping[str, str] | None = None,
        tenants: Mapping[str, TenantActuation] | None = None,
        journal_path: str | Path = "/var/lib/tailguard/journal.jsonl",
        dry_run: bool = False,
        sys_root: str = "/sys",
        tool_timeout: float = 30.0,
        journal_max_bytes: int = 4 << 20,
        readiness: Ready | None = None,
        clock: Callable[[], float] = time.time,
        layout_recheck_s: float = 30.0,
        inline_wait_s: float = 1.0,
        backoff_base_s: float = 5.0,
        backoff_max_s: float = 300.0,
        recovery_concurrency: int = 4,
    ) -> None:
        models = gpu_models or {}
        infos = {n: GpuInfo(n, i, model_by_name(m) if (m := models.get(n)) else None) for n, i in (gpus or {}).items()}
        self.h = Hands(
            cgroup_root=cgroup_root,
            cgroup_version=cgroup_version,
            nvsmi=NvidiaSmi(nvidia_smi, tool_timeout),
            gpus=infos,
            tenants=tenants or {},
            journal=Journal(journal_path, journal_max_bytes, snapshot=self._snapshot),
            dry_run=dry_run,
            sys_root=sys_root,
            readiness=readiness,
            clock=clock,
            backoff=Backoff(backoff_base_s, backoff_max_s),
        )
        self.inline_wait_s = inline_wait_s
        self.recovery_concurrency = max(1, recovery_concurrency)
        self.throttles = Throttles(self.h)
        self.mps = MpsLimits(self.h, MpsControl(mps_control, min(tool_timeout, 10.0)))
        self.layouts = MigLayouts(self.h, layout_recheck_s)
        self.moves = Moves(self.h)
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ the shared parts, by name

    @property
    def journal(self) -> Journal:
        return self.h.journal

    @journal.setter
    def journal(self, j: Journal) -> None:
        self.h.journal = j

    @property
    def clock(self) -> Callable[[], float]:
        return self.h.clock

    @clock.setter
    def clock(self, c: Callable[[], float]) -> None:
        self.h.clock = c

    @property
    def cg(self) -> CgroupIO:
        return self.h.cg

    @property
    def _cg(self) -> CgroupIO | None:
        return self.h.cg_io

    @_cg.setter
    def _cg(self, c: CgroupIO | None) -> None:
        self.h.cg_io = c

    @property
    def nvsmi(self) -> NvidiaSmi:
        return self.h.nvsmi

    @property
    def mpsctl(self) -> MpsControl:
        return self.mps.ctl

    @property
    def gpus(self) -> dict[str, GpuInfo]:
        return self.h.gpus

    @property
    def tenants(self) -> dict[str, TenantActuation]:
        return self.h.tenants

    def configure(self, tenants: Mapping[str, TenantActuation], readiness: Ready | None) -> None:
        """A reloaded config's tenants (cgroups, launchers, homes) and readiness probe, for the next
        operations; one in flight keeps what it started with. A new tenant with a launcher is taken
        to run at its home; where the others run is what the moves found, not the config."""
        h = self.h
        h.tenants = dict(tenants)
        h.readiness = readiness
        for name, t in h.tenants.items():
            if t.launcher is not None and name not in h.placement:
                h.placement[name] = t.home

    @property
    def dry_run(self) -> bool:
        return self.h.dry_run

    @dry_run.setter
    def dry_run(self, d: bool) -> None:
        self.h.dry_run = d

    @property
    def placement(self) -> dict[str, InstanceRef | None]:
        return self.h.placement

    @property
    def owned(self) -> dict[tuple[str, str], OwnedCap]:
        return self.throttles.owned

    @property
    def owned_mps(self) -> dict[str, tuple[int, float]]:
        return self.mps.owned

    @property
    def layout_recheck_s(self) -> float:
        return self.layouts.recheck_s

    @layout_recheck_s.setter
    def layout_recheck_s(self, s: float) -> None:
        self.layouts.recheck_s = s

    @property
    def _tasks(self) -> dict[str, asyncio.Task[None]]:
        return self.h.tasks

    # ------------------------------------------------------------------ status

    def status(self) -> ActuationStatus:
        h = self.h
        done, h.outcomes = h.outcomes, []
        return ActuationStatus(tuple(sorted(k for k, v in h.tasks.items() if not v.done())), tuple(done))

    def recent_outages(self) -> dict[str, list[dict[str, Any]]]:
        """tenant -> recent measured outages of its moves and resizes ({kind, seconds, wall})."""
        return self.moves.recent_outages()

    def outage_seconds(self) -> dict[str, list[float]]:
        """tenant -> recent measured outage seconds, oldest first: the plain figure for a cost model."""
        return {t: [r["seconds"] for r in recs] for t, recs in self.moves.recent_outages().items()}

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait for every background operation (tests, shutdown)."""
        tasks = [t for t in self.h.tasks.values() if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _snapshot(self) -> dict[str, Any]:
        return {
            "throttles": self.throttles.snapshot(),
            "placements": {t: (str(r) if r else None) for t, r in sorted(self.h.placement.items())},
            "mps": self.mps.snapshot(),
            "warm_moves": self.moves.snapshot(),
            "mig_open": self.layouts.snapshot(),
            "outages": self.moves.recent_outages(),
        }

    # ------------------------------------------------------------------ reading the host

    def use_mig_tables(self, tables: Mapping[str, GpuModel]) -> None:
        """The MIG profile table in force per GPU (the driver's listing where read): profile IDs
        and placements are looked up in it from now on."""
        for name, model in tables.items():
            g = self.gpus.get(name)
            if g is not None:
                self.gpus[name] = GpuInfo(g.name, g.index, model)

    async def read_layout(self, gpu: str) -> Layout:
        return await self.h.read_layout(gpu)

    async def mig_uuid(self, ref: InstanceRef) -> str:
        return await self.moves.mig_uuid(ref)

    async def read_actual(self) -> ActualState:
        h = self.h
        errors: list[str] = []
        caps: dict[tuple[str, str], Caps] = {}
        for cg in sorted(self.throttles.groups()):
            try:
                for dev, c in h.cg.read(cg).items():
                    caps[(cg, dev)] = c
            except (CgroupError, PathError) as e:
                errors.append(str(e))
        layouts: dict[str, Layout] = {}
        for name in sorted(h.gpus):
            try:
                layouts[name] = await h.read_layout(name)
            except (NvsmiError, KeyError) as e:
                errors.append(str(e))
        mps: dict[str, float] = {}
        for t, (pid, _) in sorted(self.mps.owned.items()):
            try:
                mps[t] = await self.mps.ctl.get_percentage(pid)
            except MpsError as e:
                errors.append(str(e))
        return ActualState(caps, layouts, dict(h.placement), mps, tuple(errors))

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self, desired: DesiredState) -> ReconcileReport:
        """Throttles inline (file writes); the tool-bound levers (MPS, each GPU's layout, each
        move) in their own background tasks, none waiting on another. Their checks are awaited
        together for at most `inline_wait_s`: a check still running then (a hung nvidia-smi) is
        reported in `busy` and its result comes later through status()."""
        async with self._lock:
            now = self.h.clock()
            rep = ReconcileReport(now, self.h.dry_run or not desired.enforce, hands_off=self.h.dry_run)
            self.throttles.reconcile(desired, now, rep)
            checks: list[Check] = []
            mps = self._start_mps(desired, now, rep)
            if mps is not None:
                checks.append(mps)
            checks += await self.layouts.reconcile(desired, rep)
            await self.moves.reconcile(desired, rep)
            for op in rep.ops:
                log.info("%s%s", "[dry-run] would " if rep.dry_run else "", op)
            if checks:
                await asyncio.wait([c.planned for c in checks], timeout=self.inline_wait_s)
            for c in checks:
                if c.planned.done():
                    rep.merge(c.rep)
                else:
                    rep.busy.append(c.target)
            return rep

    def _start_mps(self, desired: DesiredState, now: float, rep: ReconcileReport) -> Check | None:
        h = self.h
        if not desired.mps and not self.mps.owned:
            return None
        target = "mps"
        if h.in_flight(target):
            rep.busy.append(target)
            return None
        key = tuple(sorted((m.tenant, m.percent) for m in desired.mps if m.expires_at > now))
        wait = h.backoff.wait_s(target, now, key)
        if wait > 0:
            f = h.backoff.failing[target]
            rep.deferred.append(f"{target}: retry in {wait:.0f} s ({f.failures} failures; last: {f.error})")
            return None
        sub = ReconcileReport(rep.t, rep.dry_run, hands_off=rep.hands_off)
        planned: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                await self.mps.reconcile(desired, now, sub)
                if sub.errors:
                    h.backoff.failed(target, h.clock(), key, sub.errors[0])
                else:
                    h.backoff.ok(target)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug must not kill the loop; report it
                log.exception("mps: unexpected error")
                sub.errors.append(f"mps: unexpected error: {e}")
            finally:
                for op in sub.ops:
                    log.info("%s%s", "[dry-run] would " if sub.dry_run else "", op)
                planned.set_result(None)

        h.tasks[target] = asyncio.create_task(run(), name=target)
        return Check(target, sub, planned)

    def backoff_status(self) -> dict[str, dict[str, Any]]:
        """Targets the hands hold back after repeated failures: failures, seconds to the next try,
        the last error."""
        return self.h.backoff.status(self.h.clock())

    # ------------------------------------------------------------------ recovery / shutdown

    async def recover(self) -> dict[str, Any]:
        """Read the journal: lift expired throttles, re-assert valid ones, finish or roll back an
        interrupted MIG change (GPUs concurrently, at most recovery_concurrency at once), forget
        where an interrupted move left its tenant. Never raises on a journal record. Returns (and
        logs) the summary: lifted, reasserted, mig {gpu: result}, moves, errors, skipped (records
        of the wrong shape) and skipped_records (the first 20, as "file:line: ...")."""
        async with self._lock:
            rec = Recovery(self.h, self.throttles, self.mps, self.layouts, self.moves, self.recovery_concurrency)
            return await rec.run(self._snapshot)

    async def shutdown(self, lift_throttles: bool, timeout: float = 60.0) -> None:
        """Let background operations finish (a MIG change is never cut in half on purpose), then
        lift tailguard's caps when asked, and close the journal."""
        await self.wait_idle(timeout)
        for t in self.h.tasks.values():
            if not t.done():
                t.cancel()
        async with self._lock:
            if lift_throttles and not self.h.dry_run:
                now = self.h.clock()
                rep = ReconcileReport(now, False)
                self.throttles.reconcile(DesiredState(t=now), now, rep)
                await self.mps.reconcile(DesiredState(t=now), now, rep)
                for e in rep.errors:
                    log.warning("shutdown: %s", e)
            self.h.journal.close()
