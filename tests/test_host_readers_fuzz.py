"""Inputs found by fuzzing the readers of the host's kernel files: /proc (diskstats, net/dev,
interrupts), cgroupfs (io.stat, blkio.throttle.*, PSI; io.max and blkio.throttle.*_device read
back by the I/O lever, cgroup.procs by the MPS lever), sysfs (PCI/NUMA discovery, block devices).
Each ends in the module's own error naming the file and line (ParseError, CgroupError,
DeviceError, MpsError, an OSError with the path) or in the degraded reading it documents (a
sampler's `unavailable` reason, an attribute read as None); never a bare ValueError,
OverflowError, UnicodeDecodeError, IsADirectoryError, a hang or unbounded memory. Then one bounded,
seeded fuzz loop per reader over files in the kernel's formats, letting only those outcomes by."""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import shutil
import threading
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import pytest
from fakes.topo_sysfs import build_dgx_a100, build_p4d
from test_sig_host import DISKSTATS, INTERRUPTS, NETDEV, fake_proc

from actuators import cgroup as cgroup_act
from actuators.blockdev import DeviceError, resolve
from actuators.cgroup import Caps, CgroupError, CgroupIO
from actuators.mps import MpsError
from actuators.mpslimits import MpsLimits
from controller.signals.base import FileReader, ParseError
from controller.signals.cgroup import CgroupSampler, parse_blkio_v1, parse_io_stat, parse_psi
from controller.signals.host import HostSampler, parse_diskstats, parse_interrupts, parse_net_dev
from controller.topology import discover_sysfs, node_labels, parse_cpulist, render_tree

HUGE = "9" * 5000  # int() refuses more than 4,300 digits with a bare ValueError
WIDE = "9" * 400  # int() takes it; float() of it (a rate) is an OverflowError
SNAP = Path(__file__).parent / "fakes" / "sig_cgroup_snapshot"
BLKIO = {p.name: p.read_text() for p in sorted((SNAP / "blkio").iterdir())}
PSI = {w: (SNAP / "unified" / f"{w}.pressure").read_text() for w in ("io", "cpu")}
IO_STAT = "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n259:0 rbytes=0 wbytes=4096 rios=0\n"
IO_MAX = "8:16 rbps=2097152 wbps=max riops=max wiops=120\n259:0 rbps=max wbps=1048576 riops=max wiops=max\n"
BPS_DEVICE = "8:16 1048576\n259:0 2097152\n"
# the kernel prints each per-CPU count as " %10u": 8 CPUs, so lines take numpy's fast path
IRQ8 = (
    " " * 3
    + "".join(f"{'CPU' + str(c):>11}" for c in range(8))
    + "\n"
    + "".join(
        f"{irq:>4}:" + "".join(f" {(irq * 7919 + c) % 10**6:>10}" for c in range(8)) + "  PCI-MSI  x\n"
        for irq in range(24, 40)
    )
    + "ERR:          0\n"
)


def finishes(fn: Callable[[], object], fifo: Path | None = None, timeout: float = 5.0) -> BaseException | None:
    """Runs fn in a thread; fails the test if it is still running after `timeout` (a FIFO's
    open() waits for a writer: one is opened afterwards so the thread ends). Returns what fn raised."""
    out: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            out.append(None)
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    hung = t.is_alive()
    if hung and fifo is not None:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader gets EOF
        t.join(timeout)
    assert not hung, "the read hung"
    return out[0]


# ------------------------------------------------------------------ /proc


COUNTERS = [
    ("diskstats", parse_diskstats, DISKSTATS, "20000"),
    ("net-dev", parse_net_dev, NETDEV, "1000000"),
    ("interrupts", parse_interrupts, INTERRUPTS, "100"),
    ("io.stat", parse_io_stat, IO_STAT, "1459200"),
    ("io.stat-slow", parse_io_stat, IO_STAT + "x\n", "1459200"),  # the careful path
    ("blkio", parse_blkio_v1, BLKIO["blkio.throttle.io_service_bytes"], "476164096"),
]


@pytest.mark.parametrize(
    ("parse", "text", "old", "number"),
    # a line of /proc/interrupts with a negative count is not one of per-CPU counts: skipped like ERR/MIS
    [
        pytest.param(*c[1:], n, id=f"{c[0]}-{n[:8]}")
        for c in COUNTERS
        for n in (HUGE, WIDE, "18446744073709551616", "-1", "١")
        if (c[0], n) != ("interrupts", "-1")
    ],
)
def test_a_counter_that_is_not_a_u64_names_its_line(
    parse: Callable[[str, str], object], text: str, old: str, number: str
) -> None:
    """int() raised a bare ValueError past 4,300 digits; a few hundred digits parsed and made the
    rate's float() an OverflowError; net/dev took a negative count, and all of them "١"."""
    bad = text.replace(old, number, 1)
    with pytest.raises(ParseError) as e:
        parse(bad, "f")
    assert e.value.line == 1 + bad[: bad.index(number)].count("\n")
    assert len(str(e.value)) < 200  # the number shown shortened


def with_field(text: str, line: int, i: int, value: str) -> str:
    """`text` with field `i` (from 0, split at spaces, a net/dev name's colon its own field) of
    line `line` (from 1) replaced, the spacing kept."""
    lines = text.split("\n")
    parts = re.split(r"( +|:)", lines[line - 1])
    fields = [k for k, v in enumerate(parts) if v and not v.isspace() and v != ":"]
    parts[fields[i]] = value
    lines[line - 1] = "".join(parts)
    return "\n".join(lines)


# Every counter of a line, those the readers do not use too: garbage in any of them is no kernel
# line (and its two used counters may be garbage as well). (text, its line named, the field named)
UNUSED_COUNTERS = [
    ("diskstats", parse_diskstats, with_field(DISKSTATS, 1, 8, "x"), 1, "writes merged"),
    ("diskstats-flush", parse_diskstats, with_field(DISKSTATS, 1, 19, "-1"), 1, "time flushing"),
    ("diskstats-minor", parse_diskstats, with_field(DISKSTATS, 3, 1, "٠"), 3, "major and minor"),
    ("net-dev", parse_net_dev, with_field(NETDEV, 3, 8, "?"), 3, "rx multicast"),
    ("net-dev-tx", parse_net_dev, with_field(NETDEV, 3, 16, HUGE), 3, "tx compressed"),
    ("net-dev-17", parse_net_dev, with_field(NETDEV, 3, 16, "0 5"), 3, "16 counters"),
    ("net-dev-header", parse_net_dev, NETDEV + "eth1|: 1 2\n", 5, "16 counters"),
]


@pytest.mark.parametrize(("parse", "text", "line", "named"), [pytest.param(*c[1:], id=c[0]) for c in UNUSED_COUNTERS])
def test_a_counter_the_reader_does_not_use_is_checked_too(
    parse: Callable[[str, str], object], text: str, line: int, named: str
) -> None:
    """Only the two counters each reader uses were checked: "x" in a diskstats line's merged writes
    or "?" in net/dev's multicast read as a good line; a line with a "|" anywhere was skipped as
    a header; a net/dev line of 17 counters was taken."""
    with pytest.raises(ParseError) as e:
        parse(text, "f")
    assert e.value.line == line and named in str(e.value), str(e.value)
    assert len(str(e.value)) < 200


# str.splitlines() ends a line at each of these too; the kernel ends its lines at "\n" only
NOT_LINE_ENDS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


def then_bad(good: str, odd: str, bad: str) -> tuple[str, int]:
    """`good` (whole lines) with `odd` and a space at the end of its last line (the space: "\r\n" is
    one line end to splitlines()), then the line `bad`; and that line's number as the kernel counts."""
    return good[:-1] + odd + " \n" + bad + "\n", good.count("\n") + 1


def first_bad(odd: str, line: int) -> int:
    """The line a kernel-file reader names for then_bad's text: the bad one after a CRLF's \r, which
    ends a field as a space does; for any other character the line before it, which holds it
    (schema.jsontext.fields keeps it inside its field, and every field is checked: the counters of
    diskstats and net/dev the readers do not use, PSI's "full" line and io.max's iops too)."""
    return line if odd == "\r" else line - 1


@pytest.mark.parametrize("odd", NOT_LINE_ENDS, ids=ascii)
@pytest.mark.parametrize(
    ("parse", "good", "bad"),
    [
        (parse_diskstats, DISKSTATS, "x"),
        (parse_net_dev, NETDEV, "x"),
        (parse_io_stat, IO_STAT, "x"),
        (parse_blkio_v1, BLKIO["blkio.throttle.io_service_bytes"], "x"),
        (parse_psi, PSI["io"].split("\n")[1] + "\n", "some avg10=x"),  # the "full" line, then a bad "some"
    ],
    ids=["diskstats", "net-dev", "io.stat", "blkio", "psi"],
)
def test_a_line_end_the_kernel_does_not_write_shifts_no_line_number(
    parse: Callable[[str, str], object], good: str, bad: str, odd: str
) -> None:
    """splitlines() took a stray \r, \x85 or \u2028 for a line end: the bad line after it was named
    one too far (and a file of them, lines past its end)."""
    text, line = then_bad(good, odd, bad)
    with pytest.raises(ParseError) as e:
        parse(text, "f")
    assert e.value.line == first_bad(odd, line), str(e.value)


@pytest.mark.parametrize("cpu", [HUGE, "١", "-1"])
def test_interrupts_header_of_a_cpu_that_is_not_a_number(cpu: str) -> None:
    """isdecimal() let 5,000 digits through to int(): a bare ValueError."""
    with pytest.raises(ParseError, match="line 1: expected a header of CPUn columns") as e:
        parse_interrupts(f"  CPU0  CPU{cpu}\n 24: 1 2\n", "f")
    assert len(str(e.value)) < 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *(("avg10", v) for v in ("1_0", "1e1", "10", "+1.00", "١.٠٠", "0.٣٥", ".5", "1.", "inf", "nan", "0x1")),
        *(("avg60", v) for v in ("1_0", "1e1", "inf", "nan", "-0.5", "")),
        ("avg300", "1e3"),
        *(("total", v) for v in ("1_0", "1e3", "-1", "+5", "١", "8.5", HUGE, "18446744073709551616")),
    ],
)
def test_psi_value_the_kernel_does_not_write_names_file_and_line(field: str, value: str) -> None:
    """float() took "1_0", "1e1", "10", "+1.00" and "١.٠٠" (avg10's fast path took \\d, any script's
    digits) as a pressure, and avg60, avg300 and total were not looked at."""
    old = {"avg10": "0.35", "avg60": "0.48", "avg300": "0.33", "total": "8334516"}[field]
    text = PSI["io"].replace(f"{field}={old}", f"{field}={value}", 1)  # the "some" line's, which comes first
    with pytest.raises(ParseError, match=f"^f: line 1: {field} ") as e:
        parse_psi(text, "f")
    assert len(str(e.value)) < 200
    assert parse_psi(PSI["io"], "f") == pytest.approx(0.0035)
    assert parse_psi(PSI["io"].replace("0.35", "100.00", 1).replace("8334516", "18446744073709551615"), "f") == 1.0


def test_a_huge_disk_counter_loses_only_the_block_rates(tmp_path: Path) -> None:
    """400 digits parsed, then the rate's float() raised OverflowError out of read(): the NIC and
    IRQ rates of that tick were lost with it."""
    fake_proc(tmp_path)
    s = HostSampler(str(tmp_path), irq_period_s=0.0)
    s.read(0.0)
    fake_proc(tmp_path, DISKSTATS.replace("1000 0 20000", "1000 0 " + WIDE))
    r = s.read(1.0)
    assert "line 1" in r.unavailable["host:block"] and set(r.unavailable) == {"host:block"}


def test_interrupt_counts_past_int64_are_summed_exactly() -> None:
    """numpy saturated a 19-digit count at 2**63-1 and the sum of two such lines wrapped negative."""
    big = "9999999999999999999"  # < 2**64, > 2**63
    text = "           CPU0       CPU1\n" + f" 24: 1 {big} x\n" * 2  # 22 characters: the fast path
    assert parse_interrupts(text) == {0: 2, 1: 2 * int(big)}
    assert parse_interrupts(IRQ8)[7] == sum((irq * 7919 + 7) % 10**6 for irq in range(24, 40))


def test_file_reader_refuses_a_fifo_and_a_file_past_its_limit(tmp_path: Path) -> None:
    fifo = tmp_path / "diskstats"
    os.mkfifo(fifo)
    err = finishes(lambda: FileReader().read(str(fifo)), fifo)
    assert isinstance(err, OSError) and err.filename == str(fifo)
    big = tmp_path / "interrupts"
    big.write_bytes(b"x" * (FileReader.CHUNK * 4))
    fr = FileReader()
    fr.LIMIT = FileReader.CHUNK * 2
    with pytest.raises(OSError, match="larger than") as e:
        fr.read(str(big))
    assert e.value.filename == str(big)


def test_a_huge_io_stat_counter_is_that_tenants_reason(tmp_path: Path) -> None:
    """int() raised a bare ValueError out of read(): every tenant's reading of the tick was lost."""
    for t in ("a", "b"):
        (tmp_path / t).mkdir()
        (tmp_path / t / "io.stat").write_text(IO_STAT.replace("1459200", HUGE) if t == "a" else IO_STAT)
        for w, text in PSI.items():
            (tmp_path / t / f"{w}.pressure").write_text(text)
    r = CgroupSampler({"a": "a", "b": "b"}, str(tmp_path), "v2").read(0.0)
    assert "line 1" in r.unavailable["cgroup:a:io"] and len(r.unavailable["cgroup:a:io"]) < 200
    assert r.tenants["b"].io is not None and r.tenants["a"].io_pressure is not None


# ------------------------------------------------------------------ the I/O lever's read-back


def _cg(tmp_path: Path, version: str) -> CgroupIO:
    (tmp_path / "g").mkdir(parents=True, exist_ok=True)
    marker = "cgroup.controllers" if version == "v2" else "blkio.throttle.write_bps_device"
    (tmp_path / marker).write_text("io\n" if version == "v2" else "")
    for f in ("blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"):
        (tmp_path / "g" / f).write_text(BPS_DEVICE)
    (tmp_path / "g" / "io.max").write_text(IO_MAX)
    return CgroupIO(tmp_path, version)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_io_limits_file_that_is_a_directory_or_not_utf8(tmp_path: Path, version: str) -> None:
    """A directory: a bare IsADirectoryError naming descriptor 3, which stayed open, once per
    reconcile. A byte that is not UTF-8: a UnicodeDecodeError's text naming neither file."""
    cg = _cg(tmp_path, version)
    f = tmp_path / "g" / ("io.max" if version == "v2" else "blkio.throttle.read_bps_device")
    f.unlink()
    f.mkdir()
    before = _fds()
    for _ in range(3):
        with pytest.raises(CgroupError, match=re.escape(str(f))):
            cg.read("g")
    assert _fds() == before
    f.rmdir()
    f.write_bytes(b"8:16 rbps=\xff wbps=max\n" if version == "v2" else b"8:16 \xff1\n")
    with pytest.raises(CgroupError, match=re.escape(str(f))):
        cg.read("g")


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_io_limits_file_that_is_a_fifo(tmp_path: Path, version: str) -> None:
    cg = _cg(tmp_path, version)
    f = tmp_path / "g" / ("io.max" if version == "v2" else "blkio.throttle.read_bps_device")
    f.unlink()
    os.mkfifo(f)
    assert isinstance(finishes(lambda: cg.read("g"), f), CgroupError)


@pytest.mark.parametrize("value", [HUGE, "-5", "١", "1_000"])
@pytest.mark.parametrize("version", ["v2", "v1"])
def test_io_limit_that_is_not_a_number_names_file_and_line(tmp_path: Path, version: str, value: str) -> None:
    """int() took "-5" (a cap of -5 bytes/s), "١" and "1_000", and raised past 4,300 digits with
    a message naming neither the file nor the line; v1 skipped the line of "-5" and "1_000"."""
    cg = _cg(tmp_path, version)
    f = tmp_path / "g" / ("io.max" if version == "v2" else "blkio.throttle.write_bps_device")
    f.write_text(IO_MAX.replace("1048576", value) if version == "v2" else BPS_DEVICE.replace("2097152", value))
    with pytest.raises(CgroupError, match=re.escape(f"{f}: line 2")) as e:
        cg.read("g")
    assert len(str(e.value)) < 300


def _second_line_named(tmp_path: Path, version: str, name: str, first: str, line: str) -> tuple[CgroupIO, Path]:
    """A limits file `name` of `first` and then `line`: its read-back is an error naming the file
    and line 2, in a few hundred characters. The cgroup and the file, for more."""
    cg = _cg(tmp_path, version)
    f = tmp_path / "g" / name
    f.write_text(f"{first}\n{line}\n")
    with pytest.raises(CgroupError, match=re.escape(f"{f}: line 2: ")) as e:
        cg.read("g")
    assert len(str(e.value)) < 300
    return cg, f


@pytest.mark.parametrize("line", ["259:0", "259:0 1 2", "sda 1048576", "259:0 max", "259:0:1 5", "1048576"])
def test_v1_limit_line_that_is_not_majmin_n_names_file_and_line(tmp_path: Path, line: str) -> None:
    """A blkio.throttle.*_device line other than the kernel's `MAJ:MIN N` was skipped without a
    word: the cap it held read back as absent (a write's read-back then a mismatch, a kept cap
    unseen)."""
    cg, f = _second_line_named(tmp_path, "v1", "blkio.throttle.write_bps_device", "8:16 1048576", line)
    f.write_text("8:16 1048576\n\n259:0 0\n")  # a blank line and a rule of 0 (lifted) are no cap
    assert cg.read("g") == {"8:16": Caps(1048576, 1048576), "259:0": Caps(2097152, None)}


@pytest.mark.parametrize("line", ["259:0", "sda rbps=5 wbps=max", "259:0 rbps=5 junk", "259:0 rbps wbps=5"])
def test_v2_limit_line_that_is_not_majmin_keys_names_file_and_line(tmp_path: Path, line: str) -> None:
    """io.max lines the kernel does not print were read as no cap ("259:0", "259:0 rbps"), a cap of
    a device named "sda", or a cap whatever else the line held."""
    _second_line_named(tmp_path, "v2", "io.max", "8:16 rbps=max wbps=7", line)


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("259:0 rbps=5 wbps=max riops=-1 wiops=max", "'riops' is not a number of IOs/s or max: '-1'"),
        ("259:0 rbps=5 wbps=max riops=max wiops=1e3", "'wiops' is not a number of IOs/s or max: '1e3'"),
        ("259:0 rbps=5 rbps=6", "a key twice: 'rbps=6'"),
        ("259:0 rbps=5 =6", "an empty key: '=6'"),
        ("259:0 rbps=5 later=x", "'later' is not a number of bytes/s or max: 'x'"),
    ],
)
def test_v2_limit_values_tailguard_leaves_alone_are_checked_too(tmp_path: Path, line: str, said: str) -> None:
    """io.max's iops values (tailguard sets only bps) and keys past the four were not looked at: a
    line with garbage there read back as a good cap; a key given twice kept the second."""
    cg, _ = _second_line_named(tmp_path, "v2", "io.max", "8:16 rbps=max wbps=7", line)
    with pytest.raises(CgroupError, match=re.escape(said)):
        cg.read("g")


@pytest.mark.parametrize("odd", NOT_LINE_ENDS, ids=ascii)
@pytest.mark.parametrize("version", ["v2", "v1"])
def test_io_limits_line_numbers_are_the_kernels(tmp_path: Path, version: str, odd: str) -> None:
    """splitlines() numbered the lines after a stray \r or \u2028 one too far."""
    cg = _cg(tmp_path, version)
    good, f = (IO_MAX, "io.max") if version == "v2" else (BPS_DEVICE, "blkio.throttle.write_bps_device")
    text, line = then_bad(good, odd, "8:32 rbps=-5" if version == "v2" else "8:32 " + "9" * 25)
    (tmp_path / "g" / f).write_text(text)
    with pytest.raises(CgroupError, match=re.escape(f"{tmp_path / 'g' / f}: line {first_bad(odd, line)}:")):
        cg.read("g")


# whitespace str.split() splits at and the kernel never writes between fields
NOT_SEPARATORS = ("\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2003")


@pytest.mark.parametrize("odd", NOT_SEPARATORS, ids=ascii)
@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (parse_diskstats, DISKSTATS.replace(" 20000 100 ", " 20000{odd}100 ", 1)),  # sectors read
        (parse_net_dev, NETDEV.replace(": ", ":{odd}", 1).replace(" 0 ", " 0{odd}", 1)),
        (parse_io_stat, "8:16{odd}rbytes=1 wbytes=2 rios=3 wios=4\n"),
        (parse_blkio_v1, "8:16{odd}Read 5\n8:16 Write 6\nTotal 11\n"),
        (parse_psi, "some avg10=0.00{odd}avg60=0.00 avg300=0.00 total=0\n"),
    ],
    ids=["diskstats", "net-dev", "io.stat", "blkio", "psi"],
)
def test_a_field_separator_the_kernel_does_not_write_is_no_separator(
    parse: Callable[[str, str], object], text: str, odd: str
) -> None:
    """str.split() split fields at \x1c, \x85 or a no-break space too: "8:16\x1cRead 5" read as a
    device's counter. Such a character stays inside its field, and the field is refused."""
    with pytest.raises(ParseError):
        parse(text.replace("{odd}", odd), "f")


@pytest.mark.parametrize("odd", NOT_SEPARATORS, ids=ascii)
def test_interrupts_split_where_the_kernel_does_not(odd: str) -> None:
    """The /proc/interrupts reader split its header and its counts with str.split() too: "CPU0\x1cCPU1"
    was two CPUs, and "1\x1c2" two counts of a line the numpy path leaves to the slow one."""
    with pytest.raises(ParseError, match="line 1: expected a header of CPUn columns"):
        parse_interrupts(f"  CPU0{odd}CPU1\n 24: 1 2\n", "f")
    # not per-CPU counts (as ERR/MIS are not): the line adds nothing
    assert parse_interrupts(f"  CPU0  CPU1\n 24: 1{odd}2 IR-PCI-MSI nvme0q0\n", "f") == {0: 0, 1: 0}


@pytest.mark.parametrize("odd", NOT_SEPARATORS, ids=ascii)
@pytest.mark.parametrize("version", ["v2", "v1"])
def test_a_limit_line_split_where_the_kernel_does_not_is_an_error(tmp_path: Path, version: str, odd: str) -> None:
    """ "8:16\x1c1048576" in a blkio limits file, or "8:16\x1crbps=5" in io.max, read as a cap."""
    cg = _cg(tmp_path, version)
    f, line = ("io.max", f"8:16{odd}rbps=5") if version == "v2" else ("blkio.throttle.write_bps_device", f"8:16{odd}5")
    (tmp_path / "g" / f).write_text(line + "\n")
    with pytest.raises(CgroupError, match=re.escape(f"{tmp_path / 'g' / f}: line 1:")):
        cg.read("g")


@pytest.mark.parametrize("odd", NOT_SEPARATORS, ids=ascii)
def test_cgroup_procs_split_where_the_kernel_does_not_is_an_error(tmp_path: Path, odd: str) -> None:
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "cgroup.procs").write_text(f"5001{odd}5002\n")
    with pytest.raises(MpsError, match=re.escape("cgroup.procs: line 1: not a process id")):
        asyncio.run(_mps(tmp_path).server("t"))


# ------------------------------------------------------------------ sysfs


@pytest.mark.parametrize("value", ["--1", HUGE, "٣"])
def test_numa_node_that_is_not_a_number_is_no_numa(tmp_path: Path, value: str) -> None:
    """lstrip("-").isdecimal() let "--1" and 5,000 digits through to int() (a bare ValueError out
    of discovery) and "٣" made a NUMA node 3 the host does not have."""
    build_p4d(tmp_path)
    for p in tmp_path.glob("devices/pci0000:10/*/numa_node"):
        p.write_text(value + "\n")
    topo = discover_sysfs(str(tmp_path))
    assert sorted(n.id for n in topo.nodes if n.kind.value == "numa") == ["numa0", "numa1"]


def test_cpulist_of_many_ranges_is_refused() -> None:
    """Each range was bounded, their number not: a 64 KiB local_cpulist of "0-65535," made half a
    billion CPUs (gigabytes); here 20 ranges, 1.3 million."""
    with pytest.raises(ValueError, match="more than"):
        parse_cpulist(",".join(["0-65535"] * 20))
    with pytest.raises(ValueError, match="not a CPU list"):
        parse_cpulist("0-١")
    assert parse_cpulist("0-3,8") == (0, 1, 2, 3, 8)


def test_sysfs_attribute_that_is_a_fifo(tmp_path: Path) -> None:
    """open() of a FIFO waited for a writer for ever (and read() of a link to /dev/zero, not tried
    here, filled the memory): only regular files of at most a page or so are read now."""
    build_p4d(tmp_path)
    dev = next(tmp_path.glob("devices/pci0000:10/*"))
    (dev / "vendor").unlink()
    os.mkfifo(dev / "vendor")
    (dev / "local_cpulist").unlink()
    (dev / "local_cpulist").symlink_to("/dev/null")
    assert finishes(lambda: discover_sysfs(str(tmp_path)), dev / "vendor") is None


def _block(tmp_path: Path) -> Path:
    disk = tmp_path / "devices" / "sda"
    (disk / "sda1").mkdir(parents=True)
    (disk / "dev").write_text("8:0\n")
    (disk / "sda1" / "dev").write_text("8:1\n")
    (disk / "sda1" / "partition").write_text("1\n")
    for name, d in (("sda", disk), ("sda1", disk / "sda1")):
        (tmp_path / "class" / "block").mkdir(parents=True, exist_ok=True)
        (tmp_path / "class" / "block" / name).symlink_to(d)
        (tmp_path / "dev" / "block").mkdir(parents=True, exist_ok=True)
        (tmp_path / "dev" / "block" / (d / "dev").read_text().strip()).symlink_to(d)
    return disk


def test_block_dev_attribute_not_utf8_or_not_majmin(tmp_path: Path) -> None:
    """read_text() raised a bare UnicodeDecodeError; a partition's parent `dev` was returned as
    its MAJ:MIN whatever it held (and written into io.max)."""
    disk = _block(tmp_path)
    assert resolve("sda1", tmp_path) == "8:0"
    (disk / "sda1" / "dev").write_bytes(b"8:\xff1\n")
    with pytest.raises(DeviceError, match=re.escape(str(tmp_path / "class/block/sda1/dev"))):
        resolve("sda1", tmp_path)
    (disk / "dev").write_bytes(b"garbage\n")
    with pytest.raises(DeviceError, match="bad MAJ:MIN 'garbage'"):
        resolve("8:1", tmp_path)


# ------------------------------------------------------------------ cgroup.procs (the MPS lever)


class _Ctl:
    async def servers(self) -> list[int]:
        return [900]

    async def clients(self, server: int) -> list[int]:
        return [5002]


def _mps(root: Path) -> MpsLimits:
    # only what server() uses: the tenant's cgroup under the root, the servers and their clients
    h: Any = types.SimpleNamespace(tenant_cgroup=lambda t, c: "g", cg=types.SimpleNamespace(root=root))
    ctl: Any = _Ctl()
    return MpsLimits(h, ctl)


@pytest.mark.parametrize("procs", ["5001\nx\n", f"5001\n{HUGE}\n", "5001\n١\n", "5001\n-5\n"])
def test_cgroup_procs_garbage_names_file_and_line(tmp_path: Path, procs: str) -> None:
    """int() raised a bare ValueError (the reconcile's message: "invalid literal for int()")."""
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "cgroup.procs").write_text(procs)
    with pytest.raises(MpsError, match=re.escape(f"{tmp_path / 'g' / 'cgroup.procs'}: line 2")) as e:
        asyncio.run(_mps(tmp_path).server("t"))
    assert len(str(e.value)) < 300
    (tmp_path / "g" / "cgroup.procs").write_text("5001\n5002\n")
    assert asyncio.run(_mps(tmp_path).server("t")) == 900


@pytest.mark.parametrize("odd", NOT_LINE_ENDS, ids=ascii)
def test_cgroup_procs_line_numbers_are_the_kernels(tmp_path: Path, odd: str) -> None:
    (tmp_path / "g").mkdir()
    text, line = then_bad("5001\n5002\n", odd, "x")
    (tmp_path / "g" / "cgroup.procs").write_text(text)
    bad = "'x'" if odd == "\r" else ascii("5002" + odd)
    with pytest.raises(
        MpsError, match=re.escape(f"cgroup.procs: line {first_bad(odd, line)}: not a process id: {bad}")
    ):
        asyncio.run(_mps(tmp_path).server("t"))


# ------------------------------------------------------------------ the fuzz loops

ODD_NUMBERS = (HUGE, WIDE, "18446744073709551616", "9999999999999999999", "-1", "NaN", "inf", "²", "١", "1.2.3",
               "", "0x10", "1_0", "+5")  # fmt: skip
ODD_TEXT = ("\x00", "\r\n", "\t", "\u2028", "\ufeff", "é", "|", ":", "=", ",", " ", "\n")
_NUM = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def mutate(rng: random.Random, text: str) -> str:
    """One to four edits: truncate, delete / duplicate / swap lines, swap / duplicate / delete a
    field, an odd number (more often: numbers are what the readers convert), an odd character, a
    very long line, an empty file, CRLF, random bytes (latin-1, so the file gets bytes that are not
    UTF-8)."""
    for _ in range(rng.randint(1, 4)):
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        k = rng.randrange(12)
        if k == 0:
            text = text[: rng.randrange(len(text) + 1)]
        elif k in (1, 2, 3):
            j = rng.randrange(len(lines))
            if k == 1:
                del lines[i]
            elif k == 2:
                lines.insert(i, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif k == 4 and len(f := lines[i].split(" ")) > 1:
            a, b = rng.randrange(len(f)), rng.randrange(len(f))
            op = rng.randrange(3)
            if op == 0:
                f[a], f[b] = f[b], f[a]
            elif op == 1:
                f.insert(a, f[a])
            else:
                del f[a]
            lines[i] = " ".join(f)
            text = "\n".join(lines)
        elif k in (5, 6, 7) and (nums := list(_NUM.finditer(text))):
            m = rng.choice(nums)
            text = text[: m.start()] + rng.choice(ODD_NUMBERS) + text[m.end() :]
        elif k == 8:
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(ODD_TEXT) + text[at:]
        elif k == 9:
            lines[i] = (lines[i] * rng.randint(50, 500))[:100_000]
            text = "\n".join(lines)
        elif k == 10:
            text = rng.choice(("", text.replace("\n", "\r\n")))
        else:
            at = rng.randrange(len(text) + 1)
            text = (
                text[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))).decode("latin-1") + text[at:]
            )
    return text


def put(rng: random.Random, p: Path, text: str, odd: float = 0.1) -> None:
    """p as a mutated `text` (as Latin-1 bytes where not ASCII, so "é" becomes a lone 0xe9), or
    with probability `odd` missing, a directory, a symlink loop or a link to /dev/null."""
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)
    if rng.random() < odd:
        k = rng.randrange(4)
        if k == 1:
            p.mkdir()
        elif k == 2:
            p.symlink_to(p.name)
        elif k == 3:
            p.symlink_to("/dev/null")
        return
    p.write_bytes(mutate(rng, text).encode("latin-1", "replace"))


def loop(runs: int, seed: int, one: Callable[[random.Random], None]) -> None:
    rng = random.Random(seed)
    for i in range(runs):
        try:
            one(rng)
        except AssertionError:
            raise
        except Exception as e:
            raise AssertionError(f"run {i} of seed {seed}: {type(e).__name__}: {str(e)[:300]}") from e


def only_parse_errors(parse: Callable[[str, str], object], seeds: list[str]) -> Callable[[random.Random], None]:
    def one(rng: random.Random) -> None:
        text = mutate(rng, rng.choice(seeds))
        try:
            parse(text, "f")
        except ParseError as e:
            assert str(e).startswith("f") and len(str(e)) < 400
            assert e.line is None or 1 <= e.line <= text.count("\n") + 1  # the kernel's lines: "\n" ends one

    return one


@pytest.mark.parametrize(
    ("parse", "seeds"),
    [
        (parse_diskstats, [DISKSTATS]),
        (parse_net_dev, [NETDEV]),
        (parse_interrupts, [INTERRUPTS, IRQ8]),
        (parse_io_stat, [IO_STAT]),
        (parse_blkio_v1, list(BLKIO.values())),
        (parse_psi, list(PSI.values())),
    ],
    ids=["diskstats", "net-dev", "interrupts", "io.stat", "blkio", "psi"],
)
def test_proc_and_cgroup_parsers_fuzz(parse: Callable[[str, str], object], seeds: list[str]) -> None:
    loop(1500, 3, only_parse_errors(parse, seeds))


def _finite(values: Iterable[float]) -> None:
    assert all(math.isfinite(v) and v >= 0 for v in values)


def test_host_sampler_fuzz(tmp_path: Path) -> None:
    fake_proc(tmp_path)
    seeds = {"diskstats": DISKSTATS, "net/dev": NETDEV, "interrupts": IRQ8}

    def one(rng: random.Random) -> None:
        s = HostSampler(str(tmp_path), irq_period_s=0.0)
        for t in (0.0, 1.0):  # two reads: a rate needs a previous counter
            for rel, text in seeds.items():
                put(rng, tmp_path / rel, text)
            s._files.close()  # the kept descriptors would read the replaced files' old inodes
            r = s.read(t)
            assert set(r.unavailable) <= {"host:block", "host:nic", "host:irq"}
            _finite([*r.sample.block_bps.values(), *r.sample.nic_bps.values(), *r.sample.irq_rate.values()])
        s._files.close()

    loop(400, 5, one)


def test_cgroup_sampler_fuzz(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    for d in (v2 / "a", v2 / "b", v1 / "blkio" / "a", v1 / "unified" / "a"):
        d.mkdir(parents=True)

    def one(rng: random.Random) -> None:
        version: Literal["v1", "v2"] = rng.choice(("v1", "v2"))
        s = CgroupSampler({"a": "a", "b": "b"} if version == "v2" else {"a": "a"}, str(tmp_path / version), version)
        for t in (0.0, 1.0):
            if version == "v2":
                for g in ("a", "b"):
                    put(rng, v2 / g / "io.stat", IO_STAT)
                    for w, text in PSI.items():
                        put(rng, v2 / g / f"{w}.pressure", text)
            else:
                for name, text in BLKIO.items():
                    put(rng, v1 / "blkio" / "a" / name, text)
                for w, text in PSI.items():
                    put(rng, v1 / "unified" / "a" / f"{w}.pressure", text)
            s._files.close()  # see test_host_sampler_fuzz
            r = s.read(t)
            assert set(r.tenants) == set(s.tenants)
            for tn in r.tenants.values():
                assert tn.io_pressure is None or 0 <= tn.io_pressure <= 1
                for io in (tn.io or {}).values():
                    rates = (io.read_bps, io.write_bps, io.read_iops, io.write_iops)
                    _finite(v for v in rates if v is not None)
        s._files.close()

    loop(400, 7, one)


def test_io_limits_read_back_fuzz(tmp_path: Path) -> None:
    cgs = {v: _cg(tmp_path / v, v) for v in ("v1", "v2")}

    def one(rng: random.Random) -> None:
        version = rng.choice(("v1", "v2"))
        g = tmp_path / version / "g"
        if version == "v2":
            put(rng, g / "io.max", IO_MAX)
        else:
            put(rng, g / "blkio.throttle.read_bps_device", BPS_DEVICE)
            put(rng, g / "blkio.throttle.write_bps_device", BPS_DEVICE)
        try:
            caps = cgs[version].read("g")
        except CgroupError as e:
            assert str(g) in str(e) and len(str(e)) < 600
            return
        assert all(c is None or (isinstance(c, int) and c >= 0) for cap in caps.values() for c in (cap.rbps, cap.wbps))

    before = _fds()
    loop(1500, 9, one)
    assert _fds() == before  # no descriptor left behind


_SYSFS_ATTRS = {"class", "vendor", "device", "numa_node", "local_cpulist", "current_link_speed",
                "current_link_width", "dev", "cpulist"}  # fmt: skip


def test_sysfs_discovery_fuzz(tmp_path: Path) -> None:
    """Mutates the attributes discovery reads (and now and then replaces a link of bus/pci/devices,
    class/net or block by a loop, a directory or a link out of the tree); never raises."""
    build_dgx_a100(tmp_path)
    files = sorted(p for p in tmp_path.rglob("*") if p.name in _SYSFS_ATTRS and p.is_file() and not p.is_symlink())
    links = sorted(p for p in tmp_path.rglob("*") if p.is_symlink())

    def one(rng: random.Random) -> None:
        chosen = rng.sample(files, rng.randint(1, 8)) + rng.sample(links, rng.randint(0, 1))
        saved = [(p, os.readlink(p) if p.is_symlink() else p.read_bytes()) for p in chosen]
        try:
            for p, old in saved:
                if isinstance(old, bytes):
                    put(rng, p, old.decode())
                    continue
                p.unlink()
                k = rng.randrange(3)
                if k == 0:
                    p.symlink_to(p.name)  # a loop
                elif k == 1:
                    p.mkdir()
                else:
                    p.symlink_to("../" * 9)  # out of the tree
            topo = discover_sysfs(str(tmp_path))
            render_tree(topo)
            node_labels(topo)
        finally:
            for p, old in saved:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.is_symlink() or p.exists():
                    p.unlink()
                if isinstance(old, str):
                    p.symlink_to(old)
                else:
                    p.write_bytes(old)

    loop(250, 11, one)


def test_block_device_resolve_fuzz(tmp_path: Path) -> None:
    disk = _block(tmp_path)

    def one(rng: random.Random) -> None:
        put(rng, disk / "dev", "8:0\n")
        put(rng, disk / "sda1" / "dev", "8:1\n")
        for device in ("sda", "sda1", "8:1"):
            try:
                got = resolve(device, tmp_path)
            except DeviceError as e:
                assert len(str(e)) < 400
                continue
            assert re.fullmatch(r"[0-9]{1,10}:[0-9]{1,10}", got)

    loop(800, 13, one)


def test_cgroup_procs_fuzz(tmp_path: Path) -> None:
    (tmp_path / "g").mkdir()
    mps = _mps(tmp_path)

    def one(rng: random.Random) -> None:
        put(rng, tmp_path / "g" / "cgroup.procs", "5001\n5002\n5003\n")
        try:
            assert asyncio.run(mps.server("t")) == 900
        except MpsError as e:
            assert len(str(e)) < 400

    loop(600, 17, one)


@pytest.mark.parametrize(
    ("parse", "text", "says"),
    [
        (lambda t: parse_io_stat(t, "io.stat"), "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n" * 2,
         "io.stat: line 2: device 8:0 twice"),
        (lambda t: parse_blkio_v1(t, "blkio"), "8:0 Read 5\n8:0 Write 6\n8:0 Read 7\nTotal 18\n",
         "blkio: line 3: 8:0 Read twice"),
        (lambda t: cgroup_act._parse_v2(t),
         "8:0 rbps=1 wbps=max riops=max wiops=max\n8:0 rbps=max wbps=5 riops=max wiops=max\n",
         "io.max: line 2: device 8:0 twice"),
        (lambda t: cgroup_act._parse_v1(t, ""), "8:0 100\n8:0 0\n", "read: line 2: device 8:0 twice"),
    ],
    ids=["io.stat", "blkio-v1", "io.max", "v1-limits"],
)  # fmt: skip
def test_a_device_given_twice_is_an_error_not_the_last_line(parse: Any, text: str, says: str) -> None:
    """Found by fuzzing: the last line of a device won (an io.max read-back of "rbps=1" then
    "rbps=max" hid the read cap). The kernel writes one line (one rule) a device."""
    with pytest.raises((ParseError, ValueError), match=re.escape(says)):
        parse(text)
