"""LinuxHost: the real host behind controller.host.Host = SignalCollector + Reconciler.

observe() runs the samplers (concurrently, each under its timeout) and adds the reconciler's
status (in-flight operations, outcomes since the last tick). apply() reconciles: throttles inline
(cgroupfs writes), MIG changes and moves as background tasks inside the reconciler.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from actuators.reconciler import Reconciler
from controller.actuation import reconciler_from_config
from controller.config import Config
from controller.signals.base import SamplerStats
from controller.signals.collect import SignalCollector
from fsm.desired import DesiredState
from fsm.mig import model_by_name
from fsm.observation import Observation
from fsm.spec import HostSpec
from fsm.topology import Topology

log = logging.getLogger("tailguard.host")


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

    def now(self) -> float:
        return time.time()

    async def start(self) -> dict[str, Any]:
        """Crash recovery from the journal before the first tick."""
        return await self.reconciler.recover()

    async def observe(self) -> Observation:
        obs = await self.collector.collect(self.now())
        for alarm in self.collector.events:  # e.g. a GPU fell off the bus: the operator must know now
            log.warning("signals: %s", alarm)
        status = self.reconciler.status()
        for o in status.outcomes:
            if o.target.startswith("gpu:"):  # a MIG change finished (or failed half-way): re-read its layout
                self.collector.invalidate_mig(o.target.removeprefix("gpu:"))
        return replace(obs, actuation=status)

    async def apply(self, desired: DesiredState) -> None:
        rep = await self.reconciler.reconcile(desired)
        for e in rep.errors:
            log.warning("reconcile: %s", e)

    def sampler_stats(self) -> dict[str, SamplerStats]:
        return self.collector.stats

    def reload(self, cfg: Config) -> HostSpec:
        """A new config: new samplers (sources may have changed), same reconciler (it owns caps)."""
        self.collector = SignalCollector(cfg, self.topology)
        self.cfg = cfg
        self.spec = host_spec(cfg, self.topology)
        return self.spec

    async def close(self) -> None:
        await self.reconciler.shutdown(self.lift)
