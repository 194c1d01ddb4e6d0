"""DCGM profiling metrics: through `pydcgm` when a DCGM install provides it, else a scrape of a
dcgm-exporter endpoint.

Per GPU and per MIG instance (labels GPU_I_ID, GPU_I_PROFILE): SM active, DRAM active. Per GPU:
PCIe TX/RX bytes/s and the replay counter. Facts from dcgm-exporter's etc/default-counters.csv
(fixtures): DCGM_FI_PROF_PCIE_TX/RX_BYTES are gauges in bytes per second; they are not reported
per MIG instance; DCGM_FI_PROF_SM_ACTIVE is commented out by default, so its absence is reported
with that hint rather than as an empty value.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.signals.base import ParseError, Unavailable
from controller.signals.http import FetchError, fetch_text
from controller.signals.latency import Fetch
from controller.signals.promtext import parse_samples
from controller.signals.rates import CounterRates
from fsm.mig import PROFILE_NAME
from schema.jsontext import ascii_digits, shown, text_lines

SM_ACTIVE = "DCGM_FI_PROF_SM_ACTIVE"
DRAM_ACTIVE = "DCGM_FI_PROF_DRAM_ACTIVE"
PCIE_TX = "DCGM_FI_PROF_PCIE_TX_BYTES"
PCIE_RX = "DCGM_FI_PROF_PCIE_RX_BYTES"
REPLAY = "DCGM_FI_DEV_PCIE_REPLAY_COUNTER"
GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
FAMILIES = (SM_ACTIVE, DRAM_ACTIVE, PCIE_TX, PCIE_RX, REPLAY, GPU_UTIL)

_MAX_DIGITS = 9  # GPU and GPU instance indexes
# A PCIe 6.0 x16 link moves ~121 GB/s each way; a terabyte a second is no PCIe link's
MAX_PCIE_BPS = 1e12

# What each family's value must be, and its name in a reason's key (dcgm:gpu<i>[:gi<j>]:<name>)
_WANTED = {
    SM_ACTIVE: ("sm_active", "a fraction 0-1"),
    DRAM_ACTIVE: ("dram_active", "a fraction 0-1"),
    PCIE_TX: ("pcie_tx", f"a byte rate 0-{MAX_PCIE_BPS:g}/s"),
    PCIE_RX: ("pcie_rx", f"a byte rate 0-{MAX_PCIE_BPS:g}/s"),
    REPLAY: ("pcie_replay", "a count >= 0"),
    GPU_UTIL: ("util", "a percentage 0-100"),
}

SM_ACTIVE_HINT = (
    f"{SM_ACTIVE} is not in the scrape: dcgm-exporter's default counters CSV has it commented out; "
    "uncomment it (and DCGM_FI_PROF_SM_OCCUPANCY if wanted) in the counters file"
)


@dataclass(frozen=True, slots=True)
class DcgmInstance:
    gi_id: int
    profile: str
    sm_active: float | None = None
    dram_active: float | None = None


@dataclass(frozen=True, slots=True)
class DcgmGpu:
    index: int
    uuid: str | None = None
    sm_active: float | None = None
    dram_active: float | None = None
    pcie_tx_bps: float | None = None
    pcie_rx_bps: float | None = None
    pcie_replay_rate: float | None = None
    util: float | None = None
    instances: tuple[DcgmInstance, ...] = ()


@dataclass(frozen=True, slots=True)
class DcgmReading:
    gpus: Mapping[int, DcgmGpu]  # by DCGM GPU index (the exporter's `gpu` label)
    unavailable: Mapping[str, str] = field(default_factory=dict)


def enabled_counters(csv_text: str, source: str = "counters.csv") -> dict[str, str]:
    """Field name -> type for the uncommented rows of a dcgm-exporter counters CSV."""
    out: dict[str, str] = {}
    for n, line in enumerate(text_lines(csv_text), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            row = next(csv.reader(io.StringIO(s), skipinitialspace=True))
        except csv.Error as e:  # a lone \r inside the line ("new-line character seen in unquoted field")
            raise ParseError(source, n, f"not a CSV row: {str(e).split(' - ')[0]}") from None
        if len(row) < 2 or not row[0].strip().startswith("DCGM_"):
            raise ParseError(source, n, f"expected 'DCGM_FIELD, type, help', got {s[:80]!r}")
        out[row[0].strip()] = row[1].strip()
    return out


class DcgmExporterSampler:
    name = "dcgm"

    def __init__(self, url: str, timeout_s: float = 1.0, fetch: Fetch = fetch_text) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._fetch = fetch
        self._replays = CounterRates(max_rate=1e9)

    def parse(self, text: str, now: float) -> DcgmReading:
        samples = parse_samples(text, FAMILIES, self.url)
        per_gpu: dict[int, dict[str, float]] = {}
        uuids: dict[int, str] = {}
        inst: dict[tuple[int, int], dict[str, float | str]] = {}
        seen: set[str] = set()
        at: dict[tuple[int, int | None, str], int] = {}  # (gpu, instance, family) -> its line
        skipped: dict[str, str] = {}  # reasons for series left out
        wanted = frozenset(FAMILIES)
        for s in samples:
            name, labels = s.name, s.labels
            if name not in wanted:
                continue
            seen.add(name)
            g_txt = labels.get("gpu")
            if g_txt is None:
                raise ParseError(self.url, s.line, f"{name} sample without a numeric 'gpu' label")
            g = _index(g_txt)
            if g is None:
                raise ParseError(self.url, s.line, f"{name}: 'gpu' label {g_txt[:12]!r} is not a GPU index")
            gi = labels.get("GPU_I_ID")
            if not gi and labels.get("GPU_I_PROFILE"):
                # A MIG instance's series that says not which instance: read as the whole GPU's, one
                # instance's SM active was the GPU's, and two made the whole scrape "given twice".
                skipped[f"dcgm:gpu{g}:gi"] = (
                    f"{self.url}: line {s.line}: {name} for GPU {g} skipped: GPU_I_PROFILE"
                    f" {shown(labels['GPU_I_PROFILE'])} without a GPU_I_ID (a MIG instance's series, which one unknown)"
                )
                continue
            if gi:
                gi_id = _index(gi)
                if gi_id is None:
                    raise ParseError(self.url, s.line, f"GPU_I_ID {gi[:20]!r} is not a number")
                profile = labels.get("GPU_I_PROFILE", "")
                if profile and not PROFILE_NAME.fullmatch(profile):
                    # The GI id still places the series, but a label that is no profile name says
                    # the series is not what it seems: that one is left out, not the whole scrape.
                    skipped[f"dcgm:gpu{g}:gi{gi_id}:profile"] = (
                        f"{self.url}: line {s.line}: {name} for GPU {g} instance {gi_id} skipped:"
                        f" GPU_I_PROFILE {shown(profile)} is no MIG profile name"
                    )
                    continue
                key = (g, gi_id)
                d = inst.get(key)
                if d is None:
                    d = inst[key] = {"profile": profile}
                _once(d, name, s.value, self.url, s.line, f"GPU {g} instance {gi_id}")
                d[name] = s.value
                at[(g, gi_id, name)] = s.line
                continue
            v = per_gpu.get(g)
            if v is None:
                v = per_gpu[g] = {}
            _once(v, name, s.value, self.url, s.line, f"GPU {g}")
            v[name] = s.value
            at[(g, None, name)] = s.line
            uuid = labels.get("UUID")
            if uuid is not None:
                uuids[g] = uuid
        reasons: dict[str, str] = dict(skipped)
        if not samples:
            reasons["dcgm"] = f"{self.url}: none of {', '.join(FAMILIES)} in the scrape"
        if SM_ACTIVE not in seen:
            reasons["dcgm:sm_active"] = SM_ACTIVE_HINT
        for fam, what in ((DRAM_ACTIVE, "dram_active"), (PCIE_TX, "pcie_tx"), (PCIE_RX, "pcie_rx")):
            if fam not in seen:
                reasons[f"dcgm:{what}"] = f"{fam} is not in the scrape (not in the exporter's counters file)"
        gpus: dict[int, DcgmGpu] = {}
        by_gpu: dict[int, dict[int, dict[str, float | str]]] = {}
        for (gpu_i, gi_id), d in inst.items():
            by_gpu.setdefault(gpu_i, {})[gi_id] = d
        for g in sorted(set(per_gpu) | set(by_gpu)):
            v = per_gpu.get(g, {})
            replay = _nonneg(v.get(REPLAY))  # NaN would be remembered and make every later rate NaN
            util = v.get(GPU_UTIL)
            instances = tuple(
                DcgmInstance(gi, str(d["profile"]), _frac(d.get(SM_ACTIVE)), _frac(d.get(DRAM_ACTIVE)))
                for gi, d in sorted(by_gpu.get(g, {}).items())
            )
            gpus[g] = DcgmGpu(
                index=g,
                uuid=uuids.get(g),
                sm_active=_frac(v.get(SM_ACTIVE)),
                dram_active=_frac(v.get(DRAM_ACTIVE)),
                pcie_tx_bps=_bps(v.get(PCIE_TX)),
                pcie_rx_bps=_bps(v.get(PCIE_RX)),
                pcie_replay_rate=None if replay is None else self._replays.update(g, now, replay),
                util=None if util is None else _frac(util / 100.0),
                instances=instances,
            )
            got = gpus[g]
            read = {SM_ACTIVE: got.sm_active, DRAM_ACTIVE: got.dram_active, PCIE_TX: got.pcie_tx_bps}
            read.update({PCIE_RX: got.pcie_rx_bps, REPLAY: replay, GPU_UTIL: got.util})
            reasons.update(self._out_of_range(g, None, v, read, at))
            for x in instances:
                read = {SM_ACTIVE: x.sm_active, DRAM_ACTIVE: x.dram_active}
                reasons.update(self._out_of_range(g, x.gi_id, by_gpu[g][x.gi_id], read, at))
        return DcgmReading(gpus, reasons)

    def _out_of_range(
        self,
        g: int,
        gi_id: int | None,
        raw: Mapping[str, float | str],
        read: Mapping[str, float | None],
        at: Mapping[tuple[int, int | None, str], int],
    ) -> dict[str, str]:
        """Reasons for the values in the scrape read as None: out of their range (NaN, 150% util,
        1e300 B/s), each was None and said nothing."""
        out: dict[str, str] = {}
        for fam, value in read.items():
            if fam in raw and value is None:
                what, want = _WANTED[fam]
                where = f"GPU {g}" if gi_id is None else f"GPU {g} instance {gi_id}"
                key = f"dcgm:gpu{g}:{what}" if gi_id is None else f"dcgm:gpu{g}:gi{gi_id}:{what}"
                line = at[(g, gi_id, fam)]
                out[key] = f"{self.url}: line {line}: {fam} for {where} is {shown(raw[fam])}, not {want}"
        return out

    async def sample(self, now: float) -> DcgmReading | Unavailable:
        try:
            text = await self._fetch(self.url, self.timeout_s)
            return self.parse(text, now)
        except (FetchError, ParseError) as e:
            return Unavailable(str(e))


def _once(seen: Mapping[str, object], name: str, value: float, url: str, line: int, what: str) -> None:
    """A field of one GPU (or instance) given again must say the same: in Kubernetes the exporter
    copies a device's series once per pod sharing it (pod labels apart, dcgm-exporter issues 340 and
    587), but two values for one device leave no way to tell which is its own."""
    before = seen.get(name)
    if name in seen and not (before == value or (before != before and value != value)):
        raise ParseError(url, line, f"{name} for {what} given twice, {before!r} and {value!r}")


def _frac(v: object) -> float | None:
    if not isinstance(v, float) or v != v or v < 0 or v > 1.0001:
        return None
    return min(v, 1.0)


def _nonneg(v: float | None) -> float | None:
    if v is None or v != v or v < 0 or v == float("inf"):
        return None
    return v


def _bps(v: float | None) -> float | None:
    """A PCIe byte rate, or None: past MAX_PCIE_BPS it is no link's (1e300 read as one before)."""
    r = _nonneg(v)
    return r if r is None or r <= MAX_PCIE_BPS else None


def _index(text: str) -> int | None:
    """A GPU or GPU instance index as the exporter writes it: ASCII digits, no leading zero (int()
    also takes "00" and other scripts' digits, and "00" beside "0" was one GPU twice)."""
    if not ascii_digits(text) or len(text) > _MAX_DIGITS or text != str(int(text)):
        return None
    return int(text)


def pydcgm_available() -> bool:
    """True when a DCGM install put its Python bindings on the path."""
    import importlib.util

    return importlib.util.find_spec("pydcgm") is not None and importlib.util.find_spec("dcgm_fields") is not None
