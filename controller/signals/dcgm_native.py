"""DCGM through its own Python bindings (`DcgmReader`, `dcgm_fields`), present when DCGM is
installed on the host (e.g. /usr/local/dcgm/bindings/python3 on the path).

Watches the profiling fields per GPU with `DcgmReader(fieldIds=..., updateFrequency=us)` and reads
`GetLatestGpuValuesAsFieldIdDict()` ({gpuId: {fieldId: value}}). Per-MIG-instance values come from
the dcgm-exporter path (its GPU_I_ID/GPU_I_PROFILE series); this path reports whole GPUs only and
says so in `unavailable`.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

from controller.signals.base import Unavailable
from controller.signals.dcgm import DcgmGpu, DcgmReading
from controller.signals.rates import CounterRates

FIELDS = {
    "sm": "DCGM_FI_PROF_SM_ACTIVE",
    "dram": "DCGM_FI_PROF_DRAM_ACTIVE",
    "tx": "DCGM_FI_PROF_PCIE_TX_BYTES",
    "rx": "DCGM_FI_PROF_PCIE_RX_BYTES",
    "replay": "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "util": "DCGM_FI_DEV_GPU_UTIL",
}


def _num(v: Any) -> float | None:
    # DcgmReader returns blank sentinels (huge values) for fields without data; keep sane floats only
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    if x != x or x < 0 or x >= 9.0e15:
        return None
    return x


class PydcgmSampler:
    name = "dcgm"

    def __init__(self, timeout_s: float = 1.0, reader_module: Any | None = None, fields_module: Any | None = None):
        self.timeout_s = timeout_s
        self._reader_mod = reader_module
        self._fields_mod = fields_module
        self._reader: Any | None = None
        self._ids: dict[str, int] = {}
        self._replays = CounterRates(max_rate=1e9)

    def _ensure(self) -> str | None:
        if self._reader is not None:
            return None
        try:
            rm = self._reader_mod or importlib.import_module("DcgmReader")
            fm = self._fields_mod or importlib.import_module("dcgm_fields")
        except ImportError as e:
            return f"DCGM Python bindings not importable: {e}"
        self._ids = {k: int(getattr(fm, v)) for k, v in FIELDS.items() if hasattr(fm, v)}
        try:
            self._reader = rm.DcgmReader(fieldIds=sorted(self._ids.values()), updateFrequency=1_000_000)
        except Exception as e:  # the bindings raise their own DCGMError_* types
            return f"cannot connect to DCGM: {e}"
        return None

    def read(self, now: float) -> DcgmReading | Unavailable:
        err = self._ensure()
        if err:
            return Unavailable(err)
        assert self._reader is not None
        data = self._reader.GetLatestGpuValuesAsFieldIdDict()
        gpus: dict[int, DcgmGpu] = {}
        ids = self._ids
        for gpu_id, vals in sorted(data.items()):

            def get(key: str, vals: Any = vals) -> float | None:
                fid = ids.get(key)
                return None if fid is None else _num(vals.get(fid))

            sm, dram, util, replay = get("sm"), get("dram"), get("util"), get("replay")
            gpus[int(gpu_id)] = DcgmGpu(
                index=int(gpu_id),
                sm_active=None if sm is None else min(sm, 1.0),
                dram_active=None if dram is None else min(dram, 1.0),
                pcie_tx_bps=get("tx"),
                pcie_rx_bps=get("rx"),
                pcie_replay_rate=None if replay is None else self._replays.update(gpu_id, now, replay),
                util=None if util is None else min(util / 100.0, 1.0),
            )
        reasons = {"dcgm:instances": 'per-MIG-instance values are read from dcgm-exporter only (dcgm = "exporter")'}
        return DcgmReading(gpus, reasons)

    async def sample(self, now: float) -> DcgmReading | Unavailable:
        return await asyncio.to_thread(self.read, now)
