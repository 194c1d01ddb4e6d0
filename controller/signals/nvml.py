"""NVML through nvidia-ml-py (module `pynvml`).

PCIe bytes and replays are read as cumulative field values (`nvmlDeviceGetFieldValues` with
NVML_FI_DEV_PCIE_COUNT_TX_BYTES / _RX_BYTES / NVML_FI_DEV_PCIE_REPLAY_COUNTER: one non-blocking
call per GPU) and turned into rates. Where those fields are not supported we fall back to
`nvmlDeviceGetPcieThroughput`, which blocks for its 20 ms measuring window and reports KB/s
(NVML API reference); those calls run off the event loop, all in parallel. Not supported under vGPU.

Errors map to meaning: NotSupported -> that field is None with a reason; GpuIsLost -> the GPU is
marked lost and an alarm event is raised; anything else -> the field is None with NVML's message.
A value no GPU gives (a wrong type, NaN, negative, out of range: a broken or mismatched binding) is
an NvmlValueError naming the call and the value, handled the same way. Every reason names the NVML
call that failed: an NVMLError's ("NVML error: nvmlDeviceGetMigMode: Unknown Error"), and a
TypeError, OSError or ctypes.ArgumentError from pynvml's ctypes layer (NvmlCallError) too.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from controller.signals.base import InlineOrThread, Unavailable
from controller.signals.rates import CounterRates
from fsm.mig import GpuModel, Slot, model_by_name
from schema.jsontext import U64_MAX
from schema.problems import short_text

KIB = 1024  # NVML's "KB/s" for PCIe throughput: kibibytes, as nvidia-smi prints it
MAX_GPUS = 1024  # more than any host has; a bigger count is garbage (range() over it would not end)
MAX_MIG_DEVICES = 64  # 7 on every MIG GPU so far


@dataclass(frozen=True, slots=True)
class MigDevice:
    uuid: str
    gi_id: int
    slot: Slot | None  # profile@start, None when the profile is not in fsm.mig's tables


@dataclass(frozen=True, slots=True)
class NvmlGpu:
    index: int
    bus_id: str | None = None
    uuid: str | None = None
    model: str | None = None
    numa: int | None = None
    cpus: tuple[int, ...] = ()
    pcie_tx_bps: float | None = None
    pcie_rx_bps: float | None = None
    pcie_replay_rate: float | None = None
    util: float | None = None
    mig_enabled: bool | None = None
    mig_devices: tuple[MigDevice, ...] | None = None
    lost: bool = False


@dataclass(frozen=True, slots=True)
class NvmlReading:
    gpus: Mapping[str, NvmlGpu]
    unavailable: Mapping[str, str] = field(default_factory=dict)  # "nvml:gpu0:util" -> reason
    events: tuple[str, ...] = ()  # alarms: a GPU lost


class NvmlValueError(ValueError):
    """pynvml returned a value no GPU gives; names the call (or field) and the value, shortened."""

    def __init__(self, what: str, value: object) -> None:
        shown = repr(value)
        super().__init__(f"{what} returned {shown if len(shown) <= 40 else shown[:37] + '...'}")


class NvmlCallError(Exception):
    """A pynvml call raised something other than NVMLError: names the call and what it raised."""

    def __init__(self, call: str, e: BaseException) -> None:
        super().__init__(f"{call} raised {type(e).__name__}: {short_text(str(e), 120)}")


# What pynvml's ctypes layer raises besides NVMLError (a binding that does not match the library):
# uncaught, it left the sampler and the runner named no call.
_BINDING_ERRORS = (TypeError, OSError, ctypes.ArgumentError)


def _call(n: Any, fn: str, *args: Any) -> Any:
    """n.<fn>(*args), the call named in what it raises. An NVMLError keeps its class (NotSupported,
    GpuIsLost, NotFound each mean something to the caller) and gets the name as a note (_why)."""
    try:
        return getattr(n, fn)(*args)
    except n.NVMLError as e:
        e.add_note(fn)
        raise
    except _BINDING_ERRORS as e:
        raise NvmlCallError(fn, e) from e


def _why(e: Exception) -> str:
    """An NVMLError as a reason, led by the call _call noted on it."""
    notes = getattr(e, "__notes__", None)
    return f"{notes[-1]}: {e}" if notes else str(e)


def _int(v: Any, what: str, hi: int = U64_MAX) -> int:
    """An unsigned NVML integer (ctypes c_uint / c_ulonglong give Python ints), within [0, hi]."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
        raise NvmlValueError(what, v)
    return v


def _text(v: Any) -> str:
    # NVML's char arrays come as bytes; a driver's non-UTF-8 byte must not lose the whole GPU
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _cpus_from_masks(masks: Any, what: str) -> tuple[int, ...]:
    try:
        words = list(masks)
    except TypeError:
        raise NvmlValueError(what, masks) from None
    out = []
    for word_i, word in enumerate(words):
        w = _int(word, what)  # 64-bit words: a negative one would shift right for ever
        bit = 0
        while w:
            if w & 1:
                out.append(word_i * 64 + bit)
            w >>= 1
            bit += 1
    return tuple(out)


class NvmlSampler:
    """One sampler for all GPUs. `nvml` is the pynvml module (a fake in tests)."""

    name = "nvml"

    def __init__(
        self,
        gpus: Mapping[str, int] | None = None,
        nvml: ModuleType | Any | None = None,
        timeout_s: float = 1.0,
        mig_refresh_s: float = 10.0,
    ) -> None:
        self.timeout_s = timeout_s
        # The MIG device list costs 4 NVML calls per instance; it changes only when someone
        # reconfigures the GPU, so it is re-read every mig_refresh_s, when MIG mode flips, and when
        # the daemon calls invalidate_mig() after its reconciler changed a layout.
        self.mig_refresh_s = mig_refresh_s
        self._mig_cache: dict[str, tuple[float, tuple[MigDevice, ...], dict[str, str]]] = {}
        self._want = dict(gpus) if gpus else None
        self._nvml = nvml
        self._init_error: str | None = None
        self._ready = False
        self._static: dict[str, NvmlGpu] = {}
        self._handles: dict[str, Any] = {}
        self._rates = CounterRates(max_rate=1e12)  # > any PCIe link: a jump beyond is a wrap/reset
        self._replays = CounterRates(max_rate=1e9)
        self._lost: set[str] = set()
        self._runner = InlineOrThread()
        self._tables: dict[str, GpuModel] = {}  # gpu -> the MIG profile table in force (driver's)

    def use_mig_tables(self, tables: Mapping[str, GpuModel]) -> None:
        """Map MIG devices' profile IDs through these tables (the driver's listing) from now on."""
        self._tables = dict(tables)
        self._mig_cache.clear()

    # -- setup -------------------------------------------------------------------------------
    def _ensure(self) -> str | None:
        if self._ready:
            return None
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as e:
                return f"pynvml (nvidia-ml-py) is not installed: {e}"
        n = self._nvml
        try:
            _call(n, "nvmlInit")
            count = _int(_call(n, "nvmlDeviceGetCount"), "nvmlDeviceGetCount", MAX_GPUS)
        except n.NVMLError as e:
            return f"NVML init failed: {_why(e)}"
        except (NvmlValueError, NvmlCallError) as e:
            return f"NVML init failed: {e}"
        want = self._want if self._want is not None else {f"gpu{i}": i for i in range(count)}
        for name, idx in want.items():
            if idx >= count:
                return f"{name}: NVML index {idx} but only {count} GPUs"
            try:
                h = _call(n, "nvmlDeviceGetHandleByIndex", idx)
                self._handles[name] = h
                self._static[name] = self._read_static(idx, h)
            except n.NVMLError as e:
                return f"{name}: no NVML handle for index {idx}: {e}"
            except NvmlCallError as e:
                return f"NVML init failed: {name}: {e}"
        self._ready = True
        return None

    def _read_static(self, idx: int, h: Any) -> NvmlGpu:
        n = self._nvml
        assert n is not None

        def opt(fn: str, *args: Any, read: Callable[[Any], Any] = _text) -> Any:
            """`read` of the call's answer; None when NVML has none or it makes no sense."""
            try:
                v = _call(n, fn, h, *args)
                return None if v is None else read(v)
            except (n.NVMLError, NvmlValueError, UnicodeDecodeError):  # pynvml decodes char arrays itself
                return None

        def numa_id(v: Any) -> int | None:
            return None if isinstance(v, int) and v < 0 else _int(v, "nvmlDeviceGetNumaNodeId", 2**31 - 1)

        # the NUMA node the GPU is attached to: its memory-affinity node set (x86 hosts);
        # nvmlDeviceGetNumaNodeId is the GPU's own node where GPU memory is a NUMA node (Grace)
        numa = None
        scope = getattr(n, "NVML_AFFINITY_SCOPE_NODE", 0)
        nodes = opt("nvmlDeviceGetMemoryAffinity", 4, scope, read=lambda m: _cpus_from_masks(m, "memory affinity"))
        if nodes is not None:
            numa = nodes[0] if len(nodes) == 1 else None
        if numa is None:
            numa = opt("nvmlDeviceGetNumaNodeId", read=numa_id)
        words = max(16, ((os.cpu_count() or 64) + 63) // 64)  # >= 1024 CPUs: bits past the host are 0
        cpus = opt("nvmlDeviceGetCpuAffinity", words, read=lambda m: _cpus_from_masks(m, "CPU affinity"))
        return NvmlGpu(
            index=idx,
            bus_id=opt("nvmlDeviceGetPciInfo", read=lambda p: _text(p.busId)),
            uuid=opt("nvmlDeviceGetUUID"),
            model=opt("nvmlDeviceGetName"),
            numa=numa,
            cpus=cpus or (),
        )

    # -- one tick ----------------------------------------------------------------------------
    def read_fields(self, now: float) -> tuple[dict[str, dict[str, Any]], dict[str, str], list[str], list[str]]:
        """Everything but the blocking throughput fallback. Returns per-GPU values, reasons,
        events, and the GPUs that need the fallback."""
        n = self._nvml
        assert n is not None
        fids = [n.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, n.NVML_FI_DEV_PCIE_COUNT_RX_BYTES, n.NVML_FI_DEV_PCIE_REPLAY_COUNTER]
        names = dict(zip(fids, ("pcie_tx", "pcie_rx", "pcie_replay"), strict=True))
        values: dict[str, dict[str, Any]] = {}
        reasons: dict[str, str] = {}
        events: list[str] = []
        fallback: list[str] = []
        for gname, h in self._handles.items():
            v: dict[str, Any] = {}
            values[gname] = v
            try:
                fvs = _call(n, "nvmlDeviceGetFieldValues", h, fids)
                got: dict[int, tuple[float, float]] = {}
                for fv in fvs:
                    fid = _int(fv.fieldId, "field value fieldId", 2**32 - 1)
                    what = names.get(fid, f"field{fid}")
                    ret = _int(fv.nvmlReturn, f"field value {what} nvmlReturn", 2**32 - 1)
                    if ret == n.NVML_SUCCESS:
                        stamp = _int(fv.timestamp, f"field value {what} timestamp", 2**63 - 1)
                        ts = stamp / 1e6 if stamp > 0 else now
                        got[fid] = (ts, float(_int(fv.value.ullVal, f"field value {what}")))
                    else:
                        reasons[f"nvml:{gname}:{what}"] = f"field value: {n.NVMLError(ret)}"
                for key, fid in (("tx", fids[0]), ("rx", fids[1])):
                    if fid in got:
                        t, val = got[fid]
                        v[key] = self._rates.update((gname, key), t, val)
                if fids[0] not in got or fids[1] not in got:
                    fallback.append(gname)
                if fids[2] in got:
                    t, val = got[fids[2]]
                    v["replay"] = self._replays.update((gname, "replay"), t, val)
                else:
                    try:
                        replays = _call(n, "nvmlDeviceGetPcieReplayCounter", h)
                        count = float(_int(replays, "nvmlDeviceGetPcieReplayCounter"))
                        v["replay"] = self._replays.update((gname, "replay"), now, count)
                    except n.NVMLError_NotSupported:
                        pass
                try:
                    util = _call(n, "nvmlDeviceGetUtilizationRates", h)
                    v["util"] = _int(util.gpu, "nvmlDeviceGetUtilizationRates gpu", 100) / 100.0
                except n.NVMLError_NotSupported:
                    reasons[f"nvml:{gname}:util"] = "utilization not supported (MIG mode or vGPU)"
                mode = _call(n, "nvmlDeviceGetMigMode", h)  # [current, pending]
                if not isinstance(mode, list | tuple) or len(mode) != 2:
                    raise NvmlValueError("nvmlDeviceGetMigMode", mode)
                v["mig"] = _int(mode[0], "nvmlDeviceGetMigMode") == n.NVML_DEVICE_MIG_ENABLE
                if v["mig"]:
                    cached = self._mig_cache.get(gname)
                    if cached is None or not 0 <= now - cached[0] < self.mig_refresh_s:
                        why: dict[str, str] = {}
                        cached = (now, self._mig_devices(gname, h, why), why)
                        self._mig_cache[gname] = cached
                    v["mig_devices"] = cached[1]
                    reasons.update(cached[2])
                else:
                    self._mig_cache.pop(gname, None)
                self._lost.discard(gname)
            except n.NVMLError_GpuIsLost:
                v["lost"] = True
                reasons[f"nvml:{gname}"] = "GPU is lost (fell off the bus?)"
                if gname not in self._lost:
                    events.append(f"{gname}: GPU is lost (NVML_ERROR_GPU_IS_LOST)")
                self._lost.add(gname)
            except n.NVMLError as e:
                reasons[f"nvml:{gname}"] = f"NVML error: {_why(e)}"
            except NvmlValueError as e:
                reasons[f"nvml:{gname}"] = f"odd NVML answer: {e}"
            except NvmlCallError as e:
                reasons[f"nvml:{gname}"] = f"NVML call failed: {e}"
        return values, reasons, events, fallback

    def invalidate_mig(self, gpu: str | None = None) -> None:
        """Forget the cached MIG device list (of one GPU, or all): re-read on the next sample."""
        if gpu is None:
            self._mig_cache.clear()
        else:
            self._mig_cache.pop(gpu, None)

    def _mig_devices(self, gname: str, h: Any, reasons: dict[str, str]) -> tuple[MigDevice, ...]:
        n = self._nvml
        assert n is not None
        model = self._tables.get(gname)
        static = self._static.get(gname)
        if model is None and static and static.model:
            try:
                model = model_by_name(static.model)
            except KeyError:
                reasons[f"nvml:{gname}:layout"] = f"GPU model {static.model!r} not in fsm.mig tables"
        out = []
        most = _int(_call(n, "nvmlDeviceGetMaxMigDeviceCount", h), "nvmlDeviceGetMaxMigDeviceCount", MAX_MIG_DEVICES)
        for i in range(most):
            try:
                mh = _call(n, "nvmlDeviceGetMigDeviceHandleByIndex", h, i)
            except n.NVMLError_NotFound:
                continue
            try:
                uuid = _text(_call(n, "nvmlDeviceGetUUID", mh))
            except UnicodeDecodeError as e:  # raised inside pynvml, which decodes the char array
                raise NvmlValueError("nvmlDeviceGetUUID", e.object) from None
            gi = _int(_call(n, "nvmlDeviceGetGpuInstanceId", mh), "nvmlDeviceGetGpuInstanceId", 2**32 - 1)
            info = _call(n, "nvmlGpuInstanceGetInfo", _call(n, "nvmlDeviceGetGpuInstanceById", h, gi))
            slot = None
            if model is not None:
                start = _int(info.placement.start, "nvmlGpuInstanceGetInfo placement.start", 2**32 - 1)
                pid = _int(info.profileId, "nvmlGpuInstanceGetInfo profileId", 2**32 - 1)
                try:
                    slot = Slot(start, model.profile(pid).name)
                except KeyError as e:
                    reasons[f"nvml:{gname}:layout"] = str(e)
            out.append(MigDevice(uuid, gi, slot))
        return tuple(out)

    def _ensure_and_read(
        self, now: float
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str], list[str], list[str]] | Unavailable:
        err = self._ensure()  # one hop off the event loop for both (a thread hop costs ~0.1 ms)
        if err is not None:
            return Unavailable(err)
        return self.read_fields(now)

    def _throughput(self, gname: str, counter: int) -> float | str:
        """bytes/s, else why not."""
        n = self._nvml
        assert n is not None
        try:
            kbs = _call(n, "nvmlDeviceGetPcieThroughput", self._handles[gname], counter)
            kbs = _int(kbs, "nvmlDeviceGetPcieThroughput")
        except n.NVMLError_NotSupported:
            return "PCIe counters and throughput not supported (vGPU?)"
        except n.NVMLError as e:  # a GPU lost, NVML's timeout: not "not supported"
            return f"NVML error: {_why(e)}"
        except NvmlValueError as e:
            return f"odd NVML answer: {e}"
        except NvmlCallError as e:
            return f"NVML call failed: {e}"
        return float(kbs) * KIB

    async def sample(self, now: float) -> NvmlReading | Unavailable:
        if not self._ready:  # nvmlInit can take a while: never on the loop
            err = await asyncio.to_thread(self._ensure)
            if err is not None:
                return Unavailable(err)
        # field values are non-blocking: read on the loop while that stays cheap (InlineOrThread)
        got = await self._runner.call(self._ensure_and_read, now)
        if isinstance(got, Unavailable):
            return got
        n = self._nvml
        assert n is not None
        values, reasons, events, fallback = got
        if fallback:
            calls = [(g, c) for g in fallback for c in (n.NVML_PCIE_UTIL_TX_BYTES, n.NVML_PCIE_UTIL_RX_BYTES)]
            res = await asyncio.gather(*(asyncio.to_thread(self._throughput, g, c) for g, c in calls))
            for (g, c), r in zip(calls, res, strict=True):
                key = "tx" if c == n.NVML_PCIE_UTIL_TX_BYTES else "rx"
                if isinstance(r, str):
                    reasons[f"nvml:{g}:pcie_{key}"] = r
                else:
                    values[g][key] = r
        gpus = {}
        for gname, st in self._static.items():
            v = values.get(gname, {})
            devs = v.get("mig_devices")
            gpus[gname] = NvmlGpu(
                index=st.index,
                bus_id=st.bus_id,
                uuid=st.uuid,
                model=st.model,
                numa=st.numa,
                cpus=st.cpus,
                pcie_tx_bps=v.get("tx"),
                pcie_rx_bps=v.get("rx"),
                pcie_replay_rate=v.get("replay"),
                util=v.get("util"),
                mig_enabled=v.get("mig"),
                mig_devices=devs,
                lost=bool(v.get("lost", False)),
            )
        return NvmlReading(gpus, reasons, tuple(events))
