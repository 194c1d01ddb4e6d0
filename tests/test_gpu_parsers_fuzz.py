"""Inputs found by fuzzing the parsers of the GPU tools' output: nvidia-smi (-L, --query-gpu, the
`mig -lgi/-lci/-lgip/-lgipp` tables and its messages), the driver's MIG profile tables built from
them (controller/mig_tables.py, the reconciler's read of a GPU), pynvml's answers, a dcgm-exporter
scrape and NCCL topology XML. Each ends in the module's own error naming the line or field, or in
the degraded reading the module documents; never a bare ValueError, OverflowError, RecursionError,
UnicodeDecodeError or a hang. Then one bounded, seeded fuzz loop per parser over the real captures
in tests/fixtures (SOURCES.md), which lets only those documented outcomes through."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import random
import re
import types
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import pynvml
import pytest
from fakes.fixture_paths import FIXTURES
from fakes.sig_fake_pynvml import FakeMig, FakeNvml
from test_host_readers_fuzz import NOT_LINE_ENDS, then_bad

from actuators import nvsmi
from actuators.hands import GpuInfo, Hands, ReconcileReport
from actuators.miglayouts import MigLayouts
from actuators.migtable import driver_profiles
from actuators.nvsmi import NvidiaSmi, NvsmiError
from actuators.proc import Result
from controller.config import parse_config
from controller.mig_probe import DriverMismatch, check_against_driver, driver_problems
from controller.mig_tables import MigTables
from controller.signals.base import ParseError, Unavailable
from controller.signals.dcgm import DcgmExporterSampler, enabled_counters
from controller.signals.nvml import NvmlReading, NvmlSampler
from controller.topology import parse_topo_matrix
from controller.topology_nccl import parse_nccl_topo_xml
from fsm.mig import H100_PCIE, MODELS, PROFILE_NAME, Slot
from fsm.migdriver import model_from_driver, table_differences

HUGE = "9" * 5000  # int() refuses more than 4300 digits with a bare ValueError


def fx(name: str) -> str:
    return (FIXTURES / name).read_text()


def fxs(pattern: str) -> list[str]:
    return [p.read_text() for p in sorted(FIXTURES.glob(pattern))]


# ------------------------------------------------------------------ the mutator

ODD_NUMBERS = ("99999999999999999999", HUGE, "9" * 400, "-1", "NaN", "inf", "²", "١", "1.2.3", ".", "..", "", "0x10")
ODD_TEXT = ("\x00", "\r\n", "\t", "\u2028", "\ufeff", "é", "\U0001f600", "|", ":", "{", "}", ",", '"', "<", "&")
_NUM = re.compile(r"\d+(?:\.\d+)?")


def mutate(rng: random.Random, text: str) -> str:
    """One to four random edits: truncate, delete / duplicate / swap lines, an odd number, an odd
    character, CRLF, tabs, a very long line, empty input, random bytes decoded with "replace"."""
    for _ in range(rng.randint(1, 4)):
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        k = rng.randrange(11)
        if k == 0:
            text = text[: rng.randrange(len(text) + 1)]
        elif k == 1:
            del lines[i]
            text = "\n".join(lines)
        elif k == 2:
            lines.insert(i, lines[i])
            text = "\n".join(lines)
        elif k == 3:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif k == 4 and (nums := list(_NUM.finditer(text))):
            m = rng.choice(nums)
            text = text[: m.start()] + rng.choice(ODD_NUMBERS) + text[m.end() :]
        elif k == 5:
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(ODD_TEXT) + text[at:]
        elif k == 6:
            text = text.replace("\n", "\r\n")
        elif k == 7:
            text = text.replace(" ", "\t", rng.randint(1, 5))
        elif k == 8:
            lines[i] = (lines[i] * rng.randint(50, 500))[:100_000]
            text = "\n".join(lines)
        elif k == 9:
            text = ""
        else:
            junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 100))).decode(errors="replace")
            at = rng.randrange(len(text) + 1)
            text = text[:at] + junk + text[at:]
    return text


def fuzz(
    seeds: Sequence[str],
    call: Callable[[str], object],
    allowed: tuple[type[Exception], ...],
    runs: int,
    seed: int,
    mutator: Callable[[random.Random, str], str] = mutate,
) -> None:
    rng = random.Random(seed)
    for i in range(runs):
        text = mutator(rng, rng.choice(seeds))
        try:
            call(text)
        except allowed:
            pass
        except Exception as e:
            raise AssertionError(f"run {i}: {type(e).__name__}: {e} on {text[:300]!r}") from e


# ------------------------------------------------------------------ nvidia-smi

LGI = fx("nvidia-smi-mig-lgi_a100-40gb_7x1g.5gb.txt")
LCI = fx("nvidia-smi-mig-lci_a100-pcie-40gb_4ci_r510_hpe_last-border-missing.txt")
LGIP = fx("nvidia-smi-mig-lgip_h100-pcie-80gb_r525_scaleway.txt")
LGIPP = fx("nvidia-smi-mig-lgipp_h100-pcie-80gb_r525_scaleway.txt")
LIST = fx("nvidia-smi-L_h100-pcie_mig-3g.40gb+3x1g.10gb_scaleway.txt")
CGI = fx("nvidia-smi-mig-cgi-C_success_gh200_3x1g.24gb.txt")
QUERY = "0, NVIDIA H100 PCIe, 525.125.06\n1, NVIDIA H100 PCIe, 525.125.06\n"


@pytest.mark.parametrize(
    ("parse", "text", "old", "line"),  # the first number in `old` gets 5000 digits; `line`: up to it
    [
        (nvsmi.parse_lgi, LGI, "19        8 ", "|   0  MIG 1g.5gb       "),
        (nvsmi.parse_lci, LCI, "    12   ", "|   0     "),
        (nvsmi.parse_lgip, LGIP, "15     4/4", "|   0  MIG 1g.20gb       "),
        (nvsmi.parse_lgipp, LGIPP, "ID 15", "GPU  0 Profile ID "),
        (nvsmi.parse_list, LIST, "Device  2", "MIG 1g.10gb     Device  "),
        (nvsmi.parse_query_gpus, QUERY, "1, NVIDIA", ""),
        (nvsmi.parse_change, CGI, "ID  3 on", "Successfully created GPU instance ID  "),
    ],
    ids=["lgi", "lci", "lgip", "lgipp", "list", "query-gpu", "change"],
)
def test_a_number_of_thousands_of_digits_names_its_line(
    parse: Callable[[str], object], text: str, old: str, line: str
) -> None:
    assert text.count(old) == 1
    bad = text.replace(old, re.sub(r"\d+", HUGE, old, count=1))
    with pytest.raises(NvsmiError, match=r"number 9{12}\.\.\. \(5000 digits\) out of range in line ") as e:
        parse(bad)
    assert f"in line '{line}99999" in str(e.value)  # the line, shortened


@pytest.mark.parametrize("memory", ["1.2.3", "..", "9" * 400], ids=["dots", "only-dots", "400-digits"])
def test_lgip_memory_that_is_not_a_gib_figure(memory: str) -> None:
    # "1.2.3" made float() raise; 400 digits made it inf, and the driver table's MiB overflowed
    bad = LGIP.replace("19.50 ", memory + " ", 1)
    with pytest.raises(NvsmiError, match=rf"-lgip: memory {re.escape(repr(memory[:20]))} is not a GiB figure in line"):
        nvsmi.parse_lgip(bad)


@pytest.mark.parametrize(
    ("parse", "text", "row", "odd"),  # `row`: the one line of the capture whose `odd` part is changed
    [
        (nvsmi.parse_lgi, LGI, "|   0  MIG 1g.5gb       19        8          1:1     |", ("1:1", "1-1")),
        (
            nvsmi.parse_lci,
            LCI,
            "|   0     12       MIG 1g.5gb           0         0          0:1     |",
            ("0:1", "0;1"),
        ),
        (
            nvsmi.parse_lgip,
            LGIP,
            "|   0  MIG 1g.20gb       15     4/4        19.50      No     14     1     0   |",
            ("4/4", "4|4"),
        ),
    ],
    ids=["lgi", "lci", "lgip"],
)
def test_a_data_row_its_pattern_does_not_match_is_an_error_not_skipped(
    parse: Callable[[str], object], text: str, row: str, odd: tuple[str, str]
) -> None:
    # Skipped, the instance was missing from the layout read back: its slot looked free.
    assert text.count(row) == 1
    bad = text.replace(row, row.replace(*odd))
    with pytest.raises(NvsmiError, match=r"unexpected row '\|   0 "):
        parse(bad)


def _gpus_once(parse: Callable[[str], Sequence[nvsmi.GpuEntry | nvsmi.GpuQuery]]) -> Callable[[str], object]:
    """`parse`, and what it read lists each GPU index once, and (-L) each UUID, GPU or MIG, and each
    MIG device index of a GPU once (the mutator duplicates lines)."""

    def call(text: str) -> object:
        gpus = parse(text)
        indexes = [g.index for g in gpus]
        assert len(set(indexes)) == len(indexes), f"a GPU index twice: {indexes} from {text[:300]!r}"
        entries = [g for g in gpus if isinstance(g, nvsmi.GpuEntry)]
        uuids = [u.lower() for g in entries for u in (g.uuid, *(d.uuid for d in g.mig))]
        assert len(set(uuids)) == len(uuids), f"a UUID twice: {uuids} from {text[:300]!r}"
        for g in entries:
            migs = [d.index for d in g.mig]
            assert len(set(migs)) == len(migs), f"GPU {g.index}: a MIG device twice: {migs} from {text[:300]!r}"
        return indexes

    return call


T = TypeVar("T")
_CI_PART = re.compile(r"[0-9]{1,2}c\.")  # a compute instance with fewer slices than its GI: 1c.3g.20gb


def _profiles_fit(parse: Callable[[str], T], names: Callable[[T], list[tuple[str, bool]]]) -> Callable[[str], T]:
    """`parse`, checking each MIG profile name it read (`names`: each with whether it names a compute
    instance) is one nvidia-smi prints: fsm.state.PROFILE_NAME, after a <c>c. for a compute instance.
    The rows' patterns took any text there, and the mutator puts odd numbers and characters in."""

    def call(text: str) -> T:
        out = parse(text)
        for name, ci in names(out):
            m = _CI_PART.match(name) if ci else None
            assert PROFILE_NAME.fullmatch(name[m.end() :] if m else name), f"{name!r} read from {text[:300]!r}"
        return out

    return call


def _mig_names(gpus: list[nvsmi.GpuEntry]) -> list[tuple[str, bool]]:
    return [(d.name, True) for g in gpus for d in g.mig]  # a MIG device is a compute instance


def test_nvsmi_parsers_fuzz() -> None:
    everything = fxs("nvidia-smi*")
    cases: list[tuple[Callable[[str], object], list[str]]] = [
        (_profiles_fit(nvsmi.parse_lgi, lambda rows: [(r.name, False) for r in rows]), fxs("nvidia-smi-mig-lgi_*")),
        (_profiles_fit(nvsmi.parse_lci, lambda rows: [(r.name, True) for r in rows]), fxs("nvidia-smi-mig-lci*")),
        (_profiles_fit(nvsmi.parse_lgip, lambda rows: [(r.name, False) for r in rows]), fxs("nvidia-smi-mig-lgip_*")),
        (nvsmi.parse_lgipp, fxs("nvidia-smi-mig-lgipp_*")),  # no names: profile IDs
        (_gpus_once(_profiles_fit(nvsmi.parse_list, _mig_names)), fxs("nvidia-smi-L_*")),
        (_gpus_once(nvsmi.parse_query_gpus), [QUERY, *fxs("nvidia-smi-query-gpu_mig*")]),
        (
            _profiles_fit(nvsmi.parse_change, lambda ch: [(name, False) for _, name in ch.created_gi]),
            fxs("nvidia-smi-mig-c*") + fxs("nvidia-smi-mig-d*"),
        ),
    ]
    for k, (parse, seeds) in enumerate(cases):
        fuzz(seeds + everything[:3], parse, (NvsmiError,), 600, k)


def test_driver_table_fuzz() -> None:
    """-lgip and -lgipp, parsed, joined and turned into the table in force (and its differences)."""
    rng = random.Random(7)
    lgips, lgipps = fxs("nvidia-smi-mig-lgip_*"), fxs("nvidia-smi-mig-lgipp_*")
    for _ in range(400):
        try:
            rows = nvsmi.parse_lgip(mutate(rng, rng.choice(lgips)))
            placements = nvsmi.parse_lgipp(mutate(rng, LGIPP) if rng.random() < 0.7 else rng.choice(lgipps))
        except NvsmiError:
            continue
        base = rng.choice([None, H100_PCIE])
        model, _notes = model_from_driver(base, "NVIDIA H100 PCIe", driver_profiles(rows, placements, 0))
        table_differences(base, model)


# ------------------------------------------------------------------ MIG tables, --probe, the reconciler's read


class ScriptedSmi(NvidiaSmi):
    """nvidia-smi answering from the captures, each answer mutated with probability `odd`."""

    SOURCES: ClassVar[dict[str, list[str]]] = {
        "--query-gpu=index,name,driver_version": [QUERY, "0, NVIDIA A100-PCIE-40GB, 460.32.03\n"],
        "-lgipp": fxs("nvidia-smi-mig-lgipp_*"),
        "-lgip": fxs("nvidia-smi-mig-lgip_*"),
        "-lgi": fxs("nvidia-smi-mig-lgi_*"),
        "-lci": fxs("nvidia-smi-mig-lci*"),
        "-L": fxs("nvidia-smi-L_*"),
    }

    def __init__(self, rng: random.Random, odd: float = 0.6, fixed: dict[str, str] | None = None) -> None:
        super().__init__("nvidia-smi")
        self.rng, self.odd, self.fixed = rng, odd, fixed or {}

    async def _run(self, args: Sequence[str], ok_codes: tuple[int, ...] = (0,)) -> Result:
        key = next(k for k in self.SOURCES if k in args)
        text = self.fixed.get(key) or self.rng.choice(self.SOURCES[key])
        if key not in self.fixed and self.rng.random() < self.odd:
            text = mutate(self.rng, text)
        return Result(tuple(args), 0, text, "")


PROBE_CFG = """
[[gpus]]
name = "gpu0"
index = 0
[[gpus]]
name = "gpu1"
index = 1
model = "A100-PCIE-40GB"
[[tenants]]
name = "a"
role = "bulk"
instance = "gpu0/1g.10gb@0"
[policy.mig_ladder]
H100-PCIE = ["1g.10gb", "2g.20gb", "7g.80gb"]
"""


def test_mig_tables_keep_the_builtin_table_on_a_huge_number() -> None:
    fixed = {
        "--query-gpu=index,name,driver_version": QUERY,
        "-lgip": LGIP,
        "-lgipp": LGIPP.replace("ID 15", f"ID {HUGE}"),
    }
    smi = ScriptedSmi(random.Random(0), odd=0, fixed=fixed)
    t = MigTables(smi, {"gpu0": 0})
    asyncio.run(t.refresh(force=True))  # raised the bare ValueError: refresh never raises for nvidia-smi
    got = t.tables["gpu0"]
    assert got.source == "built-in" and got.model is H100_PCIE
    assert got.error.startswith("nvidia-smi mig -lgipp: number 999999999999... (5000 digits) out of range in line ")


def test_mig_tables_and_probe_fuzz(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL)  # every difference is logged; thousands of lines otherwise
    cfg = parse_config(PROBE_CFG)
    rng = random.Random(11)

    async def one() -> None:
        t = MigTables(ScriptedSmi(rng), {"gpu0": 0, "gpu1": 1} if rng.random() < 0.5 else {})
        await t.refresh(force=True)
        driver_problems(cfg, t)
        with contextlib.suppress(DriverMismatch):
            check_against_driver(cfg, t)

    for _ in range(300):
        asyncio.run(one())


def _layouts(rng: random.Random, odd: float, fixed: dict[str, str] | None = None) -> MigLayouts:
    model = rng.choice([None, *MODELS.values()])
    h = Hands(
        cgroup_root="/nonexistent", cgroup_version="v2", nvsmi=ScriptedSmi(rng, odd, fixed),
        gpus={"gpu0": GpuInfo("gpu0", 0, model)}, tenants={}, journal=None,  # type: ignore[arg-type]
        dry_run=True, sys_root="/", readiness=None, clock=lambda: 0.0,
    )  # fmt: skip
    return MigLayouts(h, 10.0)


def test_reconciler_read_of_a_huge_gi_id_is_a_read_error() -> None:
    bad_lci = LCI.replace("    12   ", f"    {HUGE}   ", 1)
    ml = _layouts(random.Random(0), 0, {"-lgi": LGI, "-L": LIST, "-lci": bad_lci})
    rep = ReconcileReport(0.0, True)
    # the bare ValueError escaped _plan to the task's "unexpected error" handler
    assert asyncio.run(ml._plan("gpu0", (Slot(0, "1g.10gb"),), set(), rep)) is None
    assert rep.errors[0].startswith("nvidia-smi mig -lci: number 999999999999... (5000 digits) out of range in line")


def test_reconciler_read_fuzz(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL)
    rng = random.Random(5)
    for _ in range(300):
        ml = _layouts(rng, 0.6)
        want = (Slot(0, "1g.10gb"),) if rng.random() < 0.5 else ()
        asyncio.run(ml._plan("gpu0", want, set(), ReconcileReport(0.0, True)))  # reports, never raises


# ------------------------------------------------------------------ pynvml

A100_Q = fx("nvidia-smi-q_a100-sxm4-80gb-x4_r555.txt")
H100_Q = fx("nvidia-smi-q_h100-80gb-hbm3-x8-hgx_r565.txt")


class OddNvml(FakeNvml):
    """The fake with some answers replaced: `odd` maps a pynvml function to what it returns (or to
    a function that stands in for it)."""

    def __init__(self, text: str, odd: dict[str, Any]) -> None:
        super().__init__(FakeNvml.from_q(text).gpus)
        for name, value in odd.items():
            setattr(self, name, value if callable(value) else lambda *a, v=value: v)


def _sample(s: NvmlSampler, fake: FakeNvml, ticks: int = 2) -> NvmlReading | Unavailable:
    err = s._ensure()  # on this thread: a hang in it is caught by the test's timeout
    if err is not None:
        return Unavailable(err)
    r: NvmlReading | Unavailable = Unavailable("no tick")
    for t in range(ticks):
        fake.advance(1.0)
        r = asyncio.run(s.sample(float(t)))
    return r


@pytest.mark.timeout(10)
def test_negative_cpu_affinity_word_does_not_hang() -> None:
    # `while w: w >>= 1` never ends for a negative int: the daemon hung in its first NVML read
    fake = OddNvml(A100_Q, {"nvmlDeviceGetCpuAffinity": [-1] + [0] * 15})
    r = _sample(NvmlSampler({"gpu0": 0}, nvml=fake), fake)
    assert isinstance(r, NvmlReading) and r.gpus["gpu0"].cpus == ()


@pytest.mark.timeout(10)
def test_huge_mig_device_count_does_not_hang() -> None:
    fake = OddNvml(A100_Q, {"nvmlDeviceGetMaxMigDeviceCount": 10**12})
    fake.gpus[0].mig_enabled = True
    r = _sample(NvmlSampler({"gpu0": 0}, nvml=fake), fake)
    assert isinstance(r, NvmlReading) and r.gpus["gpu0"].mig_devices is None
    assert r.unavailable["nvml:gpu0"] == "odd NVML answer: nvmlDeviceGetMaxMigDeviceCount returned 1000000000000"


@pytest.mark.parametrize(("count", "shown"), [(float("nan"), "nan"), (-1, "-1"), (1025, "1025")])
def test_odd_gpu_count_is_an_init_error(count: object, shown: str) -> None:
    fake = OddNvml(A100_Q, {"nvmlDeviceGetCount": count})
    r = _sample(NvmlSampler(nvml=fake), fake)
    assert r == Unavailable(f"NVML init failed: nvmlDeviceGetCount returned {shown}")


def test_utilisation_of_nan_is_no_value_with_a_reason() -> None:
    fake = OddNvml(A100_Q, {"nvmlDeviceGetUtilizationRates": types.SimpleNamespace(gpu=float("nan"))})
    r = _sample(NvmlSampler({"gpu0": 0}, nvml=fake), fake)
    assert isinstance(r, NvmlReading) and r.gpus["gpu0"].util is None  # was nan, on to the decision core
    assert r.unavailable["nvml:gpu0"] == "odd NVML answer: nvmlDeviceGetUtilizationRates gpu returned nan"


def _undecodable(raw: bytes) -> Callable[..., str]:
    def call(*a: Any) -> str:
        return raw.decode()  # what pynvml's convertStrBytes does with a char array

    return call


def test_non_utf8_strings_from_pynvml() -> None:
    # pynvml decodes char arrays itself (convertStrBytes, _PrintableStructure): a non-UTF-8 byte
    # raised UnicodeDecodeError out of the first read, and NVML stayed unavailable
    pci = pynvml.nvmlPciInfo_t()
    pci.busId = b"00000000:07:00.0\xff"
    fake = OddNvml(A100_Q, {"nvmlDeviceGetName": _undecodable(b"NVIDIA A100\xff"), "nvmlDeviceGetPciInfo": pci})
    r = _sample(NvmlSampler({"gpu0": 0}, nvml=fake), fake)
    assert isinstance(r, NvmlReading)
    g = r.gpus["gpu0"]
    assert (g.model, g.bus_id, g.uuid) == (None, None, "GPU-31515c3d-1414-7c2c-004a-f86a898946ac")
    # bindings that hand the bytes over: decoded with U+FFFD
    fake = OddNvml(A100_Q, {"nvmlDeviceGetName": b"NVIDIA A100\xff"})
    r = _sample(NvmlSampler({"gpu0": 0}, nvml=fake), fake)
    assert isinstance(r, NvmlReading) and r.gpus["gpu0"].model == "NVIDIA A100\ufffd"


def test_non_utf8_mig_uuid_is_an_odd_answer() -> None:
    fake = FakeNvml.from_q(A100_Q)
    fake.gpus[0].mig_enabled, fake.gpus[0].migs = True, [FakeMig("MIG-a", 7, 19, 0)]
    gpu_uuid = fake.nvmlDeviceGetUUID

    def uuid(h: Any) -> str:
        return _undecodable(b"MIG-\xff")() if isinstance(h, tuple) else gpu_uuid(h)

    fake.nvmlDeviceGetUUID = uuid  # type: ignore[method-assign,assignment]
    r = _sample(NvmlSampler({"gpu0": 0}, nvml=fake), fake)
    assert isinstance(r, NvmlReading) and r.gpus["gpu0"].mig_devices is None
    assert r.unavailable["nvml:gpu0"] == "odd NVML answer: nvmlDeviceGetUUID returned b'MIG-\\xff'"


def _raises(error: Callable[[], BaseException]) -> Callable[..., Any]:
    def call(*a: Any) -> Any:
        raise error()  # a new one each call, as pynvml raises them

    return call


def unknown() -> BaseException:
    return pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)


@pytest.mark.parametrize(
    ("fn", "error", "says"),
    [
        ("nvmlDeviceGetMigMode", unknown, "NVML error: nvmlDeviceGetMigMode: Unknown Error"),
        ("nvmlDeviceGetFieldValues", unknown, "NVML error: nvmlDeviceGetFieldValues: Unknown Error"),
        (
            "nvmlDeviceGetFieldValues",
            lambda: TypeError("bad array"),
            "NVML call failed: nvmlDeviceGetFieldValues raised TypeError: bad array",
        ),
        (
            "nvmlDeviceGetUtilizationRates",
            lambda: OSError(22, "Invalid argument"),
            "NVML call failed: nvmlDeviceGetUtilizationRates raised OSError: [Errno 22] Invalid argument",
        ),
        (
            "nvmlDeviceGetMigMode",
            lambda: ctypes.ArgumentError("argument 1: wrong type"),
            "NVML call failed: nvmlDeviceGetMigMode raised ArgumentError: argument 1: wrong type",
        ),
        (
            "nvmlGpuInstanceGetInfo",
            lambda: TypeError("x"),
            "NVML call failed: nvmlGpuInstanceGetInfo raised TypeError: x",
        ),
    ],
    ids=["nvml-error", "nvml-error-fields", "type-error", "os-error", "ctypes-argument-error", "mig-type-error"],
)
def test_an_exception_from_pynvml_names_the_call(fn: str, error: Callable[[], BaseException], says: str) -> None:
    """An NVMLError's reason was NVML's message alone ("NVML error: Unknown Error"), and a
    TypeError/OSError/ctypes.ArgumentError from pynvml's ctypes layer left the sampler, every GPU's
    reading lost with it, named by the runner as "TypeError: ..." only."""
    fake = FakeNvml.from_q(A100_Q)
    fake.gpus[0].mig_enabled, fake.gpus[0].migs = True, [FakeMig("MIG-a", 7, 19, 0)]
    real, odd = getattr(fake, fn), _raises(error)

    def on_gpu0(h: Any, *a: Any) -> Any:  # a handle: 0, a MIG device (0, i), an instance ((0), m)
        return (odd if 0 in (h, h[0] if isinstance(h, tuple) else None) else real)(h, *a)

    setattr(fake, fn, on_gpu0)
    r = _sample(NvmlSampler({"gpu0": 0, "gpu1": 1}, nvml=fake), fake)
    assert isinstance(r, NvmlReading) and r.unavailable["nvml:gpu0"] == says
    assert "nvml:gpu1" not in r.unavailable and r.gpus["gpu1"].pcie_tx_bps is not None


@pytest.mark.parametrize(
    ("fn", "error", "says"),
    [
        (
            "nvmlInit",
            lambda: pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND),
            "NVML init failed: nvmlInit: NVML Shared Library Not Found",
        ),
        (
            "nvmlDeviceGetCount",
            lambda: OSError(5, "Input/output error"),
            "NVML init failed: nvmlDeviceGetCount raised OSError: [Errno 5] Input/output error",
        ),
        (
            "nvmlDeviceGetHandleByIndex",
            lambda: TypeError("x"),
            "NVML init failed: gpu0: nvmlDeviceGetHandleByIndex raised TypeError: x",
        ),
        (
            "nvmlDeviceGetPciInfo",
            lambda: TypeError("x"),
            "NVML init failed: gpu0: nvmlDeviceGetPciInfo raised TypeError: x",
        ),
    ],
    ids=["init", "count", "handle", "static"],
)
def test_an_exception_from_pynvml_at_init_names_the_call(
    fn: str, error: Callable[[], BaseException], says: str
) -> None:
    fake = OddNvml(A100_Q, {fn: _raises(error)})
    assert _sample(NvmlSampler({"gpu0": 0}, nvml=fake), fake) == Unavailable(says)


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (
            lambda: pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED),
            "PCIe counters and throughput not supported (vGPU?)",
        ),
        (unknown, "NVML error: nvmlDeviceGetPcieThroughput: Unknown Error"),
        (lambda: TypeError("x"), "NVML call failed: nvmlDeviceGetPcieThroughput raised TypeError: x"),
    ],
    ids=["not-supported", "nvml-error", "type-error"],
)
def test_an_exception_from_the_throughput_fallback_names_the_call(
    error: Callable[[], BaseException], says: str
) -> None:
    """Every NVMLError was "not supported (vGPU?)", a GPU lost or NVML's timeout too; a TypeError
    left the sampler through asyncio.gather."""
    fake = OddNvml(A100_Q, {"nvmlDeviceGetPcieThroughput": _raises(error)})
    fake.gpus[0].fields_supported = False
    r = _sample(NvmlSampler({"gpu0": 0}, nvml=fake), fake)
    assert isinstance(r, NvmlReading)
    assert r.unavailable["nvml:gpu0:pcie_tx"] == r.unavailable["nvml:gpu0:pcie_rx"] == says


ODD_VALUES: list[Any] = [None, -1, -(2**63), 2**64 + 5, 10**30, math.nan, math.inf, -0.5, "7", b"\xff", [], object()]
NVML_ERRORS = (
    pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_NOT_FOUND,
    pynvml.NVML_ERROR_UNKNOWN, pynvml.NVML_ERROR_TIMEOUT, 999,
)  # fmt: skip


class FuzzNvml:
    """pynvml whose calls now and then raise an NVMLError or answer an odd value (odd fields in a
    structure, odd words in an array). Handles stay the fake's own: they are opaque to the sampler."""

    def __init__(self, inner: FakeNvml, rng: random.Random, p: float) -> None:
        self.inner, self.rng, self.p = inner, rng, p

    def __getattr__(self, name: str) -> Any:
        v = getattr(self.inner, name)
        if not name.startswith("nvml") or not callable(v) or "Handle" in name or "InstanceById" in name:
            return v

        def call(*a: Any) -> Any:
            r = self.rng.random()
            if r < self.p / 2:
                raise pynvml.NVMLError(self.rng.choice(NVML_ERRORS))
            out = v(*a)
            return self.odd_like(out) if r < self.p else out

        return call

    def odd_like(self, out: Any) -> Any:
        rng = self.rng

        def odd(x: Any) -> Any:
            return rng.choice(ODD_VALUES) if rng.random() < 0.4 else x

        if hasattr(out, "gpu"):
            return types.SimpleNamespace(gpu=rng.choice(ODD_VALUES))
        if hasattr(out, "busId"):
            return types.SimpleNamespace(busId=rng.choice(ODD_VALUES))
        if hasattr(out, "placement"):
            return types.SimpleNamespace(
                placement=types.SimpleNamespace(start=odd(out.placement.start)), profileId=odd(out.profileId)
            )
        if isinstance(out, list | tuple) or hasattr(out, "_length_"):
            items = list(out)
            if items and hasattr(items[0], "fieldId"):
                return [
                    types.SimpleNamespace(
                        fieldId=odd(f.fieldId), nvmlReturn=odd(f.nvmlReturn), timestamp=odd(f.timestamp),
                        value=types.SimpleNamespace(ullVal=odd(f.value.ullVal)),
                    )
                    for f in items
                ]  # fmt: skip
            return [odd(x) for x in items] if items and rng.random() < 0.7 else rng.choice(ODD_VALUES)
        return rng.choice(ODD_VALUES)


@pytest.mark.timeout(60)
def test_nvml_sampler_fuzz() -> None:
    rng = random.Random(13)
    for i in range(200):
        fake = FakeNvml.from_q(rng.choice([A100_Q, H100_Q]))
        for fg in fake.gpus[:2]:
            fg.mig_enabled = rng.random() < 0.5
            fg.migs = [FakeMig("MIG-a", 7, 19, 0), FakeMig("MIG-b", 8, 9, 4)] if fg.mig_enabled else []
            fg.cpus, fg.numa, fg.fields_supported = (0, 1, 65), rng.choice([0, 1, None]), rng.random() < 0.7
        odd = FuzzNvml(fake, rng, rng.choice([0.02, 0.1, 0.3]))
        s = NvmlSampler({"gpu0": 0, "gpu1": 1} if rng.random() < 0.5 else None, nvml=odd)
        r = _sample(s, fake, 3)
        if isinstance(r, Unavailable):
            assert r.reason.startswith("NVML init failed") or "NVML index" in r.reason or "no NVML handle" in r.reason
            continue
        for name, g in r.gpus.items():
            for f in ("pcie_tx_bps", "pcie_rx_bps", "pcie_replay_rate", "util"):
                v = getattr(g, f)
                assert v is None or (isinstance(v, float) and math.isfinite(v) and v >= 0), (i, name, f, v)
            assert g.util is None or g.util <= 1.0
            assert g.numa is None or (isinstance(g.numa, int) and g.numa >= 0)
            assert all(isinstance(getattr(g, f), str | None) for f in ("bus_id", "uuid", "model"))


# ------------------------------------------------------------------ dcgm-exporter

DCGM_PROM = fx("dcgm-exporter_metrics_a100-sxm4-40gb_mig-1g.5gb_nvidia-docs.prom")
_LABEL_OR_VALUE = re.compile(r'="[^"]*"|\} \S+')


def prom_mutate(rng: random.Random, text: str) -> str:
    """Odd label values and sample values, then now and then the generic edits."""
    for _ in range(rng.randint(1, 3)):
        spots = list(_LABEL_OR_VALUE.finditer(text))
        if not spots:
            break
        m = rng.choice(spots)
        odd = rng.choice([*ODD_NUMBERS, "+Inf", "-Inf", "1e308", "\\n", '\\"'])
        text = text[: m.start()] + (f'="{odd}"' if m.group().startswith("=") else f"}} {odd}") + text[m.end() :]
    return mutate(rng, text) if rng.random() < 0.3 else text


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        (f'gpu="{HUGE}"', "DCGM_FI_PROF_DRAM_ACTIVE: 'gpu' label '999999999999' is not a GPU index"),
        (f'gpu="0",GPU_I_ID="{HUGE}"', "GPU_I_ID '99999999999999999999' is not a number"),
    ],
    ids=["gpu", "gpu-instance"],
)
def test_dcgm_index_of_thousands_of_digits(labels: str, says: str) -> None:
    s = DcgmExporterSampler("http://127.0.0.1:9400/metrics")
    with pytest.raises(ParseError, match=f"^http://127.0.0.1:9400/metrics: line 2: {re.escape(says)}$"):
        s.parse("# HELP x\nDCGM_FI_PROF_DRAM_ACTIVE{" + labels + "} 0.5\n", 1.0)


def test_dcgm_nan_replay_counter_never_makes_a_nan_rate() -> None:
    s = DcgmExporterSampler("u")
    rates = [
        s.parse(f'DCGM_FI_DEV_PCIE_REPLAY_COUNTER{{gpu="0"}} {v}\n', t).gpus[0].pcie_replay_rate
        for t, v in enumerate(["5", "NaN", "7", "+Inf", "9"], 1)
    ]
    assert rates == [None, None, 1.0, None, 1.0]  # NaN was remembered: every later rate was NaN


def test_dcgm_scrape_fuzz() -> None:
    s = DcgmExporterSampler("http://127.0.0.1:9400/metrics")
    ticks = iter(range(1, 10**6))

    def parse(text: str) -> None:
        r = s.parse(text, float(next(ticks)))
        for g in r.gpus.values():
            for f in ("sm_active", "dram_active", "pcie_tx_bps", "pcie_rx_bps", "pcie_replay_rate", "util"):
                v = getattr(g, f)
                assert v is None or (math.isfinite(v) and v >= 0), (f, v, text[:300])

    fuzz(
        [DCGM_PROM],
        parse,
        (ParseError,),
        800,
        1,
        lambda rng, t: (prom_mutate if rng.random() < 0.5 else mutate)(rng, t),
    )
    fuzz(fxs("dcgm-exporter_*.csv"), enabled_counters, (ParseError,), 500, 3)


@pytest.mark.parametrize("odd", NOT_LINE_ENDS, ids=ascii)
def test_dcgm_counters_line_numbers_are_the_files(odd: str) -> None:
    """splitlines() took a stray \r or \u2028 for a line end: the bad row after it was named one
    line too far."""
    text, line = then_bad(fx("dcgm-exporter_default-counters.csv"), odd, "bogus, gauge, x")
    with pytest.raises(ParseError, match=rf"^c.csv: line {line}: expected 'DCGM_FIELD, type, help'"):
        enabled_counters(text, "c.csv")


def test_dcgm_counters_row_with_a_carriage_return_inside() -> None:
    """Once lines end at "\n" only, csv.reader gets the \r and raised a bare csv.Error."""
    with pytest.raises(ParseError, match=r"^c.csv: line 2: not a CSV row: new-line character seen in unquoted field$"):
        enabled_counters("# x\nDCGM_FI_DEV_GPU_UTIL,\rgauge, x\n", "c.csv")


# ------------------------------------------------------------------ nvidia-smi topo -m

TOPO_P4D = fx("nvidia-smi-topo-m_aws-p4d.24xlarge_8x-a100-40gb.txt")


@pytest.mark.parametrize("odd", NOT_LINE_ENDS, ids=ascii)
def test_topo_matrix_line_numbers_are_the_tools(odd: str) -> None:
    """splitlines() broke the header at a stray \r or \u2028: "no row for GPU0" on the wrong line
    instead of the bad relation on line 5."""
    header, rest = TOPO_P4D.split("\n", 1)
    text = header + odd + " \n" + rest.replace("GPU3\tNV12\tNV12\tNV12", "GPU3\tNV12\tNV12\tQQ", 1)
    with pytest.raises(ParseError, match=r"^t.txt: line 5: row GPU3, column GPU2: unknown relation 'QQ'$"):
        parse_topo_matrix(text, "t.txt")


# ------------------------------------------------------------------ NCCL topology XML

NCCL_XML = fx("nccl-topo_aws-p4d.24xlarge_aws-ofi-nccl.xml")


def test_nccl_pci_nested_thousands_deep_names_the_line() -> None:
    depth = 2000  # each level is a frame of the walk: RecursionError past ~1000
    bridges = "".join(f'<pci busid="0000:{i % 256:02x}:{i // 256:02x}.0" class="0x060400">\n' for i in range(depth))
    text = f'<system version="1">\n<cpu numaid="0">\n{bridges}{"</pci>" * depth}</cpu></system>'
    with pytest.raises(
        ParseError, match=r"^t.xml: line 67: <pci busid='0000:40:00.0'> nested more than 64 levels deep$"
    ):
        parse_nccl_topo_xml(text, "t.xml")


@pytest.mark.parametrize(
    ("attr", "value", "shown"),
    [("link_width", HUGE, "link_speed='8 GT/s' link_width='99999999'"), ("link_speed", "1.2.3 GT/s", "'1.2.3 GT/s'")],
    ids=["width-digits", "speed-dots"],
)
def test_nccl_link_that_is_not_a_pcie_link(attr: str, value: str, shown: str) -> None:
    text = NCCL_XML.replace(f'{attr}="{"16" if attr == "link_width" else "8 GT/s"}"', f'{attr}="{value}"', 1)
    with pytest.raises(
        ParseError, match=rf"^t.xml: line 17: <pci busid=ffff:ff:01.0>: cannot read .*{re.escape(shown)}"
    ):
        parse_nccl_topo_xml(text, "t.xml")


_ATTR = re.compile(r'(\w+)="([^"]*)"')


def xml_mutate(rng: random.Random, text: str) -> str:
    """Odd attribute values, dropped attributes, renamed tags, then the generic edits."""
    ms = list(_ATTR.finditer(text))
    k = rng.randrange(4)
    if k == 0:
        m = rng.choice(ms)
        odd = rng.choice([*ODD_NUMBERS, "Unknown", "1e999 GT/s", "-16 GT/s", "0xffffffff", "ffffffff," * 300, "-1"])
        return text[: m.start(2)] + odd + text[m.end(2) :]
    if k == 1:
        m = rng.choice(ms)
        return text[: m.start()] + text[m.end() :]
    if k == 2:
        t = rng.choice(list(re.finditer(r"<(\w+)", text)))
        tag = rng.choice(["pci", "gpu", "nic", "net", "cpu", "system", "x", "nvlink", "pcilink"])
        return text[: t.start(1)] + tag + text[t.end(1) :]
    return mutate(rng, text)


def test_nccl_topology_fuzz() -> None:
    fuzz([NCCL_XML], lambda t: parse_nccl_topo_xml(t, "t.xml"), (ParseError,), 800, 17, xml_mutate)
