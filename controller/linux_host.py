"""LinuxHost: the real host behind controller.host.Host = SignalCollector + Reconciler.

observe() runs the samplers (concurrently, each under its timeout) and adds the reconciler's
status (in-flight operations, outcomes since the last tick). apply() reconciles: throttles inline
(cgroupfs writes), MIG changes and moves as background tasks inside the reconciler.

A recovery that fails (or raises) does not stop the daemon: the host reports the condition
"recovery" (controller/degraded.py), lifts the journal's expired caps before every reconcile
(actuators/salvage.py) and retries recovery every RECOVERY_RETRY_S until it succeeds.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any

from actuators.cgroup import CgroupError
from actuators.journal import JournalStats
from actuators.reconciler import Reconciler
from actuators.salvage import lift_expired
from controller.actuation import reconciler_from_config
from controller.config import Config
from controller.platform import notes as platform_notes
from controller.signals.base import SamplerStats
from controller.signals.collect import SignalCollector
from fsm.desired import DesiredState
from fsm.mig import model_by_name
from fsm.observation import Observation, TenantSample
from fsm.spec import HostSpec
from fsm.topology import Topology

log = logging.getLogger("tailguard.host")

RECOVERY_RETRY_S = 60.0  # a failed recovery is tried again this often while the daemon runs degraded


def host_spec(cfg: Config, topology: Topology) -> HostSpec:
    """The decision core's view of a validated config on a discovered topology."""
    models = {g.name: model_by_name(g.model).key for g in cfg.gpus if g.model}
    return HostSpec(topology=topology, tenants=cfg.tenant_specs(), policy=cfg.policy_obj(), gpu_models=models)


class LinuxHost:
    def __init__(
        self,
        cfg: Config,
        topology: Topology,
        collector: SignalCollector | None = None,
        reconciler: Reconciler | None = None,
        lift_throttles_on_exit: bool | None = None,
    ) -> None:
        self.cfg = cfg
        self.topology = topology
        self.spec: HostSpec = host_spec(cfg, topology)
        self.collector = collector or SignalCollector(cfg, topology)
        self.reconciler = reconciler or reconciler_from_config(cfg)
        self.lift = cfg.host.lift_throttles_on_exit if lift_throttles_on_exit is None else lift_throttles_on_exit
        for note in platform_notes(cfg):
            log.warning("%s", note)
        self.recovery_error = ""  # set while recovery has not succeeded: the host runs degraded
        self._recovery_tried = -math.inf
        self.clock = time.monotonic

    def now(self) -> float:
        return time.time()

    async def start(self) -> dict[str, Any]:
        """Crash recovery from the journal before the first tick; never raises (see the module doc)."""
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

    async def observe(self) -> Observation:
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
        gap) for the decision core's cost model; a resize's figure includes the MIG wait, so not it."""
        tenants = dict(obs.tenants)
        for name, recs in self.reconciler.recent_outages().items():
            moves = [r["seconds"] for r in recs if r.get("kind") in ("move", "warm_move")]
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
        return out

    def journal_stats(self) -> JournalStats:
        return self.reconciler.journal.stats

    def recent_outages(self) -> dict[str, list[dict[str, Any]]]:
        """tenant -> recent measured outages ({kind, seconds, wall}), oldest first."""
        fn = getattr(self.reconciler, "recent_outages", None)
        return fn() if callable(fn) else {}

    def reload(self, cfg: Config) -> HostSpec:
        """A new config: new samplers (sources may have changed), same reconciler (it owns caps)."""
        self.collector = SignalCollector(cfg, self.topology)
        self.cfg = cfg
        self.spec = host_spec(cfg, self.topology)
        return self.spec

    async def close(self) -> None:
        await self.reconciler.shutdown(self.lift)
