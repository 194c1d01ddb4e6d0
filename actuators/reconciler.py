"""The declarative reconciler: make the host match a DesiredState, whatever it was before.

Each call reads the actual state, diffs it against the desired one, applies the fewest operations
(idempotently: nothing when they already match) and reads back. Throttles and MPS limits are quick
file writes / commands and are done inline; MIG layout changes and tenant moves run as background
asyncio tasks (one per target) and report through `status()`. Every operation writes an intent to
the journal before touching the host and an outcome after; a throttle whose intent cannot be
journaled is not applied (fail safe). `recover()` reads the journal at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actuators.blockdev import DeviceError, resolve
from actuators.cgroup import Caps, CgroupError, CgroupGone, CgroupIO
from actuators.journal import Journal, JournalError
from actuators.launcher import CommandLauncher, Launcher, LaunchError, SystemdLauncher
from actuators.migplan import MigPlan, PlanError, plan
from actuators.mps import MpsControl, MpsError
from actuators.nvsmi import GiRow, NvidiaSmi, NvsmiError
from actuators.paths import PathError, confine
from fsm.desired import DesiredState
from fsm.mig import GpuModel, Layout, Slot, model_by_name
from fsm.observation import ActuationStatus, InstanceRef, Outcome

if TYPE_CHECKING:
    from controller.config import Config

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


@dataclass(frozen=True, slots=True)
class ActualState:
    throttles: Mapping[tuple[str, str], Caps]  # (cgroup, MAJ:MIN) -> caps, for the tenants' groups
    layouts: Mapping[str, Layout]
    placements: Mapping[str, InstanceRef | None]
    mps: Mapping[str, float]
    errors: tuple[str, ...] = ()


def _cap(v: float | None, what: str) -> int | None:
    if v is None:
        return None
    if not isinstance(v, int | float) or not math.isfinite(v) or v < 1:
        raise ValueError(f"{what} must be a finite rate of at least 1 byte/s, got {v!r}")
    return round(v)


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
    ) -> None:
        self.cgroup_root = cgroup_root
        self.cgroup_version = cgroup_version
        self._cg: CgroupIO | None = None
        self.nvsmi = NvidiaSmi(nvidia_smi, tool_timeout)
        self.mpsctl = MpsControl(mps_control, min(tool_timeout, 10.0))
        models = gpu_models or {}
        self.gpus = {
            n: GpuInfo(n, i, model_by_name(models[n]) if models.get(n) else None) for n, i in (gpus or {}).items()
        }
        self.tenants = dict(tenants or {})
        self.dry_run = dry_run
        self.sys_root = sys_root
        self.readiness = readiness
        self.clock = clock
        self.journal = Journal(journal_path, journal_max_bytes, snapshot=self._snapshot)
        self.owned: dict[tuple[str, str], OwnedCap] = {}
        self.owned_mps: dict[str, tuple[int, float]] = {}  # tenant -> (server pid, expires_at)
        self.placement: dict[str, InstanceRef | None] = {
            n: t.home for n, t in self.tenants.items() if t.launcher is not None
        }
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._retire: dict[str, tuple[InstanceRef | None, str]] = {}  # warm: the copy still to stop ("": all others)
        self._warm_open: dict[str, dict[str, Any]] = {}  # warm moves not closed in the journal yet
        self._mig_open: dict[str, dict[str, Any]] = {}  # gpu -> MIG intent not closed in the journal yet
        self._outcomes: list[Outcome] = []
        self._lock = asyncio.Lock()
        self._gpu_locks: dict[str, asyncio.Lock] = {}
        # A GPU whose layout was read back equal to the desired one is not read again (one
        # `nvidia-smi mig -lgi` each, ~0.1 s or more) for layout_recheck_s while the desired
        # layout stays the same: drift is still found, within that time, not on every tick.
        self.layout_recheck_s = layout_recheck_s
        self._converged: dict[str, tuple[Layout, float]] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, cfg: Config, **overrides: Any) -> Reconciler:
        tenants: dict[str, TenantActuation] = {}
        for t in cfg.tenants:
            launcher: Launcher | None = None
            timeout = 120.0
            if t.launcher is not None:
                timeout = t.launcher.readiness_timeout_s
                lc = t.launcher
                if lc.kind == "systemd" and lc.unit:
                    launcher = SystemdLauncher(lc.unit, handover=lc.handover, ready_command=lc.ready_command)
                elif lc.command:
                    launcher = CommandLauncher(lc.command, handover=lc.handover, stop_argv=lc.stop_command,
                                               ready_argv=lc.ready_command)  # fmt: skip
            home = InstanceRef.parse(t.instance) if t.instance else None
            tenants[t.name] = TenantActuation(t.name, t.cgroup, home, launcher, timeout, t.mps)
        args: dict[str, Any] = {
            "cgroup_root": cfg.host.cgroup_root,
            "cgroup_version": cfg.host.cgroup_version,
            "gpus": {g.name: g.index for g in cfg.gpus},
            "gpu_models": {g.name: g.model for g in cfg.gpus if g.model},
            "tenants": tenants,
            "journal_path": str(Path(cfg.host.state_dir) / "journal.jsonl"),
            "dry_run": not cfg.enforce,
            "sys_root": cfg.signals.sys_root,
            "readiness": readiness_from_config(cfg),
        }
        args.update(overrides)
        return cls(**args)

    @property
    def cg(self) -> CgroupIO:
        if self._cg is None:
            self._cg = CgroupIO(self.cgroup_root, self.cgroup_version)
        return self._cg

    # ------------------------------------------------------------------ status

    def status(self) -> ActuationStatus:
        done, self._outcomes = self._outcomes, []
        return ActuationStatus(tuple(sorted(k for k, v in self._tasks.items() if not v.done())), tuple(done))

    def _outcome(self, target: str, ok: bool, error: str = "") -> None:
        self._outcomes.append(Outcome(target, ok, error, self.clock()))
        (log.info if ok else log.warning)("%s: %s", target, "ok" if ok else error)

    def _in_flight(self, target: str) -> bool:
        t = self._tasks.get(target)
        return t is not None and not t.done()

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait for every background operation (tests, shutdown)."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # ------------------------------------------------------------------ journal helpers

    def _snapshot(self) -> dict[str, Any]:
        return {
            "throttles": [
                {"cgroup": cg, "dev": dev, "tenant": o.tenant, "rbps": o.caps.rbps, "wbps": o.caps.wbps,
                 "expires_at": o.expires_at}
                for (cg, dev), o in sorted(self.owned.items())
            ],
            "placements": {t: (str(r) if r else None) for t, r in sorted(self.placement.items())},
            "mps": {t: [pid, exp] for t, (pid, exp) in sorted(self.owned_mps.items())},
            "warm_moves": dict(sorted(self._warm_open.items())),
            "mig_open": dict(sorted(self._mig_open.items())),
        }

    def _jot(self, kind: str, **fields: Any) -> None:
        """Journal a record that recovery does not depend on; a failure is logged, not fatal."""
        try:
            self.journal.append(kind, **fields)
        except JournalError as e:
            log.error("%s", e)

    # ------------------------------------------------------------------ reading the host

    def _tenant_cgroup(self, tenant: str, override: str | None) -> str:
        if override:
            return override
        t = self.tenants.get(tenant)
        if t is None or not t.cgroup:
            raise ValueError(f"tenant {tenant!r} has no cgroup configured")
        return t.cgroup

    def use_mig_tables(self, tables: Mapping[str, GpuModel]) -> None:
        """The MIG profile table in force per GPU (the driver's listing where read): profile IDs
        and placements are looked up in it from now on."""
        for name, model in tables.items():
            g = self.gpus.get(name)
            if g is not None:
                self.gpus[name] = GpuInfo(g.name, g.index, model)

    async def _gpu_model(self, g: GpuInfo) -> GpuModel:
        if g.model is not None:
            return g.model
        for e in await self.nvsmi.list_gpus():
            if e.index == g.index:
                m = model_by_name(e.name)
                self.gpus[g.name] = GpuInfo(g.name, g.index, m)
                return m
        raise NvsmiError(f"{g.name}: nvidia-smi -L lists no GPU {g.index}")

    async def _gi_rows(self, g: GpuInfo) -> list[GiRow]:
        return [r for r in await self.nvsmi.lgi(g.index) if r.gpu == g.index]

    async def read_layout(self, gpu: str) -> Layout:
        g = self.gpus[gpu]
        model = await self._gpu_model(g)
        slots = []
        for r in await self._gi_rows(g):
            p = model.profile(r.profile_id)  # by the ID the tool printed; names vary by driver
            slots.append(Slot(r.start, p.name))
        return tuple(sorted(slots))

    async def read_actual(self) -> ActualState:
        errors: list[str] = []
        caps: dict[tuple[str, str], Caps] = {}
        groups = {t.cgroup for t in self.tenants.values() if t.cgroup} | {cg for cg, _ in self.owned}
        for cg in sorted(groups):
            try:
                for dev, c in self.cg.read(cg).items():
                    caps[(cg, dev)] = c
            except (CgroupError, PathError) as e:
                errors.append(str(e))
        layouts: dict[str, Layout] = {}
        for name in sorted(self.gpus):
            try:
                layouts[name] = await self.read_layout(name)
            except (NvsmiError, KeyError) as e:
                errors.append(str(e))
        mps: dict[str, float] = {}
        for t, (pid, _) in sorted(self.owned_mps.items()):
            try:
                mps[t] = await self.mpsctl.get_percentage(pid)
            except MpsError as e:
                errors.append(str(e))
        return ActualState(caps, layouts, dict(self.placement), mps, tuple(errors))

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self, desired: DesiredState) -> ReconcileReport:
        async with self._lock:
            now = self.clock()
            rep = ReconcileReport(now, self.dry_run or not desired.enforce)
            self._reconcile_throttles(desired, now, rep)
            await self._reconcile_mps(desired, now, rep)
            await self._reconcile_layouts(desired, rep)
            await self._reconcile_placements(desired, rep)
            for op in rep.ops:
                log.info("%s%s", "[dry-run] would " if rep.dry_run else "", op)
            return rep

    def _wanted_throttles(self, desired: DesiredState, now: float, rep: ReconcileReport
                          ) -> dict[tuple[str, str], OwnedCap]:  # fmt: skip
        wanted: dict[tuple[str, str], OwnedCap] = {}
        devs: dict[str, str] = {}  # device -> MAJ:MIN, resolved once per reconcile (50 caps: 1 device)
        for th in desired.throttles:
            if th.expires_at <= now:
                continue  # past its expiry: lifted even though someone still lists it
            try:
                cg = self._tenant_cgroup(th.tenant, th.cgroup)
                confine(self.cg.root, cg)
                dev = devs.get(th.device) or devs.setdefault(th.device, resolve(th.device, self.sys_root))
                caps = Caps(_cap(th.read_bps, "read_bps"), _cap(th.write_bps, "write_bps"))
            except (ValueError, PathError, DeviceError, CgroupError) as e:
                rep.errors.append(f"throttle {th.tenant}: {e}")
                self._outcome(f"throttle:{th.tenant}", False, str(e))
                continue
            if caps.empty:
                continue
            prev = wanted.get((cg, dev))
            if prev is not None:  # two caps on one group and device: the tighter one wins
                caps = Caps(_min(prev.caps.rbps, caps.rbps), _min(prev.caps.wbps, caps.wbps))
                th_exp = max(prev.expires_at, th.expires_at)
            else:
                th_exp = th.expires_at
            wanted[(cg, dev)] = OwnedCap(th.tenant, caps, th_exp)
        return wanted

    def _reconcile_throttles(self, desired: DesiredState, now: float, rep: ReconcileReport) -> None:
        try:
            cg_io = self.cg
        except CgroupError as e:
            if desired.throttles or self.owned:
                rep.errors.append(str(e))
            return
        wanted = self._wanted_throttles(desired, now, rep)
        actual: dict[str, dict[str, Caps] | None] = {}
        for cg in {k[0] for k in wanted} | {k[0] for k in self.owned}:
            try:
                actual[cg] = cg_io.read(cg)
            except CgroupGone:
                actual[cg] = None
            except (CgroupError, PathError) as e:
                rep.errors.append(str(e))
                actual[cg] = None
        # Lift what tailguard set and no longer wants (or that expired).
        for key in sorted(set(self.owned) - set(wanted)):
            cg, dev = key
            o = self.owned[key]
            if actual.get(cg) is None:
                rep.ops.append(f"forget cap on {cg} {dev} (group gone)")
                if not rep.dry_run:
                    self.owned.pop(key)
                    self._jot("throttle", phase="done", action="lift", cgroup=cg, dev=dev, tenant=o.tenant,
                              note="group gone")  # fmt: skip
                continue
            why = "expired" if o.expires_at <= now else "no longer wanted"
            rep.ops.append(f"lift cap {o.caps} on {cg} {dev} ({why})")
            if rep.dry_run:
                continue
            # Lifting is the safe direction: done even when the journal cannot be written.
            self._jot("throttle", phase="intent", action="lift", cgroup=cg, dev=dev, tenant=o.tenant)
            try:
                cg_io.lift(cg, dev)
            except CgroupGone:
                pass
            except (CgroupError, PathError) as e:
                rep.errors.append(str(e))
                self._outcome(f"throttle:{o.tenant}", False, str(e))
                continue
            self.owned.pop(key)
            self._jot("throttle", phase="done", action="lift", cgroup=cg, dev=dev, tenant=o.tenant)
            rep.applied.append(f"lifted {cg} {dev}")
            self._outcome(f"throttle:{o.tenant}", True)
        renewed: dict[tuple[str, str], OwnedCap] = {}
        for key, w in sorted(wanted.items()):
            cg, dev = key
            cur = actual.get(cg)
            if cur is None:
                msg = f"cgroup {cg!r} of tenant {w.tenant} does not exist"
                rep.errors.append(msg)
                self._outcome(f"throttle:{w.tenant}", False, msg)
                continue
            have = self.owned.get(key)
            if cur.get(dev, Caps()) == w.caps:
                changed = have is None or have.expires_at != w.expires_at or have.caps != w.caps
                if changed and not rep.dry_run:  # already in place: only the bookkeeping (expiry) changes
                    renewed[key] = w
                continue
            rep.ops.append(f"set cap {w.caps} on {cg} {dev} for {w.tenant} until {w.expires_at:.0f}")
            if rep.dry_run:
                continue
            fields = {"cgroup": cg, "dev": dev, "tenant": w.tenant, "rbps": w.caps.rbps, "wbps": w.caps.wbps,
                      "expires_at": w.expires_at}  # fmt: skip
            try:
                self.journal.append("throttle", phase="intent", action="set", **fields)
            except JournalError as e:
                msg = f"not applied: {e}"  # no new throttle without a journal entry
                rep.errors.append(msg)
                self._outcome(f"throttle:{w.tenant}", False, msg)
                continue
            self.owned[key] = w  # owned from the intent on: recovery lifts it if we die now
            try:
                cg_io.write(cg, dev, w.caps)
            except (CgroupError, PathError) as e:
                rep.errors.append(str(e))
                self._jot("throttle", phase="failed", action="set", error=str(e), **fields)
                self._outcome(f"throttle:{w.tenant}", False, str(e))
                if isinstance(e, CgroupGone):
                    self.owned.pop(key, None)
                continue
            self._jot("throttle", phase="done", action="set", **fields)
            rep.applied.append(f"capped {cg} {dev} {w.caps}")
            self._outcome(f"throttle:{w.tenant}", True)
        if renewed:
            # Caps in place whose expiry moved on (every tick while a guard holds): one fsync'd record
            # for all of them, not one each. Unjournaled, recovery would only lift them sooner.
            try:
                self.journal.append("throttle", phase="renew", action="set", caps=[
                    {"cgroup": cg, "dev": dev, "tenant": w.tenant, "rbps": w.caps.rbps, "wbps": w.caps.wbps,
                     "expires_at": w.expires_at} for (cg, dev), w in renewed.items()])  # fmt: skip
                self.owned.update(renewed)
            except JournalError as e:
                rep.errors.append(str(e))

    # ------------------------------------------------------------------ MPS

    async def _mps_server(self, tenant: str) -> int:
        """The MPS server whose clients include a process of the tenant's cgroup."""
        cg = self._tenant_cgroup(tenant, None)
        procs_file = confine(self.cg.root, cg) / "cgroup.procs"
        try:
            pids = {int(x) for x in procs_file.read_text().split()}
        except OSError as e:
            raise MpsError(f"tenant {tenant}: cannot read {procs_file}: {e.strerror}") from None
        for server in await self.mpsctl.servers():
            if pids & set(await self.mpsctl.clients(server)):
                return server
        raise MpsError(f"tenant {tenant}: no MPS server serves a process of cgroup {cg!r}")

    async def _reconcile_mps(self, desired: DesiredState, now: float, rep: ReconcileReport) -> None:
        wanted = {m.tenant: m for m in desired.mps if m.expires_at > now}
        for tenant in sorted(set(self.owned_mps) - set(wanted)):
            pid, _ = self.owned_mps[tenant]
            rep.ops.append(f"lift MPS limit of {tenant} (server {pid})")
            if rep.dry_run:
                continue
            self._jot("mps", phase="intent", action="lift", tenant=tenant, pid=pid)
            try:
                await self.mpsctl.set_percentage(pid, 100)
            except MpsError as e:
                rep.errors.append(str(e))
                self._outcome(f"mps:{tenant}", False, str(e))
                continue
            self.owned_mps.pop(tenant)
            self._jot("mps", phase="done", action="lift", tenant=tenant, pid=pid)
            self._outcome(f"mps:{tenant}", True)
        for tenant, m in sorted(wanted.items()):
            try:
                pid = await self._mps_server(tenant)
                cur = await self.mpsctl.get_percentage(pid)
            except (MpsError, ValueError, PathError, CgroupError) as e:
                rep.errors.append(str(e))
                self._outcome(f"mps:{tenant}", False, str(e))
                continue
            if abs(cur - m.percent) < 0.5:
                if not rep.dry_run:
                    self.owned_mps[tenant] = (pid, m.expires_at)
                continue
            rep.ops.append(f"set MPS limit {m.percent}% on {tenant} (server {pid})")
            if rep.dry_run:
                continue
            try:
                self.journal.append("mps", phase="intent", action="set", tenant=tenant, pid=pid,
                                    percent=m.percent, expires_at=m.expires_at)  # fmt: skip
            except JournalError as e:
                rep.errors.append(f"not applied: {e}")
                self._outcome(f"mps:{tenant}", False, f"not applied: {e}")
                continue
            self.owned_mps[tenant] = (pid, m.expires_at)
            try:
                await self.mpsctl.set_percentage(pid, m.percent)
            except MpsError as e:
                rep.errors.append(str(e))
                self._outcome(f"mps:{tenant}", False, str(e))
                continue
            self._jot("mps", phase="done", action="set", tenant=tenant, pid=pid, percent=m.percent,
                      expires_at=m.expires_at)  # fmt: skip
            self._outcome(f"mps:{tenant}", True)

    # ------------------------------------------------------------------ MIG layouts

    def _gpu_lock(self, gpu: str) -> asyncio.Lock:
        return self._gpu_locks.setdefault(gpu, asyncio.Lock())

    def _occupied(self, gpu: str, exclude: set[str] = frozenset()) -> dict[Slot, str]:  # type: ignore[assignment]
        """Instances tailguard knows a tenant runs on (never destroyed under it)."""
        occ: dict[Slot, str] = {}
        for t, ref in self.placement.items():
            if ref is not None and ref.gpu == gpu and t not in exclude:
                occ[ref.slot] = t
        for name, spec in self.tenants.items():
            if name not in self.placement and spec.home is not None and spec.home.gpu == gpu:
                occ[spec.home.slot] = name
        return occ

    async def _reconcile_layouts(self, desired: DesiredState, rep: ReconcileReport) -> None:
        for gpu, want in sorted(desired.layouts.items()):
            target = f"gpu:{gpu}"
            if gpu not in self.gpus:
                rep.errors.append(f"{target}: unknown GPU (not in [[gpus]])")
                continue
            if self._in_flight(target):
                rep.busy.append(target)
                continue
            seen = self._converged.get(gpu)
            now = self.clock()
            if seen is not None and seen[0] == tuple(want) and 0 <= now - seen[1] < self.layout_recheck_s:
                continue
            try:
                g = self.gpus[gpu]
                model = await self._gpu_model(g)
                actual = await self.read_layout(gpu)
                p = plan(gpu, model, actual, want)
            except (NvsmiError, PlanError, KeyError) as e:
                self._converged.pop(gpu, None)
                rep.errors.append(str(e))
                self._outcome(target, False, str(e))
                continue
            if p.empty:
                self._converged[gpu] = (tuple(want), now)
                continue
            self._converged.pop(gpu, None)
            moving = {t for t, ref in desired.placements.items()}
            occ = self._occupied(gpu, exclude=moving)
            blocked = [f"{s} (tenant {occ[s]})" for s in p.destroy if s in occ]
            if blocked:
                msg = f"{target}: will not destroy instances in use: {', '.join(blocked)}"
                rep.errors.append(msg)
                self._outcome(target, False, msg)
                continue
            rep.ops.extend(p.ops())
            if rep.dry_run:
                continue
            rep.started.append(target)
            self._tasks[target] = asyncio.create_task(self._run_layout(p, model), name=target)

    async def _run_layout(self, p: MigPlan, model: GpuModel) -> None:
        target = f"gpu:{p.gpu}"
        try:
            async with self._gpu_lock(p.gpu):
                try:
                    intent = self.journal.append("mig", phase="intent", gpu=p.gpu, before=[str(s) for s in p.before],
                                                 after=[str(s) for s in p.after])  # fmt: skip
                except JournalError as e:
                    self._outcome(target, False, f"not applied: {e}")
                    return
                # Open until its done/failed record: a rotation in between (its step records can
                # trigger one) carries it in the new file's snapshot, or recovery would miss it.
                self._mig_open[p.gpu] = intent
                err = await self._apply_plan(p, model)
                if err:
                    # Roll back to the layout we started from, so it is never left in between.
                    rb_err = await self._converge(p.gpu, model, p.before)
                    now = await self._safe_layout(p.gpu)
                    note = "rolled back" if not rb_err else f"rollback failed ({rb_err}); layout now {_fmt(now)}"
                    self._jot("mig", phase="failed", gpu=p.gpu, error=err, layout=_strs(now))
                    self._mig_open.pop(p.gpu, None)
                    self._outcome(target, False, f"{err}; {note}")
                    return
                now = await self._safe_layout(p.gpu)
                ok = now == p.after
                self._jot("mig", phase="done" if ok else "failed", gpu=p.gpu, layout=_strs(now))
                self._mig_open.pop(p.gpu, None)
                self._outcome(target, ok, "" if ok else f"read back {_fmt(now)}, expected {_fmt(p.after)}")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not kill the loop; report it
            log.exception("%s: unexpected error", target)
            self._outcome(target, False, f"unexpected error: {e}")

    async def _safe_layout(self, gpu: str) -> Layout | None:
        try:
            return await self.read_layout(gpu)
        except (NvsmiError, KeyError):
            return None

    async def _apply_plan(self, p: MigPlan, model: GpuModel) -> str:
        """Run the steps; '' on success, else the first error (the caller rolls back)."""
        g = self.gpus[p.gpu]
        try:
            rows = await self._gi_rows(g)
        except NvsmiError as e:
            return str(e)
        by_slot = {Slot(r.start, model.profile(r.profile_id).name): r.gi for r in rows}
        for s in p.destroy:
            gi = by_slot.get(s)
            if gi is None:
                continue  # already gone: idempotent
            try:
                await self.nvsmi.destroy_ci(g.index, gi)
                await self.nvsmi.destroy_gi(g.index, gi)
            except NvsmiError as e:
                # "In use by another client" is reported, never retried blindly.
                return str(e)
            self._jot("mig", phase="step", gpu=p.gpu, op=f"destroy {s}", gi=gi)
        for s in p.create:
            prof = model.profile(s.profile)
            try:
                gi, _ = await self.nvsmi.create_gi(g.index, prof.lgip_id, s.start)
            except NvsmiError as e:
                return str(e)
            self._jot("mig", phase="step", gpu=p.gpu, op=f"create {s}", gi=gi)
        return ""

    async def _converge(self, gpu: str, model: GpuModel, want: Layout) -> str:
        """Bring a GPU to `want` from wherever it is now ('' on success)."""
        try:
            cur = await self.read_layout(gpu)
            # A GI without its compute instance (a create or destroy cut short) is finished first.
            await self._repair_cis(gpu)
            p = plan(gpu, model, cur, want)
        except (NvsmiError, PlanError, KeyError) as e:
            return str(e)
        return await self._apply_plan(p, model) if not p.empty else ""

    async def _repair_cis(self, gpu: str) -> None:
        g = self.gpus[gpu]
        gis = {r.gi for r in await self._gi_rows(g)}
        cis = {c.gi for c in await self.nvsmi.lci(g.index) if c.gpu == g.index}
        for gi in sorted(gis - cis):
            await self.nvsmi.destroy_gi(g.index, gi)  # half-made: destroy, the plan recreates it

    # ------------------------------------------------------------------ tenant moves

    async def _reconcile_placements(self, desired: DesiredState, rep: ReconcileReport) -> None:
        for tenant, spec in sorted(self.tenants.items()):
            if spec.launcher is None:
                if tenant in desired.placements:
                    rep.errors.append(f"tenant:{tenant}: no launcher configured, cannot move it")
                continue
            want = desired.placements.get(tenant, spec.home)
            target = f"tenant:{tenant}"
            if tenant in self._retire and not self._in_flight(target) and not rep.dry_run:
                # A warm move left two copies running: stop the old one again (in the background:
                # a hung systemctl must not stall the tick); moves wait for it.
                rep.ops.append(f"stop the old copy of {tenant}")
                rep.started.append(target)
                self._tasks[target] = asyncio.create_task(self._retire_old(tenant, spec), name=target)
                continue
            if want is None or self.placement.get(tenant) == want:
                continue
            if self._in_flight(target):
                rep.busy.append(target)
                continue
            if want.gpu not in self.gpus:
                rep.errors.append(f"{target}: instance {want} is on an unknown GPU")
                continue
            rep.ops.append(f"move {tenant} from {self.placement.get(tenant)} to {want}")
            if rep.dry_run:
                continue
            rep.started.append(target)
            self._tasks[target] = asyncio.create_task(self._run_move(tenant, spec, want), name=target)

    async def mig_uuid(self, ref: InstanceRef) -> str:
        """The MIG device UUID of the instance at `ref`. nvidia-smi -L lists a GPU's MIG devices in
        ascending (GI id, CI id) order (every capture in fixtures/ agrees); legacy UUIDs carry the ids."""
        g = self.gpus[ref.gpu]
        model = await self._gpu_model(g)
        rows = await self._gi_rows(g)
        gi = next((r.gi for r in rows if r.start == ref.start and model.profile(r.profile_id).name ==
                   model.profile(ref.profile).name), None)  # fmt: skip
        if gi is None:
            raise NvsmiError(f"no MIG instance {ref} on GPU {g.index}")
        cis = sorted((c.gi, c.ci) for c in await self.nvsmi.lci(g.index) if c.gpu == g.index)
        entry = next((e for e in await self.nvsmi.list_gpus() if e.index == g.index), None)
        if entry is None:
            raise NvsmiError(f"nvidia-smi -L lists no GPU {g.index}")
        for dev in entry.mig:
            if dev.uuid.startswith("MIG-GPU-"):
                parts = dev.uuid.split("/")
                if len(parts) == 3 and parts[1] == str(gi):
                    return dev.uuid
        if len(cis) != len(entry.mig):
            raise NvsmiError(f"GPU {g.index}: -L shows {len(entry.mig)} MIG devices but -lci {len(cis)}")
        for (cgi, _), dev in zip(cis, entry.mig, strict=True):
            if cgi == gi:
                return dev.uuid
        raise NvsmiError(f"MIG instance {ref} (GI {gi}) has no compute instance")

    async def _run_move(self, tenant: str, spec: TenantActuation, to: InstanceRef) -> None:
        target = f"tenant:{tenant}"
        frm = self.placement.get(tenant)
        assert spec.launcher is not None
        try:
            # A layout change on the target GPU may be creating the instance: wait for it.
            lt = self._tasks.get(f"gpu:{to.gpu}")
            if lt is not None and not lt.done():
                await asyncio.wait([lt])
            if spec.launcher.handover == "warm":
                await self._run_warm_move(tenant, spec, frm, to)
                return
            try:
                self.journal.append("move", phase="intent", tenant=tenant, frm=_ref(frm), to=str(to))
            except JournalError as e:
                self._outcome(target, False, f"not applied: {e}")
                return
            err = await self._launch_ready(tenant, spec, to)
            if not err:
                self.placement[tenant] = to
                self._jot("move", phase="done", tenant=tenant, at=str(to))
                self._outcome(target, True)
                return
            # Move back where it was and report the failure.
            back = ""
            if frm is not None:
                back_err = await self._launch_ready(tenant, spec, frm)
                back = "; moved back" if not back_err else f"; moving back failed too: {back_err}"
                self.placement[tenant] = frm if not back_err else None
            self._jot("move", phase="failed", tenant=tenant, error=err + back, at=_ref(self.placement.get(tenant)))
            self._outcome(target, False, err + back)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("%s: unexpected error", target)
            self._outcome(target, False, f"unexpected error: {e}")

    async def _run_warm_move(
        self, tenant: str, spec: TenantActuation, frm: InstanceRef | None, to: InstanceRef
    ) -> None:
        """Make before break: start a copy on `to` while the old one serves, wait for the new copy's
        readiness, then stop the old one; a copy that never gets ready is stopped, the old kept.
        Journal: intent (new copy may be starting) -> switched (new serves; old may be stopping) ->
        done / failed, so recovery knows which of the two copies to keep (see recover())."""
        target = f"tenant:{tenant}"
        launcher = spec.launcher
        assert launcher is not None
        try:
            new = await self.mig_uuid(to)
            old = await self.mig_uuid(frm) if frm is not None else None
        except (NvsmiError, KeyError) as e:
            self._outcome(target, False, str(e))
            return
        rec: dict[str, Any] = {"handover": "warm", "tenant": tenant, "frm": _ref(frm), "to": str(to), "new": new,
                               "old": old}  # fmt: skip
        try:
            self.journal.append("move", phase="intent", **rec)
        except JournalError as e:
            self._outcome(target, False, f"not applied: {e}")
            return
        self._warm_open[tenant] = {**rec, "phase": "intent"}
        err = await self._copy_ready(tenant, spec, to, new)
        if not err:
            # The new copy serves from here on: journal that before the old one is touched (recovery
            # keeps the new copy from this record on, the old one before it).
            try:
                self.journal.append("move", phase="switched", **rec)
            except JournalError as e:
                err = f"cannot journal the switch: {e}"
        if err:
            self.placement[tenant] = frm
            self._retire[tenant] = (to, new)
            stop_err = await self._stop_old(tenant, spec)
            note = "; new copy stopped, old copy kept" if not stop_err else f"; {stop_err} (the new copy)"
            self._retire_done(tenant, stop_err, "failed", err + note)
            self._outcome(target, False, err + note)
            return
        self._warm_open[tenant] = {**rec, "phase": "switched"}
        self.placement[tenant] = to
        self._retire[tenant] = (frm, old or "")
        self._retire_done(tenant, await self._stop_old(tenant, spec))
        self._outcome(target, True)

    async def _stop_old(self, tenant: str, spec: TenantActuation) -> str:
        """Stop the copies a warm move left behind ('' when none is left)."""
        launcher = spec.launcher
        assert launcher is not None
        frm, old = self._retire[tenant]
        new = self.placement.get(tenant)
        try:
            if old:
                await launcher.stop_copy(tenant, frm, old)
                return ""
            # Where it ran before is unknown: stop every copy but the new one, when they can be listed.
            keep = await self.mig_uuid(new) if new is not None else ""
            others = await launcher.other_copies(tenant, keep) if keep else None
            if others is None:
                return "the old copy is unknown and this launcher cannot list copies: not stopped"
            for u in others:
                await launcher.stop_copy(tenant, None, u)
            return ""
        except (LaunchError, NvsmiError, KeyError) as e:
            return f"stopping the old copy failed: {e}"

    def _retire_done(self, tenant: str, err: str, phase: str = "done", note: str = "") -> None:
        """Close a warm move in the journal once only the kept copy runs."""
        if err:  # two copies run: retried at the next reconcile, and by recovery after a restart
            log.warning("tenant:%s: %s", tenant, err)
            return
        self._retire.pop(tenant, None)
        self._warm_open.pop(tenant, None)
        extra = {"note": note} if note else {}
        self._jot("move", phase=phase, tenant=tenant, at=_ref(self.placement.get(tenant)), **extra)

    async def _retire_old(self, tenant: str, spec: TenantActuation) -> None:
        try:
            self._retire_done(tenant, await self._stop_old(tenant, spec), note="old copy stopped on retry")
        except Exception:
            log.exception("tenant:%s: unexpected error", tenant)

    async def _copy_ready(self, tenant: str, spec: TenantActuation, ref: InstanceRef, uuid: str) -> str:
        """Start a copy on `ref` and wait for that copy's readiness: the launcher's per-copy check
        (systemd is-active, ready_command), else the tenant's latency source (which the old copy
        may answer too: docs/actuators.md)."""
        launcher = spec.launcher
        assert launcher is not None
        try:
            await launcher.start_copy(tenant, ref, uuid)
        except LaunchError as e:
            return str(e)
        deadline = time.monotonic() + spec.readiness_timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                ok = await launcher.copy_ready(tenant, ref, uuid)
                if ok is None:
                    ok = self.readiness is None or await self.readiness(tenant)
                if ok:
                    return ""
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        return f"new copy of {tenant} not ready on {ref} within {spec.readiness_timeout_s:g} s"

    async def _launch_ready(self, tenant: str, spec: TenantActuation, ref: InstanceRef) -> str:
        assert spec.launcher is not None
        try:
            uuid = await self.mig_uuid(ref)
            await spec.launcher.launch(tenant, ref, uuid)
        except (NvsmiError, LaunchError, KeyError) as e:
            return str(e)
        if self.readiness is None:
            return ""
        deadline = time.monotonic() + spec.readiness_timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if await self.readiness(tenant):
                    return ""
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        return f"{tenant} not ready on {ref} within {spec.readiness_timeout_s:g} s"

    # ------------------------------------------------------------------ recovery / shutdown

    async def recover(self) -> dict[str, Any]:
        """Read the journal: lift expired throttles, re-assert valid ones, finish or roll back an
        interrupted MIG change, forget where an interrupted move left its tenant. Logs a summary."""
        async with self._lock:
            now = self.clock()
            summary: dict[str, Any] = {"lifted": [], "reasserted": [], "mig": {}, "moves": [], "errors": []}
            for rec in self.journal.tail_from_snapshot():
                self._replay(rec, summary)
            dry = self.dry_run
            for key, o in sorted(self.owned.items()):
                cg, dev = key
                if dry:
                    continue
                try:
                    if o.expires_at <= now:
                        self.cg.lift(cg, dev)
                        self.owned.pop(key)
                        summary["lifted"].append(f"{cg} {dev}")
                    else:
                        self.cg.write(cg, dev, o.caps)
                        summary["reasserted"].append(f"{cg} {dev} {o.caps}")
                except CgroupGone:
                    self.owned.pop(key)
                    summary["lifted"].append(f"{cg} {dev} (group gone)")
                except (CgroupError, PathError) as e:
                    summary["errors"].append(str(e))
            for tenant, (pid, exp) in sorted(self.owned_mps.items()):
                if exp <= now and not dry:
                    try:
                        await self.mpsctl.set_percentage(pid, 100)
                        self.owned_mps.pop(tenant)
                    except MpsError as e:
                        summary["errors"].append(str(e))
            for gpu, rec in sorted(self._mig_open.items()):  # a copy: _recover_mig closes them
                summary["mig"][gpu] = await self._recover_mig(gpu, rec) if not dry else "dry-run: left as is"
            for tenant, rec in sorted(self._warm_open.items()):
                summary["moves"].append(await self._recover_warm(tenant, rec, dry))
            if not dry:
                try:
                    self.journal.append("recovery", summary=summary)
                    self.journal.append("snapshot", state=self._snapshot())
                except JournalError as e:
                    summary["errors"].append(str(e))
            log.info("recovery: %s", summary)
            return summary

    def _replay(self, rec: dict[str, Any], summary: dict[str, Any]) -> None:
        kind, phase = rec.get("kind"), rec.get("phase")
        try:
            if kind == "snapshot":
                st = rec.get("state", {})
                self.owned = {
                    (t["cgroup"], t["dev"]): OwnedCap(t["tenant"], Caps(t["rbps"], t["wbps"]), float(t["expires_at"]))
                    for t in st.get("throttles", [])
                }
                for t, r in st.get("placements", {}).items():
                    if t in self.placement:
                        self.placement[t] = InstanceRef.parse(r) if r else None
                self.owned_mps = {t: (int(v[0]), float(v[1])) for t, v in st.get("mps", {}).items()}
                self._warm_open = {t: dict(r) for t, r in st.get("warm_moves", {}).items() if t in self.placement}
                self._mig_open = {g: dict(r) for g, r in st.get("mig_open", {}).items()}
            elif kind == "throttle" and phase == "renew":
                for t in rec["caps"]:
                    caps = Caps(t.get("rbps"), t.get("wbps"))
                    self.owned[(t["cgroup"], t["dev"])] = OwnedCap(t.get("tenant", ""), caps, float(t["expires_at"]))
            elif kind == "throttle":
                key = (rec["cgroup"], rec["dev"])
                if rec.get("action") == "set" and phase in ("intent", "done", "failed"):
                    caps = Caps(rec.get("rbps"), rec.get("wbps"))
                    self.owned[key] = OwnedCap(rec.get("tenant", ""), caps, float(rec["expires_at"]))
                elif rec.get("action") == "lift" and phase == "done":
                    self.owned.pop(key, None)
            elif kind == "mps":
                if rec.get("action") == "set" and phase in ("intent", "done"):
                    self.owned_mps[rec["tenant"]] = (int(rec["pid"]), float(rec["expires_at"]))
                elif rec.get("action") == "lift" and phase == "done":
                    self.owned_mps.pop(rec["tenant"], None)
            elif kind == "mig":
                if phase == "intent":
                    self._mig_open[rec["gpu"]] = rec
                elif phase in ("done", "failed"):
                    self._mig_open.pop(rec["gpu"], None)
            elif kind == "move":
                t = rec["tenant"]
                if t in self.placement:
                    if rec.get("handover") == "warm" and phase in ("intent", "switched"):
                        self._warm_open[t] = dict(rec)  # recover() decides which copy stays
                    elif phase == "intent":
                        self.placement[t] = None  # unknown until the move finishes
                    elif phase in ("done", "failed"):
                        self._warm_open.pop(t, None)
                        self.placement[t] = InstanceRef.parse(rec["at"]) if rec.get("at") else None
        except (KeyError, TypeError, ValueError) as e:
            summary["errors"].append(f"journal record {rec.get('seq')}: {e}")

    async def _recover_warm(self, tenant: str, rec: dict[str, Any], dry: bool) -> str:
        """An interrupted warm move: before its "switched" record the old copy is kept and the new
        one stopped (it may be starting, or ready but never switched to); from it on the new copy is
        kept and the old one stopped. Stops are idempotent, so exactly one copy is left running."""
        frm = InstanceRef.parse(rec["frm"]) if rec.get("frm") else None
        to = InstanceRef.parse(rec["to"])
        spec = self.tenants[tenant]
        keep: InstanceRef | None
        if rec.get("phase") == "switched":
            keep, stop, res = to, (frm, rec.get("old") or ""), "kept the new copy"
        else:
            keep, stop, res = frm, (to, str(rec["new"])), "kept the old copy"
        self.placement[tenant] = keep
        if dry:
            return f"{tenant}: dry-run: left as is ({res} in the books)"
        if spec.launcher is None or spec.launcher.handover != "warm":
            self.placement[tenant] = None  # relaunched where the desired state says by the next reconcile
            return f"{tenant}: launcher no longer warm: placement unknown"
        self._retire[tenant] = stop
        err = await self._stop_old(tenant, spec)
        self._retire_done(tenant, err, "done" if keep == to else "failed", f"recovery: {res}")
        return f"{tenant}: {res}" + (f"; {err} (retried at the next reconcile)" if err else "")

    async def _recover_mig(self, gpu: str, rec: dict[str, Any]) -> str:
        if gpu not in self.gpus:
            return "unknown GPU, left as is"
        before = tuple(sorted(Slot.parse(s) for s in rec.get("before", [])))
        after = tuple(sorted(Slot.parse(s) for s in rec.get("after", [])))
        try:
            model = await self._gpu_model(self.gpus[gpu])
            await self._repair_cis(gpu)
            cur = await self.read_layout(gpu)
        except (NvsmiError, KeyError) as e:
            return f"cannot read: {e}"
        if cur in (before, after):
            res = "was complete" if cur == after else "had not started"
        else:
            err = await self._converge(gpu, model, after)
            if not err:
                res = "finished"
            else:
                err2 = await self._converge(gpu, model, before)
                res = "rolled back" if not err2 else f"FAILED: {err}; rollback: {err2}"
        now = await self._safe_layout(gpu)
        ok = now in (before, after)
        self._jot("mig", phase="done" if ok else "failed", gpu=gpu, layout=_strs(now), note=f"recovery: {res}")
        self._mig_open.pop(gpu, None)
        return res

    async def shutdown(self, lift_throttles: bool, timeout: float = 60.0) -> None:
        """Let background operations finish (a MIG change is never cut in half on purpose), then
        lift tailguard's caps when asked, and close the journal."""
        await self.wait_idle(timeout)
        for t in self._tasks.values():
            if not t.done():
                t.cancel()
        async with self._lock:
            if lift_throttles and not self.dry_run:
                rep = ReconcileReport(self.clock(), False)
                self._reconcile_throttles(DesiredState(t=self.clock()), self.clock(), rep)
                await self._reconcile_mps(DesiredState(t=self.clock()), self.clock(), rep)
                for e in rep.errors:
                    log.warning("shutdown: %s", e)
            self.journal.close()


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _ref(r: InstanceRef | None) -> str | None:
    return str(r) if r is not None else None


def _strs(layout: Layout | None) -> list[str] | None:
    return None if layout is None else [str(s) for s in layout]


def _fmt(layout: Layout | None) -> str:
    return "unknown" if layout is None else (", ".join(map(str, layout)) or "(empty)")


def readiness_from_config(cfg: Config) -> Ready:
    """Readiness = the tenant's latency source answers: an HTTP 200 from its Prometheus URL, or its
    JSON-lines file exists. Tenants without a source count as ready once launched."""
    import urllib.request

    sources = {t.name: t.latency for t in cfg.tenants}

    async def ready(tenant: str) -> bool:
        src = sources.get(tenant)
        if src is None:
            return True
        if src.kind == "prometheus" and src.url:
            url = src.url

            def probe() -> bool:
                try:
                    with urllib.request.urlopen(url, timeout=src.timeout_s) as r:
                        return bool(r.status == 200)
                except OSError:
                    return False

            return await asyncio.to_thread(probe)
        if src.kind == "jsonl" and src.path:
            return Path(src.path).exists()
        return True

    return ready
