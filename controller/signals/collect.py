"""Runs every sampler concurrently, each under its own timeout, and assembles one Observation.

A source that is unavailable is named in `Observation.unavailable` with its reason and its values
stay None; nothing is filled with zeros. `actuation` is left empty: the daemon merges the
reconciler's status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from controller.config import Config, TenantConfig
from controller.signals.base import Sampler, SamplerRunner, SamplerStats, Unavailable
from controller.signals.cgroup import CgroupReading, CgroupSampler
from controller.signals.dcgm import DcgmExporterSampler, DcgmReading, pydcgm_available
from controller.signals.host import HostReading, HostSampler
from controller.signals.latency import JsonlLatencySampler, LatencyReading, PrometheusLatencySampler
from controller.signals.nvml import NvmlReading, NvmlSampler
from controller.signals.procs import RestartWatch
from fsm.mig import GpuModel, Slot
from fsm.observation import GpuSample, MigSample, Observation, TenantSample
from fsm.spec import Role
from fsm.topology import Topology

LATENCY_PREFIX = "latency:"


def default_samplers(cfg: Config) -> list[Sampler[Any]]:
    """The samplers a config asks for (a real host: NVML, DCGM, /proc, cgroupfs, latency)."""
    s = cfg.signals
    out: list[Sampler[Any]] = []
    if s.nvml:
        out.append(NvmlSampler({g.name: g.index for g in cfg.gpus} or None, timeout_s=s.timeout_s))
    mode = s.dcgm
    if mode == "auto":
        mode = "pydcgm" if pydcgm_available() else "exporter"
    if mode == "pydcgm":
        from controller.signals.dcgm_native import PydcgmSampler

        out.append(PydcgmSampler(timeout_s=s.timeout_s))
    elif mode == "exporter" and s.dcgm_exporter_url:
        out.append(DcgmExporterSampler(s.dcgm_exporter_url, timeout_s=s.timeout_s))
    out.append(HostSampler(s.proc_root, timeout_s=s.timeout_s))
    cgroups = {t.name: t.cgroup for t in cfg.tenants if t.cgroup}
    if cgroups:
        # the sensitive tenants' processes too: a restart replaces them all, whatever the latency source
        sensitive = [t.name for t in cfg.tenants if t.role is Role.SENSITIVE]
        out.append(
            CgroupSampler(
                cgroups,
                cfg.host.cgroup_root,
                cfg.host.cgroup_version,
                timeout_s=s.timeout_s,
                procs_of=sensitive,
                proc_root=s.proc_root,
            )
        )
    for t in cfg.tenants:
        lat = latency_sampler(t)
        if lat is not None:
            out.append(lat)
    return out


def latency_sampler(t: TenantConfig) -> Sampler[Any] | None:
    """The sampler of a tenant's latency source; None for kind "mqtt" (pushed to the daemon, which
    merges it into the observation) and for tenants without one."""
    src = t.latency
    if src is None:
        return None
    name = LATENCY_PREFIX + t.name
    slo_s = t.slo_ms / 1000.0 if t.slo_ms is not None else None  # over_slo is counted against it
    if src.kind == "prometheus" and src.url:
        return PrometheusLatencySampler(name, src.url, src.metric, src.labels, src.timeout_s, slo_s=slo_s)
    if src.kind == "jsonl" and src.path:
        return JsonlLatencySampler(name, src.path, src.field, src.timeout_s, slo_s=slo_s, time_field=src.time_field)
    return None


class SignalCollector:
    def __init__(
        self,
        config: Config,
        topology: Topology,
        samplers: Iterable[Sampler[Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.topology = topology
        chosen = list(samplers) if samplers is not None else default_samplers(config)
        self.runners: dict[str, SamplerRunner[Any]] = {}
        for s in chosen:
            if s.name in self.runners:
                raise ValueError(f"two samplers named {s.name!r}")
            self.runners[s.name] = SamplerRunner(s, clock)
        self._gpu_by_index = {g.index: g.name for g in config.gpus}
        self.restarts = RestartWatch()
        self.events: tuple[str, ...] = ()  # alarms from the last collect (e.g. a GPU lost)

    @property
    def stats(self) -> dict[str, SamplerStats]:
        """Per-sampler counters for the exporter: errors_total, last_success_age_s(), last_error."""
        return {name: r.stats for name, r in self.runners.items()}

    def invalidate_mig(self, gpu: str | None = None) -> None:
        """Call after a MIG reconfiguration: the next tick re-reads the MIG device list from NVML
        instead of waiting for its periodic refresh."""
        for r in self.runners.values():
            if isinstance(r.sampler, NvmlSampler):
                r.sampler.invalidate_mig(gpu)

    def use_mig_tables(self, tables: Mapping[str, GpuModel]) -> None:
        """The MIG profile table in force per GPU (controller/mig_tables.py), for NVML's MIG devices."""
        for r in self.runners.values():
            if isinstance(r.sampler, NvmlSampler):
                r.sampler.use_mig_tables(tables)

    def _gpu_name(self, index: int) -> str:
        return self._gpu_by_index.get(index, f"gpu{index}")

    async def collect(self, now: float) -> Observation:
        names = list(self.runners)
        results = await asyncio.gather(*(self.runners[n].run(now) for n in names))
        unavailable: dict[str, str] = {}
        got: dict[str, Any] = {}
        for n, r in zip(names, results, strict=True):
            if isinstance(r, Unavailable):
                unavailable[n] = r.reason
            else:
                got[n] = r
                sub = getattr(r, "unavailable", None)
                if isinstance(sub, Mapping):
                    unavailable.update(sub)
        nvml = next((r for r in got.values() if isinstance(r, NvmlReading)), None)
        dcgm = next((r for r in got.values() if isinstance(r, DcgmReading)), None)
        host = next((r for r in got.values() if isinstance(r, HostReading)), None)
        cg = next((r for r in got.values() if isinstance(r, CgroupReading)), None)
        self.events = nvml.events if nvml is not None else ()
        gpus = self._gpus(nvml, dcgm, unavailable)
        tenants = self._tenants(now, got, cg)
        return Observation(
            t=now,
            tenants=tenants,
            gpus=gpus,
            host=host.sample if host is not None else None,
            unavailable=unavailable,
        )

    def _tenants(self, now: float, got: Mapping[str, Any], cg: CgroupReading | None) -> dict[str, TenantSample]:
        out = {}
        for t in self.config.tenants:
            lat = got.get(LATENCY_PREFIX + t.name)
            c = cg.tenants.get(t.name) if cg is not None else None
            read = lat if isinstance(lat, LatencyReading) else None
            restarted_s = self.restarts.update(
                t.name,
                now,
                c.processes if c is not None else None,
                read.restarted_s if read is not None else None,
                read.window.count if read is not None else None,
                has_window=LATENCY_PREFIX + t.name in self.runners,
            )
            out[t.name] = TenantSample(
                latency=read.window if read is not None else None,
                throughput=read.throughput if read is not None else None,
                restarted_s=restarted_s,
                served_total=read.served_total if read is not None else None,
                uptime_s=read.uptime_s if read is not None else None,
                io=c.io if c is not None else None,
                io_pressure=c.io_pressure if c is not None else None,
                cpu_pressure=c.cpu_pressure if c is not None else None,
            )
        self.restarts.forget_missing(out)  # a tenant a reload removed
        return out

    def _gpus(
        self, nvml: NvmlReading | None, dcgm: DcgmReading | None, unavailable: dict[str, str]
    ) -> dict[str, GpuSample]:
        out: dict[str, GpuSample] = {}
        dcgm_by_name = {self._gpu_name(i): g for i, g in dcgm.gpus.items()} if dcgm is not None else {}
        names = list(nvml.gpus) if nvml is not None else []
        names += [n for n in dcgm_by_name if n not in names]
        for name in names:
            nv = nvml.gpus.get(name) if nvml is not None else None
            dc = dcgm_by_name.get(name)
            slots: dict[int, Slot] = {}
            layout: tuple[Slot, ...] | None = None
            if nv is not None and nv.mig_devices is not None:
                slots = {d.gi_id: d.slot for d in nv.mig_devices if d.slot is not None}
                if len(slots) == len(nv.mig_devices):
                    layout = tuple(sorted(set(slots.values())))
            elif nv is not None and nv.mig_enabled is False:
                layout = ()
            instances: dict[str, MigSample] = {}
            if dc is not None:
                for inst in dc.instances:
                    slot = slots.get(inst.gi_id)
                    if slot is None:
                        unavailable[f"dcgm:{name}:gi{inst.gi_id}"] = (
                            f"MIG instance GPU_I_ID={inst.gi_id} ({inst.profile}): placement unknown without NVML"
                        )
                        continue
                    instances[str(slot)] = MigSample(inst.sm_active, inst.dram_active)

            def pick(a: float | None, b: float | None) -> float | None:
                return a if a is not None else b

            out[name] = GpuSample(
                # NVML's cumulative counters first; DCGM's gauges where NVML has nothing
                pcie_tx_bps=pick(nv.pcie_tx_bps if nv else None, dc.pcie_tx_bps if dc else None),
                pcie_rx_bps=pick(nv.pcie_rx_bps if nv else None, dc.pcie_rx_bps if dc else None),
                pcie_replay_rate=pick(nv.pcie_replay_rate if nv else None, dc.pcie_replay_rate if dc else None),
                util=pick(nv.util if nv else None, dc.util if dc else None),
                sm_active=dc.sm_active if dc else None,
                dram_active=dc.dram_active if dc else None,
                mig_enabled=nv.mig_enabled if nv else None,
                lost=nv.lost if nv else False,
                layout=layout,
                instances=instances,
            )
        return out
