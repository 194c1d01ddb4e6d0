"""`nvidia-smi` for MIG: parsers for its tables and messages, and an async client.

Formats and messages follow real captures (tests/fixtures, docs/mig-profiles.md sections 3-5):
boxed tables of several widths (R460 76 columns, 79, 81), a last border that may be missing,
CRLF line ends, numbers right-aligned to width 2 in messages (`ID  9`, `GPU  0`). Parsing is by
row pattern, never by column offset. Every call has a timeout; the tool runs without a shell.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from actuators.proc import Result, ToolError, run
from fsm.mig import MAX_MEM_SLOTS, PROFILE_NAME
from schema.jsontext import ascii_digits


class NvsmiError(Exception):
    """nvidia-smi failed or said something we could not understand; `nvml` is its error string."""

    def __init__(self, message: str, nvml: str = "") -> None:
        super().__init__(message)
        self.nvml = nvml

    @property
    def in_use(self) -> bool:
        return self.nvml == "In use by another client"


class MigDisabled(NvsmiError):
    pass


@dataclass(frozen=True, slots=True)
class GiRow:
    gpu: int
    name: str  # "3g.20gb" (without "MIG ")
    profile_id: int
    gi: int
    start: int
    size: int


@dataclass(frozen=True, slots=True)
class CiRow:
    gpu: int
    gi: int
    name: str
    profile_id: int
    ci: int
    start: int | None = None
    size: int | None = None


@dataclass(frozen=True, slots=True)
class LgipRow:
    gpu: int
    name: str
    profile_id: int
    free: int
    total: int
    gib: float
    sm: int
    dec: int
    enc: int
    ce: int
    jpg: int
    ofa: int


@dataclass(frozen=True, slots=True)
class Placements:
    gpu: int
    profile_id: int
    starts: tuple[int, ...]
    size: int


@dataclass(frozen=True, slots=True)
class MigDevice:
    name: str
    index: int
    uuid: str


@dataclass(frozen=True, slots=True)
class GpuEntry:
    index: int
    name: str
    uuid: str
    mig: tuple[MigDevice, ...] = ()


# (?a) on every pattern: \d and \s are ASCII only (the tool prints no other digits; "GPU ١" read as
# GPU 1 before).
_LGI = re.compile(r"(?a)^\|\s*(\d+)\s+MIG\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+):(\d+)\s*\|?$")
_LCI = re.compile(r"(?a)^\|\s*(\d+)\s+(\d+)\s+MIG\s+(\S+)\s+(\d+)\s+(\d+)(?:\s+(\d+):(\d+))?\s*\|?$")
_LGIP1 = re.compile(
    r"(?a)^\|\s*(\d+)\s+MIG\s+(\S+)\s+(\d+)\s+(\d+)/(\d+)\s+([\d.]+)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s*\|?$"
)
_LGIP2 = re.compile(r"(?a)^\|\s+(\d+)\s+(\d+)\s+(\d+)\s*\|?$")
# A table's data row (-lgi, -lci, -lgip): numbers, then the profile's "MIG" name. One its pattern
# does not match is an error, not skipped: a layout read back without one of its instances would
# show that slot free.
_DATA_ROW = re.compile(r"(?a)^\|\s*\d[\d\s]*MIG\s")
_LGIPP = re.compile(r"(?a)^GPU\s+(\d+)\s+Profile ID\s+(\d+)\s+Placements?\s*:\s*\{([\d,]*)\}:(\d+)$")
_L_GPU = re.compile(r"(?a)^GPU (\d+): (.+?) \(UUID: (GPU-[0-9A-Za-z-]+)\)$")
_L_MIG = re.compile(r"(?a)^MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[0-9A-Za-z/-]+)\)$")
_CGI = re.compile(
    r"(?a)^Successfully created GPU instance ID\s+(\d+) on GPU\s+(\d+) using profile MIG (\S+) \(ID\s+(\d+)\)$"
)
_CCI = re.compile(
    r"(?a)^Successfully created compute instance(?: ID\s+(\d+))? on GPU\s+(\d+) GPU instance ID\s+(\d+)"
    r" using profile MIG (\S+) \(ID\s+(\d+)\)$"
)
_DCI = re.compile(r"(?a)^Successfully destroyed compute instance ID\s+(\d+) from GPU\s+(\d+) GPU instance ID\s+(\d+)$")
_DGI = re.compile(r"(?a)^Successfully destroyed GPU instance ID\s+(\d+) from GPU\s+(\d+)$")
_FAIL = re.compile(r"(?a)^(?:Unable to|Failed to) .*: ([A-Za-z][A-Za-z ]+)$")
# "No compute instances found: Not Found" (R510, tests/fixtures/nvidia-smi-mig-lci_error_no-compute-
# instances-not-found_r510_hpe.txt): what the tool says when there is no instance to act on.
_NONE = re.compile(r"(?a)^No (?:compute|GPU) instances found: ([A-Za-z][A-Za-z ]+)$")

NO_MIG = "No MIG-enabled devices found."


# No index, ID, count or slot the tool prints has more than a few digits. A longer run is garbage,
# and int() refuses one past 4300 digits with a bare ValueError that names no line.
_MAX_DIGITS = 9
_GIB = re.compile(r"(?a)^\d{1,6}(?:\.\d{1,6})?$")


# A compute instance's name (-lci, a MIG device in -L, -cci's message): its GPU instance's profile
# name when it has all the GI's slices, else <c>c. before it (1c.3g.20gb; docs/mig-profiles.md 4).
_CI_NAME = re.compile(rf"(?:[0-9]{{1,2}}c\.)?(?:{PROFILE_NAME.pattern})")


def _profile(name: str, ln: str, what: str, pattern: re.Pattern[str] = PROFILE_NAME) -> str:
    """`name` when it is a MIG profile's name as the tool prints it (fsm.state.PROFILE_NAME, or
    `pattern`); else an error naming it and the line. The rows' patterns take any text there: a
    1g.99999999999999999999gb was read, and -lgip's names make the driver's table (its layouts')."""
    if not pattern.fullmatch(name):
        raise NvsmiError(f"{what}: {name[:40]!r} is no MIG profile name, in line {ln[:120]!r}")
    return name


def _num(s: str, ln: str, what: str) -> int:
    if len(s) > _MAX_DIGITS:
        raise NvsmiError(f"{what}: number {s[:12]}... ({len(s)} digits) out of range in line {ln[:120]!r}")
    return int(s)


def _once(key: object, seen: set[Any], ln: str, what: str, named: str) -> None:
    """`key` not `seen` before (then added to it); else an error naming it (`named`) and the line."""
    if key in seen:
        raise NvsmiError(f"{what}: {named} listed twice, again in line {ln[:120]!r}")
    seen.add(key)


def _index_once(index: int, seen: set[int], ln: str, what: str) -> None:
    """A GPU's index not `seen` before (then added to it): the tool lists each GPU once. Twice, both
    were read, and a lookup by index took the first (its name for the GPU model, its MIG devices for
    a move's UUID)."""
    _once(index, seen, ln, what, f"GPU {index}")


def _uuid_once(uuid: str, seen: set[str], ln: str, what: str) -> None:
    """A GPU or MIG device UUID not `seen` before (then added to it): each names one device. Twice,
    a lookup by UUID took the first, and a move's target could be another device. Hex digits in
    either case are one UUID (the tool prints lower case)."""
    _once(uuid.lower(), seen, ln, what, f"UUID {uuid[:80]}")


def _nums(m: re.Match[str], what: str, *groups: int) -> list[int]:
    """The match's numeric groups as ints (m.string is the line it matched)."""
    return [_num(m[g], m.string, what) for g in groups]


def _numbered(text: str) -> list[tuple[int, str]]:
    """The tool's non-blank lines, stripped, with their line numbers (from 1)."""
    return [(no, ln.strip()) for no, ln in enumerate(text.replace("\r", "").split("\n"), 1) if ln.strip()]


def _lines(text: str) -> list[str]:
    return [ln for _, ln in _numbered(text)]


def _check_common(text: str, what: str) -> None:
    if NO_MIG in text:
        raise MigDisabled(f"{what}: MIG mode is not enabled", "Not Supported")


def _row(pattern: re.Pattern[str], ln: str, what: str) -> re.Match[str] | None:
    """`pattern`'s match of a table line; None for a line that is no data row (borders, headers)."""
    m = pattern.match(ln)
    if m is None and _DATA_ROW.match(ln):
        raise NvsmiError(f"{what}: unexpected row {ln[:120]!r}")
    return m


def _table(text: str, title: str, what: str) -> list[str]:
    """The lines of a table titled `title` (inside its border: "| GPU instances: |"); an error line
    that merely says the words ("Failed to display GPU instances: ...") is no table."""
    _check_common(text, what)
    lines = _lines(text)
    if not any(ln.startswith("|") and ln[1:].lstrip().startswith(title) for ln in lines):
        raise NvsmiError(f"{what}: unexpected output (no '{title}' table): {text.strip()[:200]!r}")
    return lines


def _rows_found(rows: list[Any], text: str, what: str) -> None:
    """A table with no rows is output cut short: with none the tool says "No ... found" instead."""
    if not rows:
        raise NvsmiError(f"{what}: a table without rows (output cut short?): {text.strip()[:200]!r}")


def parse_lgi(text: str) -> list[GiRow]:
    if "No GPU instances found" in text:
        return []
    rows = []
    what = "nvidia-smi mig -lgi"
    for ln in _table(text, "GPU instances:", what):
        m = _row(_LGI, ln, what)
        if m:
            gpu, pid, gi, start, size = _nums(m, what, 1, 3, 4, 5, 6)
            rows.append(GiRow(gpu, _profile(m[2], ln, what), pid, gi, start, size))
    _rows_found(rows, text, what)
    return rows


def parse_lci(text: str) -> list[CiRow]:
    if "No compute instances found" in text:
        return []
    rows = []
    what = "nvidia-smi mig -lci"
    for ln in _table(text, "Compute instances:", what):
        m = _row(_LCI, ln, what)
        if m:
            gpu, gi, pid, ci = _nums(m, what, 1, 2, 4, 5)
            start = _num(m[6], ln, what) if m[6] is not None else None
            size = _num(m[7], ln, what) if m[7] is not None else None
            rows.append(CiRow(gpu, gi, _profile(m[3], ln, what, _CI_NAME), pid, ci, start, size))
    _rows_found(rows, text, what)
    return rows


def parse_lgip(text: str) -> list[LgipRow]:
    rows = []
    what = "nvidia-smi mig -lgip"
    lines = _table(text, "GPU instance profiles:", what)
    for i, ln in enumerate(lines):
        m = _row(_LGIP1, ln, what)
        if not m:
            continue
        name = _profile(m[2], ln, what)
        m2 = _LGIP2.match(lines[i + 1]) if i + 1 < len(lines) else None
        if not m2:
            raise NvsmiError(f"nvidia-smi mig -lgip: profile {name} has no second row (CE/JPEG/OFA)")
        # [\d.]+ also matches "1.2.3" or ".." (float() would raise) and 400 digits (float() says inf)
        if not _GIB.match(m[6]):
            raise NvsmiError(f"{what}: memory {m[6][:20]!r} is not a GiB figure in line {ln[:120]!r}")
        gpu, pid, free, total, sm, dec, enc = _nums(m, what, 1, 3, 4, 5, 8, 9, 10)
        ce, jpg, ofa = _nums(m2, what, 1, 2, 3)
        rows.append(LgipRow(gpu, name, pid, free, total, float(m[6]), sm, dec, enc, ce, jpg, ofa))
    if not rows:
        raise NvsmiError("nvidia-smi mig -lgip: no profile rows")
    return rows


def parse_lgipp(text: str) -> list[Placements]:
    what = "nvidia-smi mig -lgipp"
    _check_common(text, what)
    out = []
    for ln in _lines(text):
        m = _LGIPP.match(ln)
        if not m:
            raise NvsmiError(f"{what}: unexpected line {ln[:120]!r}")
        starts = tuple(_num(s, ln, what) for s in m[3].split(",") if s)
        gpu, pid, size = _nums(m, what, 1, 2, 4)
        out.append(Placements(gpu, pid, starts, size))
    return out


def _legacy_on_its_gpu(uuid: str, g: GpuEntry, no: int, ln: str, what: str) -> None:
    """A legacy MIG-GPU-<uuid>/gi/ci names its GPU: listed under another, the tool's output is not
    what it seems (cut and spliced?), and a move would start a tenant on the other GPU's device
    (actuators.moves.mig_uuid picks a legacy UUID by its GI id alone)."""
    if not uuid.startswith("MIG-GPU-"):
        return
    inner = uuid[len("MIG-") :].split("/", 1)[0]
    if inner.lower() != g.uuid.lower():  # hex digits in either case are one UUID
        raise NvsmiError(
            f"{what}: MIG device UUID {uuid[:80]} names GPU {inner[:80]}, not GPU {g.index}'s {g.uuid[:80]}"
            f" it is listed under, in line {no} {ln[:120]!r}"
        )


def parse_list(text: str) -> list[GpuEntry]:
    """`nvidia-smi -L`: GPUs and their MIG devices (new MIG-<uuid> and legacy MIG-GPU-<uuid>/gi/ci).
    A GPU index, a UUID (GPU or MIG) or a MIG device index on one GPU listed twice is an error, and
    so is a legacy MIG UUID naming another GPU than the one it is listed under."""
    what = "nvidia-smi -L"
    gpus: list[GpuEntry] = []
    seen: set[int] = set()
    uuids: set[str] = set()  # GPU and MIG devices' alike (the prefixes differ)
    mig_seen: set[int] = set()  # the MIG device indexes of the GPU being read
    for no, ln in _numbered(text):
        m = _L_GPU.match(ln)
        if m:
            index = _num(m[1], ln, what)
            _index_once(index, seen, ln, what)
            _uuid_once(m[3], uuids, ln, what)
            gpus.append(GpuEntry(index, m[2], m[3]))
            mig_seen = set()
            continue
        m = _L_MIG.match(ln)
        if m and gpus:
            g = gpus[-1]
            dev = MigDevice(_profile(m[1], ln, what, _CI_NAME), _num(m[2], ln, what), m[3])
            # Numbered from 0 on each GPU: one twice was two devices read for one, and a move picks
            # a MIG device's UUID by its position in that list (actuators.moves.mig_uuid).
            _once(dev.index, mig_seen, ln, what, f"GPU {g.index} MIG device {dev.index}")
            _uuid_once(dev.uuid, uuids, ln, what)
            _legacy_on_its_gpu(dev.uuid, g, no, ln, what)
            gpus[-1] = GpuEntry(g.index, g.name, g.uuid, (*g.mig, dev))
            continue
        raise NvsmiError(f"{what}: unexpected line {ln[:120]!r}")
    return gpus


@dataclass(frozen=True, slots=True)
class GpuQuery:
    index: int
    name: str
    driver: str  # driver version, e.g. "580.126.20"


QUERY_GPUS = ("--query-gpu=index,name,driver_version", "--format=csv,noheader")


def parse_query_gpus(text: str) -> list[GpuQuery]:
    """`nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader`: one line per GPU,
    fields joined by ", " (the CSV captures in tests/fixtures)."""
    out = []
    seen: set[int] = set()
    for ln in _lines(text):
        parts = [p.strip() for p in ln.split(",")]
        if len(parts) < 3 or not ascii_digits(parts[0]) or not parts[-1]:
            raise NvsmiError(f"nvidia-smi --query-gpu: unexpected line {ln[:120]!r}")
        index = _num(parts[0], ln, "nvidia-smi --query-gpu")
        _index_once(index, seen, ln, "nvidia-smi --query-gpu")
        out.append(GpuQuery(index, ", ".join(parts[1:-1]), parts[-1]))
    return out


@dataclass(frozen=True, slots=True)
class Change:
    """What one create/destroy command reported: objects done and the first NVML error."""

    created_gi: tuple[tuple[int, str], ...] = ()  # (GI id, profile name)
    created_ci: tuple[tuple[int, int], ...] = ()  # (GI id, CI id)
    destroyed_ci: tuple[tuple[int, int], ...] = ()
    destroyed_gi: tuple[int, ...] = ()
    error: str = ""  # NVML error string, "" when none


def parse_change(text: str) -> Change:
    cgi: list[tuple[int, str]] = []
    cci: list[tuple[int, int]] = []
    dci: list[tuple[int, int]] = []
    dgi: list[int] = []
    error = ""
    unknown: list[str] = []
    what = "nvidia-smi mig"
    for ln in _lines(text):
        if m := _CGI.match(ln):
            cgi.append((_num(m[1], ln, what), _profile(m[3], ln, what)))
        elif m := _CCI.match(ln):
            _profile(m[4], ln, what, _CI_NAME)
            cci.append((_num(m[3], ln, what), _num(m[1], ln, what) if m[1] is not None else 0))
        elif m := _DCI.match(ln):
            dci.append((_num(m[3], ln, what), _num(m[1], ln, what)))
        elif m := _DGI.match(ln):
            dgi.append(_num(m[1], ln, what))
        elif m := _FAIL.match(ln) or _NONE.match(ln):
            error = error or m[1].strip()
        else:
            unknown.append(ln)
    if unknown and not error:
        raise NvsmiError(f"nvidia-smi: unexpected output {unknown[0][:120]!r}")
    return Change(tuple(cgi), tuple(cci), tuple(dci), tuple(dgi), error)


class NvidiaSmi:
    """The commands tailguard uses. Arguments are validated ints; no shell is involved."""

    def __init__(self, path: str = "nvidia-smi", timeout: float = 30.0, env: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.env = env

    async def _run(self, args: Sequence[str], ok_codes: tuple[int, ...] = (0,)) -> Result:
        argv = [self.path, *args]
        try:
            r = await run(argv, self.timeout, env=self.env)
        except ToolError as e:
            raise NvsmiError(str(e)) from None
        if r.rc not in ok_codes:
            m = [_FAIL.match(ln) for ln in _lines(r.text)]
            nvml = next((x[1].strip() for x in m if x), "")
            if NO_MIG in r.text:
                raise MigDisabled(f"{' '.join(argv)}: MIG mode is not enabled", "Not Supported")
            raise NvsmiError(f"{' '.join(argv)}: {r.status}: {r.text.strip()[:300]}", nvml)
        return r

    @staticmethod
    def _idx(i: int) -> str:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < 64:
            raise NvsmiError(f"bad GPU index {i!r}")
        return str(i)

    async def list_gpus(self) -> list[GpuEntry]:
        return parse_list((await self._run(["-L"])).stdout)

    async def query_gpus(self) -> list[GpuQuery]:
        return parse_query_gpus((await self._run(list(QUERY_GPUS))).stdout)

    async def lgip(self, gpu: int) -> list[LgipRow]:
        return parse_lgip((await self._run(["mig", "-i", self._idx(gpu), "-lgip"])).text)

    async def lgipp(self, gpu: int) -> list[Placements]:
        return parse_lgipp((await self._run(["mig", "-i", self._idx(gpu), "-lgipp"])).text)

    async def lgi(self, gpu: int | None = None) -> list[GiRow]:
        args = ["mig", "-lgi"] if gpu is None else ["mig", "-i", self._idx(gpu), "-lgi"]
        # "No GPU instances found: Not Found" comes with a non-zero exit on some drivers.
        r = await self._run(args, ok_codes=(0, 6))
        return parse_lgi(r.text)

    async def lci(self, gpu: int | None = None) -> list[CiRow]:
        args = ["mig", "-lci"] if gpu is None else ["mig", "-i", self._idx(gpu), "-lci"]
        r = await self._run(args, ok_codes=(0, 6))
        return parse_lci(r.text)

    async def _change(self, args: list[str]) -> Change:
        argv = [self.path, *args]
        try:
            r = await run(argv, self.timeout, env=self.env)
        except ToolError as e:
            raise NvsmiError(str(e)) from None
        ch = parse_change(r.text)
        if r.rc != 0 and not ch.error:
            raise NvsmiError(f"{' '.join(argv)}: {r.status}: {r.text.strip()[:300]}")
        return ch

    async def create_gi(self, gpu: int, profile_id: int, start: int, mem_slots: int) -> tuple[int, Change]:
        """Create one GI at an explicit placement with its default CI (-C); returns its GI id.
        `mem_slots`: the GPU's memory slots (its table's GpuModel.mem_slots: 8 on A100/H100, 12 on
        RTX PRO 6000), the bound of `start`. Profile IDs run past 63 (RTX PRO 6000: 64-67)."""
        if not 0 < mem_slots <= MAX_MEM_SLOTS or not 0 <= start < mem_slots or not 0 <= profile_id < 256:
            raise NvsmiError(f"bad placement {profile_id}:{start} on a GPU of {mem_slots} memory slots")
        ch = await self._change(["mig", "-i", self._idx(gpu), "-cgi", f"{profile_id}:{start}", "-C"])
        if ch.error:
            raise NvsmiError(f"GPU {gpu}: cannot create GPU instance {profile_id}:{start}: {ch.error}", ch.error)
        if len(ch.created_gi) != 1 or not ch.created_ci:
            raise NvsmiError(f"GPU {gpu}: create {profile_id}:{start} reported {ch}")
        return ch.created_gi[0][0], ch

    async def create_ci(self, gpu: int, gi: int) -> Change:
        ch = await self._change(["mig", "-i", self._idx(gpu), "-gi", str(int(gi)), "-cci"])
        if ch.error:
            raise NvsmiError(f"GPU {gpu}: cannot create the compute instance of GI {gi}: {ch.error}", ch.error)
        return ch

    async def destroy_ci(self, gpu: int, gi: int) -> Change:
        ch = await self._change(["mig", "-i", self._idx(gpu), "-gi", str(int(gi)), "-dci"])
        # No compute instance left to destroy (a create cut short, or one destroyed already): done.
        if ch.error and ch.error != "Not Found":
            raise NvsmiError(f"GPU {gpu}: cannot destroy the compute instances of GI {gi}: {ch.error}", ch.error)
        return ch

    async def destroy_gi(self, gpu: int, gi: int) -> Change:
        ch = await self._change(["mig", "-i", self._idx(gpu), "-gi", str(int(gi)), "-dgi"])
        if ch.error:
            raise NvsmiError(f"GPU {gpu}: cannot destroy GPU instance {gi}: {ch.error}", ch.error)
        return ch
