"""Signals as a real host gives them ([scenario.signals], replay/fidelity.py): the latency scrapes
that fail, the GPU figures without DCGM or with NVML's sampled PCIe counters, dcgm-exporter's
collections, the ticks that run late. A mixin of HostSim (replay/simulator.py): what the model
computes exactly, these hand the controller as a host would."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from fsm.observation import GpuSample, MigSample
from replay.queueing import Array
from replay.scenario import ScenarioMeta


class Carried(Protocol):
    carry: Array  # requests a failed scrape or a skipped tick reports with the next one


class SignalView:
    meta: ScenarioMeta
    gpu_nodes: list[str]
    _sig_rng: np.random.Generator | None
    _tick_rng: np.random.Generator | None
    _dcgm_held: dict[str, tuple[float | None, float | None, Mapping[str, MigSample]]]

    def _scraped(self, s: Carried, rep: Array) -> Array | None:
        """The latencies the tick's scrape reports (meta.signals.latency_dropout): None when it
        failed, and then they are reported with the next tick's, as a histogram's counters would."""
        p = self.meta.signals.latency_dropout
        if p > 0 and self._sig_rng is not None and self._sig_rng.random() < p:
            s.carry = np.concatenate((s.carry, rep))
            return None
        if s.carry.size:  # (a failed scrape's, or a skipped tick's: signals.tick_overruns)
            rep, s.carry = np.sort(np.concatenate((s.carry, rep))), np.empty(0)
        return rep

    def _degraded(self, gpus: dict[str, GpuSample], unavailable: dict[str, str]) -> dict[str, GpuSample]:
        """The GPU samples as a host without DCGM, or with NVML's sampled PCIe counters, reads them
        (meta.signals). Every GPU draws its two factors on every tick, in a fixed order."""
        sig = self.meta.signals
        cv = sig.pcie_noise_cv
        sigma = math.sqrt(math.log1p(cv * cv)) if cv > 0 else 0.0
        out: dict[str, GpuSample] = {}
        for gpu in self.gpu_nodes:
            g = gpus[gpu]
            changes: dict[str, Any] = {}
            if sigma > 0 and self._sig_rng is not None:
                f_tx, f_rx = self._sig_rng.lognormal(-0.5 * sigma * sigma, sigma, 2).tolist()  # mean 1
                changes["pcie_tx_bps"] = None if g.pcie_tx_bps is None else g.pcie_tx_bps * f_tx
                changes["pcie_rx_bps"] = None if g.pcie_rx_bps is None else g.pcie_rx_bps * f_rx
            if not sig.dcgm:
                changes.update(sm_active=None, dram_active=None, instances=dict.fromkeys(g.instances, MigSample()))
            out[gpu] = dataclasses.replace(g, **changes) if changes else g
        if not sig.dcgm:
            unavailable["dcgm"] = "no DCGM on this host (simulated: signals.dcgm = false)"
        return out

    def _dcgm_collected(self, gpus: dict[str, GpuSample], t: float, span: float) -> dict[str, GpuSample]:
        """DCGM's figures as dcgm-exporter serves them (meta.signals.dcgm_interval_s): collected once
        an interval (at its multiples), each scrape in between served the last collection. A tick
        that spans a collection brings its own figures; the others, the held ones."""
        every = self.meta.signals.dcgm_interval_s
        if math.floor(t / every) > math.floor((t - span) / every) or not self._dcgm_held:
            self._dcgm_held = {g: (s.sm_active, s.dram_active, s.instances) for g, s in gpus.items()}
            return gpus
        out: dict[str, GpuSample] = {}
        for gpu, g in gpus.items():
            held = self._dcgm_held.get(gpu)
            if held is None:
                out[gpu] = dataclasses.replace(g, sm_active=None, dram_active=None, instances={})
            else:
                out[gpu] = dataclasses.replace(g, sm_active=held[0], dram_active=held[1], instances=held[2])
        return out

    def overrun(self) -> int:
        """How many periods past its own the tick about to run takes (meta.signals.tick_overruns):
        0 as a rule; 1-3 for a tick that ran late, whose missed slots the daemon skips, so the
        next observation covers them too. The same draws whatever the policy does."""
        if self._tick_rng is None:
            return 0
        late, extra = self._tick_rng.random(), int(self._tick_rng.integers(1, 4))
        return extra if late < self.meta.signals.tick_overruns else 0
