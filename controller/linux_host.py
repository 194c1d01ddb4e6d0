"""LinuxHost: the real host behind controller.host.Host = SignalCollector + Reconciler.

observe() runs the samplers (concurrently, each under its timeout) and adds the reconciler's
status (in-flight operations, outcomes since the last tick). apply() reconciles: throttles inline
(cgroupfs writes), MIG changes and moves as background tasks inside the reconciler.

A recovery that fails (or raises) does not stop the daemon: the host reports the condition
"recovery" (controller/degraded.py), lifts the journal's expired caps before every reconcile
(actuators/salvage.py) and retries recovery every RECOVERY_RETRY_S until it succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from actuators.cgroup import CgroupError
from actuators.journal import JournalStats
from actuators.moves import relaunch_of
from actuators.nvsmi import NvidiaSmi
from actuators.reconciler import Reconciler
from actuators.salvage import lift_expired
from controller.actuation import readiness_from_config, reconciler_from_config, tenant_actuations
from controller.config import Config
from controller.exporters.snapshot import MigTableView
from controller.mig_probe import check_against_driver
from controller.mig_tables import DRIVER_RECHECK_S, MIG_READ_TIMEOUT_S, MIG_START_BUDGET_S, MigTables, gpu_maps
from controller.platform import notes as platform_notes
from controller.signals.base import SamplerStats
from controller.signals.collect import SignalCollector
from fsm.desired import DesiredState
from fsm.mig import GpuModel, model_by_name
from fsm.observation import Observation, TenantSample
from fsm.spec import HostSpec
from fsm.topology import Topology

log = logging.getLogger("tailguard.host")

RECOVERY_RETRY_S = 60.0  # a failed recovery is tried again this often while the daemon runs degraded


def host_spec(cfg: Config, topology: Topology, mig_tables: Mapping[str, GpuModel] | None = None) -> HostSpec:
    """The decision core's view of a validated config on a discovered topology; `mig_tables`: the
    drivers' MIG tables where they differ from the built-in ones (controller/mig_tables.py)."""
    models = {g.name: model_by_name(g.model).key for g in cfg.gpus if g.model}
    return HostSpec(
        topology=topology,
        tenants=cfg.tenant_specs(),
        policy=cfg.policy_obj(),
        gpu_models=models,
        mig_tables=dict(mig_tables or {}),
    )


class LinuxHost:
    def __init__(
        self,
        cfg: Config,
        topology: Topology,
        collector: SignalCollector | None = None,
        reconciler: Reconciler | None = None,
        lift_throttles_on_exit: bool | None = None,
        mig: MigTables | None = None,
        dry_run: bool = False,
    ) -> None:
        """`dry_run`: the command line's --dry-run, which nothing overrides; the config's mode
        comes with each desired state (its `enforce`), so a reload or the control topic switches it."""
        self.cfg = cfg
        self.topology = topology
        self.spec: HostSpec = host_spec(cfg, topology)
        self.collector = collector or SignalCollector(cfg, topology)
        self.reconciler = reconciler or reconciler_from_config(cfg, dry_run=dry_run)
        self._lift_override = lift_throttles_on_exit
        self.lift = cfg.host.lift_throttles_on_exit if lift_throttles_on_exit is None else lift_throttles_on_exit
        # The MIG tables in force: read through the reconciler's nvidia-smi at start, again when the
        # driver version changes. The daemon picks up a new `mig_tables` mapping on its next tick.
        path = getattr(getattr(self.reconciler, "nvsmi", None), "path", "nvidia-smi")
        self.mig = mig or MigTables(NvidiaSmi(path, timeout=MIG_READ_TIMEOUT_S), *gpu_maps(cfg))
        self.mig_tables: Mapping[str, GpuModel] = self.spec.mig_tables
        self._mig_due = time.monotonic() + DRIVER_RECHECK_S
        self._mig_task: asyncio.Task[None] | None = None
        self._mig_force = False
        for note in platform_notes(cfg):
            log.warning("%s", note)
        self.recovery_error = ""  # set while recovery has not succeeded: the host runs degraded
        self._recovery_tried = -math.inf
        self.clock = time.monotonic

    def now(self) -> float:
        return time.time()

    async def start(self) -> dict[str, Any]:
        """The drivers' MIG tables (unless `run` read them already to check the config), then
        crash recovery from the journal, before the first tick. Raises DriverMismatch for a config
        the drivers' tables refuse (a config error: `run` exits 2); recovery never raises (see the
        module doc)."""
        if not self.mig.attempted:
            try:
                async with asyncio.timeout(MIG_START_BUDGET_S):
                    await self.mig.refresh(force=True)
            except TimeoutError:  # a hung driver must not hold the start: retried in the background
                log.warning(
                    "MIG tables: nvidia-smi did not answer within %.0f s; the built-in tables apply meanwhile",
                    MIG_START_BUDGET_S,
                )
        if not self.mig.tables and self.mig.attempted and not self.mig.last_error:
            self._mig_force = True  # timed out: read again on the next tick, in the background
        self._apply_mig()
        check_against_driver(self.cfg, self.mig)  # raises DriverMismatch: `run` exits 2 naming the keys
        return await self._recover()

    async def _recover(self) -> dict[str, Any]:
        self._recovery_tried = self.clock()
        try:
            summary = await self.reconciler.recover()
        except Exception as e:  # a bug or a host fault: run degraded instead of exiting (systemd would loop)
            first = not self.recovery_error
            self.recovery_error = f"recovery raised {type(e).__name__}: {e}"
            (log.exception if first else log.error)(
                "%s; running degraded: expired caps are lifted from the journal, recovery retried every %.0f s",
                self.recovery_error, RECOVERY_RETRY_S)  # fmt: skip
            self._salvage()
            return {"errors": [self.recovery_error]}
        if self.recovery_error:
            log.warning("recovery succeeded on retry")
        self.recovery_error = ""
        return summary

    def _salvage(self) -> None:
        if self.reconciler.dry_run:
            return
        try:
            cg = self.reconciler.cg
        except CgroupError as e:
            log.error("degraded: cannot lift expired caps: %s", e)
            return
        rep = lift_expired(self.reconciler.journal, cg, time.time())
        for err in rep.errors:
            log.error("degraded: %s", err)

    async def refresh_mig_tables(self, force: bool = False) -> bool:
        changed = await self.mig.refresh(force)
        if changed:
            self._apply_mig()
        return changed

    def _apply_mig(self) -> None:
        self.mig_tables = self.mig.overrides()
        self.spec = replace(self.spec, mig_tables=self.mig_tables)
        self.reconciler.use_mig_tables(self.mig.in_force())
        self.collector.use_mig_tables(self.mig.in_force())

    def mig_table_views(self) -> dict[str, MigTableView]:
        return {
            g: MigTableView(g, t.model.key if t.model else "", t.source, t.driver, len(t.differences))
            for g, t in self.mig.tables.items()
        }

    def mig_conditions(self) -> dict[str, str]:
        """Degraded conditions of the MIG tables, for the host's conditions (controller/degraded.py,
        group "host"): a configured GPU whose driver listing could not be read runs on its built-in
        table. MIG mode being off is a state, not a fault, and is not one of them."""
        if not self.cfg.gpus:
            return {}
        return {
            f"mig-table:{g}": f"{t.error}; {'its built-in table is used' if t.model else 'no MIG table at all'}"
            for g, t in sorted(self.mig.tables.items())
            if t.error and t.error != "MIG mode is not enabled"
        }

    def _recheck_mig(self) -> None:
        """Every DRIVER_RECHECK_S: has the driver changed? In the background, never in the tick."""
        if self._mig_task is not None and not self._mig_task.done():
            return
        now = time.monotonic()
        if now < self._mig_due and not self._mig_force:
            return
        self._mig_due = now + DRIVER_RECHECK_S
        force, self._mig_force = self._mig_force, False
        self._mig_task = asyncio.create_task(self._recheck_task(force), name="mig-tables")

    async def _recheck_task(self, force: bool) -> None:
        try:
            await self.refresh_mig_tables(force)
        except Exception as e:  # never fatal: the tables in force stay
            log.error("MIG tables: %s: %s", type(e).__name__, e)

    async def observe(self) -> Observation:
        self._recheck_mig()
        obs = await self.collector.collect(self.now())
        for alarm in self.collector.events:  # e.g. a GPU fell off the bus: the operator must know now
            log.warning("signals: %s", alarm)
        status = self.reconciler.status()
        for o in status.outcomes:
            if o.target.startswith("gpu:"):  # a MIG change finished (or failed half-way): re-read its layout
                self.collector.invalidate_mig(o.target.removeprefix("gpu:"))
        return replace(obs, tenants=self._with_outages(obs), actuation=status)

    def _with_outages(self, obs: Observation) -> dict[str, TenantSample]:
        """Each tenant's last measured move outage (restart: the relaunch; warm: the switch-over
        gap) for the decision core's cost model; a resize's figure includes the MIG wait, so its
        relaunch alone (`relaunch_s`) stands for it."""
        tenants = dict(obs.tenants)
        for name, recs in self.reconciler.recent_outages().items():
            moves = [s for r in recs if (s := relaunch_of(r)) is not None]
            if moves and name in tenants:
                tenants[name] = replace(tenants[name], outage_s=float(moves[-1]))
        return tenants

    async def apply(self, desired: DesiredState) -> None:
        if self.recovery_error:
            if self.clock() - self._recovery_tried >= RECOVERY_RETRY_S:
                await self._recover()
            if self.recovery_error:
                self._salvage()
        rep = await self.reconciler.reconcile(desired)
        for e in rep.errors:
            log.warning("reconcile: %s", e)

    def sampler_stats(self) -> dict[str, SamplerStats]:
        return self.collector.stats

    def conditions(self) -> dict[str, str]:
        """Degraded conditions of the hands (controller/degraded.py, group "host")."""
        out: dict[str, str] = {}
        if self.recovery_error:
            retry = f"retried every {RECOVERY_RETRY_S:.0f} s"
            out["recovery"] = f"{self.recovery_error} (expired caps still lifted; {retry})"
        js = self.reconciler.journal.stats
        if js.failing:
            out["journal"] = f"{js.last_error} (no new cap, MIG change or move is applied; lifting goes on)"
        out.update(self.mig_conditions())
        return out

    def journal_stats(self) -> JournalStats:
        return self.reconciler.journal.stats

    def recent_outages(self) -> dict[str, list[dict[str, Any]]]:
        """tenant -> recent measured outages ({kind, seconds, wall}), oldest first."""
        fn = getattr(self.reconciler, "recent_outages", None)
        return fn() if callable(fn) else {}

    def reload(self, cfg: Config) -> HostSpec:
        """A new config (what takes a restart unchanged: controller/config_reload.py): new samplers
        (sources may have changed), the same reconciler (it owns caps and operations in flight) told
        the tenants anew (cgroups, launchers, readiness). Raises DriverMismatch (the old config
        stays) when it asks for MIG settings the drivers' tables read so far do not offer."""
        check_against_driver(cfg, self.mig)
        self.collector = SignalCollector(cfg, self.topology)
        self.collector.use_mig_tables(self.mig.in_force())
        self.reconciler.configure(tenant_actuations(cfg), readiness_from_config(cfg))
        self.cfg = cfg
        self.spec = host_spec(cfg, self.topology, self.mig_tables)
        self.lift = cfg.host.lift_throttles_on_exit if self._lift_override is None else self._lift_override
        return self.spec

    async def close(self) -> None:
        if self._mig_task is not None and not self._mig_task.done():
            self._mig_task.cancel()
        await self.reconciler.shutdown(self.lift)
