"""Which MIG profile table is in force on each GPU: the driver's listing, else the built-in one.

Read at daemon start and again whenever the driver version changes (checked every
DRIVER_RECHECK_S in the background): `nvidia-smi --query-gpu=index,name,driver_version`, then
`nvidia-smi mig -i N -lgip` / `-lgipp` per GPU. Where the driver's table differs from fsm.mig's
built-in table of the GPU's model, the driver wins for that GPU (HostSpec.mig_tables, the
reconciler, the NVML sampler); every difference is logged and counted in a metric. Without a
driver, or with MIG mode off, the built-in table stays in force and the reason is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from actuators.migtable import read_driver_table
from actuators.nvsmi import GpuQuery, MigDisabled, NvidiaSmi, NvsmiError
from fsm.mig import GpuModel, model_by_name
from fsm.migdriver import table_differences

log = logging.getLogger("tailguard.mig")

DRIVER_RECHECK_S = 300.0  # a driver upgrade under a running daemon is rare; one cheap query per 5 min
# Reading the tables at start (one query, then -lgip and -lgipp per GPU) is bounded as a whole and
# per call: systemd's start timeout must cover it (TimeoutStartSec).
MIG_START_BUDGET_S = 20.0
MIG_READ_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class GpuTable:
    """The table in force on one GPU and where it came from."""

    gpu: str
    index: int
    model: GpuModel | None  # in force (None: no table at all, e.g. an unknown model without a driver)
    builtin: GpuModel | None
    source: str  # "driver" | "built-in" | "none"
    driver: str = ""  # driver version, "" when unknown
    differences: tuple[str, ...] = ()  # driver vs built-in, one line each
    notes: tuple[str, ...] = ()  # driver rows that could not be used
    error: str = ""  # why the driver's listing was not read

    def as_json(self) -> dict[str, Any]:
        m = self.model
        return {
            "gpu": self.gpu,
            "index": self.index,
            "model": m.key if m else None,
            "name": m.name if m else None,
            "source": self.source,
            "driver": self.driver or None,
            "differences": list(self.differences),
            "notes": list(self.notes),
            "error": self.error or None,
            "mem_slots": m.mem_slots if m else None,
            "compute_slices": m.compute_slices if m else None,
            "profiles": [
                {
                    "name": p.name, "id": p.lgip_id, "gib": p.gib, "sm": p.sm, "slices": p.slices,
                    "mem_slots": p.mem_slots, "max": p.cls.max_count, "placements": list(p.placements),
                    "dec": p.dec, "enc": p.enc, "jpg": p.jpg, "ofa": p.ofa, "ce": p.ce,
                }
                for p in (m.profiles if m else ())
            ],
        }  # fmt: skip


def _builtin(key: str | None) -> GpuModel | None:
    if not key:
        return None
    try:
        return model_by_name(key)
    except KeyError:
        return None


@dataclass(slots=True)
class MigTables:
    """Reads the driver's tables for the configured GPUs (name -> NVML/nvidia-smi index); `models`
    are the configured model keys (else the name nvidia-smi prints picks the built-in table)."""

    nvsmi: NvidiaSmi
    gpus: Mapping[str, int]
    models: Mapping[str, str] = field(default_factory=dict)
    tables: dict[str, GpuTable] = field(default_factory=dict)
    driver: str | None = None  # the version the tables were read under
    last_error: str = ""
    attempted: bool = False  # a read was started (it may have timed out)

    def driver_model(self, gpu: str) -> GpuModel | None:
        """The driver's table of `gpu` where one was read (the `models` hook of config_checks)."""
        t = self.tables.get(gpu)
        return t.model if t is not None and t.source == "driver" else None

    def in_force(self) -> dict[str, GpuModel]:
        """gpu -> the table in force (driver or built-in), for the actuators and samplers."""
        return {g: t.model for g, t in self.tables.items() if t.model is not None}

    def overrides(self) -> dict[str, GpuModel]:
        """gpu -> the driver's table, for GPUs where it differs from the built-in one."""
        return {g: t.model for g, t in self.tables.items() if t.source == "driver" and t.differences and t.model}

    async def driver_version(self) -> tuple[str | None, list[GpuQuery]]:
        q = await self.nvsmi.query_gpus()
        versions = sorted({g.driver for g in q})
        return (versions[0] if len(versions) == 1 else ",".join(versions)) if versions else None, q

    async def refresh(self, force: bool = False) -> bool:
        """Re-read when forced or when the driver version changed. Returns True when the tables in
        force changed. Never raises for a missing or failing nvidia-smi: the built-in tables stay."""
        self.attempted = True
        try:
            version, listed = await self.driver_version()
        except NvsmiError as e:
            changed = force or not self.tables
            if changed:
                self.last_error = why = f"nvidia-smi unavailable: {e}"
                self.tables = {g: self._builtin_only(g, i, why) for g, i in self.gpus.items()}
            return changed
        if not force and self.tables and version == self.driver:
            return False
        if self.driver is not None and version != self.driver:
            log.warning("NVIDIA driver changed from %s to %s: re-reading the MIG profile tables", self.driver, version)
        before = self.overrides()
        names = {g.index: g.name for g in listed}
        gpus = self.gpus or {f"gpu{i}": i for i in sorted(names)}  # no [[gpus]]: every GPU the driver lists
        self.tables = {g: await self._read(g, i, names.get(i), version or "") for g, i in gpus.items()}
        self.driver = version
        self.last_error = ""
        for t in self.tables.values():
            _log_table(t)
        return force or before != self.overrides()

    def _builtin_only(self, gpu: str, index: int, why: str, name: str | None = None, driver: str = "") -> GpuTable:
        b = _builtin(self.models.get(gpu) or name)
        return GpuTable(gpu, index, b, b, "built-in" if b else "none", driver, error=why)

    async def _read(self, gpu: str, index: int, name: str | None, driver: str) -> GpuTable:
        if name is None:
            return self._builtin_only(gpu, index, f"nvidia-smi lists no GPU {index}", None, driver)
        base = _builtin(self.models.get(gpu) or name)
        try:
            model, notes = await read_driver_table(self.nvsmi, index, name, base)
        except MigDisabled:
            return self._builtin_only(gpu, index, "MIG mode is not enabled", name, driver)
        except NvsmiError as e:
            return self._builtin_only(gpu, index, str(e), name, driver)
        diff = tuple(table_differences(base, model))
        return GpuTable(gpu, index, model, base, "driver", driver, diff, tuple(notes))


def read_for_config(cfg: Any, nvidia_smi: str = "nvidia-smi", budget_s: float | None = None) -> MigTables:
    """The drivers' tables for a config's [[gpus]], read now (outside any event loop), within
    MIG_START_BUDGET_S; on a timeout the tables stay empty (the built-in ones apply)."""
    import asyncio

    t = MigTables(NvidiaSmi(nvidia_smi, timeout=MIG_READ_TIMEOUT_S), *gpu_maps(cfg))
    budget = MIG_START_BUDGET_S if budget_s is None else budget_s
    try:
        asyncio.run(asyncio.wait_for(t.refresh(force=True), budget))
    except TimeoutError:
        log.warning("MIG tables: nvidia-smi did not answer within %.0f s; the built-in tables apply meanwhile", budget)
    return t


def gpu_maps(cfg: Any) -> tuple[dict[str, int], dict[str, str]]:
    """(gpu name -> index, gpu name -> configured model key) of a Config's [[gpus]]."""
    return {g.name: g.index for g in cfg.gpus}, {g.name: g.model for g in cfg.gpus if g.model}


def _log_table(t: GpuTable) -> None:
    what = f"{t.gpu} ({t.model.key if t.model else '?'}, driver {t.driver or '?'})"
    if t.error:
        log.info("%s: MIG profile table: %s; %s", what, t.error, "built-in table" if t.model else "none")
        return
    for n in t.notes:
        log.warning("%s: MIG profile listing: %s", what, n)
    if t.differences:
        log.warning(
            "%s: the driver's MIG profile table differs from the built-in one in %d point(s); the driver's is used:"
            "\n  %s", what, len(t.differences), "\n  ".join(t.differences),
        )  # fmt: skip
