"""A fake `pynvml` for tests and the benchmark, fed by a real `nvidia-smi -q` capture.

Keeps pynvml's real function names, argument shapes, return structures (the real ctypes
structures: c_nvmlFieldValue_t, c_nvmlUtilization_t, nvmlPciInfo_t, c_nvmlGpuInstanceInfo_t),
units (KB/s for nvmlDeviceGetPcieThroughput, bytes for the PCIe count fields) and exception
classes (pynvml.NVMLError and its generated subclasses, raised through pynvml's NVMLError(code)).
Cumulative PCIe byte counters advance by the captured throughput times the fake clock.
"""

from __future__ import annotations

import ctypes
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pynvml as real

# constants and exception classes are the real module's
NVMLError = real.NVMLError
NVMLError_NotSupported = real.NVMLError_NotSupported
NVMLError_GpuIsLost = real.NVMLError_GpuIsLost
NVMLError_NotFound = real.NVMLError_NotFound
NVML_SUCCESS = real.NVML_SUCCESS
NVML_FI_DEV_PCIE_COUNT_TX_BYTES = real.NVML_FI_DEV_PCIE_COUNT_TX_BYTES
NVML_FI_DEV_PCIE_COUNT_RX_BYTES = real.NVML_FI_DEV_PCIE_COUNT_RX_BYTES
NVML_FI_DEV_PCIE_REPLAY_COUNTER = real.NVML_FI_DEV_PCIE_REPLAY_COUNTER
NVML_PCIE_UTIL_TX_BYTES = real.NVML_PCIE_UTIL_TX_BYTES
NVML_PCIE_UTIL_RX_BYTES = real.NVML_PCIE_UTIL_RX_BYTES
NVML_DEVICE_MIG_ENABLE = real.NVML_DEVICE_MIG_ENABLE
NVML_DEVICE_MIG_DISABLE = real.NVML_DEVICE_MIG_DISABLE
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG


@dataclass
class FakeMig:
    uuid: str
    gi_id: int
    profile_id: int  # the -lgip ID, as nvmlGpuInstanceGetInfo reports it
    start: int


@dataclass
class FakeGpu:
    bus_id: str
    name: str
    uuid: str
    tx_kbps: int
    rx_kbps: int
    replays: int
    util_pct: int | None
    mig_enabled: bool = False
    migs: list[FakeMig] = field(default_factory=list)
    cpus: tuple[int, ...] = ()
    numa: int | None = None
    fields_supported: bool = True
    lost: bool = False
    tx_bytes: float = 0.0
    rx_bytes: float = 0.0


_GPU = re.compile(r"^GPU ([0-9A-Fa-f]{8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d)\s*$")
_KV = re.compile(r"^(\s*)([^:]+?)\s*:\s*(.*)$")


def parse_q(text: str) -> list[FakeGpu]:
    """The few fields of `nvidia-smi -q` the fake needs, per GPU."""
    gpus: list[FakeGpu] = []
    cur: dict[str, str] = {}
    section = ""

    def flush() -> None:
        if cur:
            gpus.append(
                FakeGpu(
                    bus_id=cur["bus"],
                    name=cur.get("Product Name", "NVIDIA A100-SXM4-40GB"),
                    uuid=cur.get("GPU UUID", f"GPU-{len(gpus):08d}"),
                    tx_kbps=int(cur.get("Tx Throughput", "0 KB/s").split()[0]),
                    rx_kbps=int(cur.get("Rx Throughput", "0 KB/s").split()[0]),
                    replays=int(cur.get("Replays Since Reset", "0")),
                    util_pct=int(cur["util"].split()[0]) if cur.get("util", "N/A")[0].isdigit() else None,
                    mig_enabled=cur.get("mig") == "Enabled",
                )
            )

    for line in text.splitlines():
        m = _GPU.match(line)
        if m:
            flush()
            cur = {"bus": m.group(1)}
            section = ""
            continue
        if not cur:
            continue
        kv = _KV.match(line)
        if not kv:
            if line.startswith("    ") and not line.startswith("     ") and line.strip():
                section = line.strip()  # "    MIG Mode", "    Utilization": headers without a colon
            continue
        indent, key, val = len(kv.group(1)), kv.group(2).strip(), kv.group(3).strip()
        if indent == 4:
            section = key if not val else ""
        if key == "Current" and section == "MIG Mode":
            cur["mig"] = val
        elif key == "Gpu" and section == "Utilization":
            cur["util"] = val
        elif key in ("Product Name", "GPU UUID", "Tx Throughput", "Rx Throughput", "Replays Since Reset"):
            cur.setdefault(key, val)
    flush()
    return gpus


class FakeNvml:
    """Module-like object: pass it where the code expects the pynvml module."""

    def __init__(self, gpus: list[FakeGpu], throughput_delay_s: float = 0.0) -> None:
        self.gpus = gpus
        self.clock_us = 1_700_000_000_000_000
        self.throughput_delay_s = throughput_delay_s  # the real call blocks ~20 ms
        self.calls: dict[str, int] = {}
        self.initialised = False

    @classmethod
    def from_q(cls, text: str, **kw: Any) -> FakeNvml:
        return cls(parse_q(text), **kw)

    def __getattr__(self, name: str) -> Any:
        # constants and exception classes come from the real module
        return getattr(real, name)

    def advance(self, seconds: float) -> None:
        self.clock_us += int(seconds * 1e6)
        for g in self.gpus:
            g.tx_bytes += g.tx_kbps * 1024 * seconds
            g.rx_bytes += g.rx_kbps * 1024 * seconds

    def _count(self, fn: str) -> None:
        self.calls[fn] = self.calls.get(fn, 0) + 1

    def _gpu(self, handle: Any) -> FakeGpu:
        g = self.gpus[handle]
        if g.lost:
            raise NVMLError(real.NVML_ERROR_GPU_IS_LOST)
        return g

    # -- the pynvml API subset tailguard uses ------------------------------------------------
    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        if not 0 <= index < len(self.gpus):
            raise NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        if isinstance(handle, tuple):
            return self.gpus[handle[0]].migs[handle[1]].uuid
        return self._gpu(handle).uuid

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        g = self._gpu(handle)
        info = real.nvmlPciInfo_t()
        info.busId = g.bus_id.encode()
        return info

    def nvmlDeviceGetNumaNodeId(self, handle: Any) -> int:
        g = self._gpu(handle)
        if g.numa is None:
            raise NVMLError(real.NVML_ERROR_NOT_SUPPORTED)
        return g.numa

    def nvmlDeviceGetMemoryAffinity(self, handle: Any, nodeSetSize: int, scope: int) -> Any:
        g = self._gpu(handle)
        if g.numa is None:
            raise NVMLError(real.NVML_ERROR_NOT_SUPPORTED)
        arr = (ctypes.c_ulonglong * nodeSetSize)()
        arr[g.numa // 64] |= 1 << (g.numa % 64)
        return arr

    def nvmlDeviceGetCpuAffinity(self, handle: Any, cpuSetSize: int) -> Any:
        g = self._gpu(handle)
        arr = (ctypes.c_ulonglong * cpuSetSize)()
        for c in g.cpus:
            if c // 64 < cpuSetSize:
                arr[c // 64] |= 1 << (c % 64)
        return arr

    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: list[int]) -> Any:
        self._count("nvmlDeviceGetFieldValues")
        g = self._gpu(handle)
        values = (real.c_nvmlFieldValue_t * len(fieldIds))()
        for i, fid in enumerate(fieldIds):
            v = values[i]
            v.fieldId = fid
            v.timestamp = self.clock_us
            v.valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
            if fid == NVML_FI_DEV_PCIE_REPLAY_COUNTER:
                v.nvmlReturn = NVML_SUCCESS
                v.value.ullVal = g.replays
            elif fid in (NVML_FI_DEV_PCIE_COUNT_TX_BYTES, NVML_FI_DEV_PCIE_COUNT_RX_BYTES) and g.fields_supported:
                v.nvmlReturn = NVML_SUCCESS
                v.value.ullVal = int(g.tx_bytes if fid == NVML_FI_DEV_PCIE_COUNT_TX_BYTES else g.rx_bytes)
            else:
                v.nvmlReturn = real.NVML_ERROR_NOT_SUPPORTED
        return values

    def nvmlDeviceGetPcieThroughput(self, device: Any, counter: int) -> int:
        self._count("nvmlDeviceGetPcieThroughput")
        g = self._gpu(device)
        if self.throughput_delay_s:
            time.sleep(self.throughput_delay_s)
        return g.tx_kbps if counter == NVML_PCIE_UTIL_TX_BYTES else g.rx_kbps

    def nvmlDeviceGetPcieReplayCounter(self, handle: Any) -> int:
        return self._gpu(handle).replays

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        g = self._gpu(handle)
        if g.util_pct is None or g.mig_enabled:
            raise NVMLError(real.NVML_ERROR_NOT_SUPPORTED)
        u = real.c_nvmlUtilization_t()
        u.gpu = g.util_pct
        u.memory = 0
        return u

    def nvmlDeviceGetMigMode(self, device: Any) -> list[int]:
        g = self._gpu(device)
        mode = NVML_DEVICE_MIG_ENABLE if g.mig_enabled else NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any) -> int:
        return 7 if self._gpu(device).mig_enabled else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int) -> Any:
        g = self._gpu(device)
        if index >= len(g.migs):
            raise NVMLError(real.NVML_ERROR_NOT_FOUND)
        return (device, index)

    def nvmlDeviceGetGpuInstanceId(self, device: Any) -> int:
        gpu, i = device
        return self.gpus[gpu].migs[i].gi_id

    def nvmlDeviceGetGpuInstanceById(self, device: Any, gpuInstanceId: int) -> Any:
        for m in self._gpu(device).migs:
            if m.gi_id == gpuInstanceId:
                return (device, m)
        raise NVMLError(real.NVML_ERROR_NOT_FOUND)

    def nvmlGpuInstanceGetInfo(self, gpuInstance: Any) -> Any:
        _dev, m = gpuInstance
        info = real.c_nvmlGpuInstanceInfo_t()
        info.id = m.gi_id
        info.profileId = m.profile_id
        info.placement.start = m.start
        info.placement.size = 1
        return info
