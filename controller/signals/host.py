"""Host counters from /proc (the files psutil reads; parsed directly so the root can be a fake
tree in tests and a tick costs no process-wide psutil state): block device and NIC throughput,
per-CPU interrupt rates from /proc/interrupts. Counter resets/wraps give no rate, never a
negative one.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from controller.signals.base import FileReader, InlineOrThread, ParseError, Unavailable, counter
from controller.signals.rates import CounterRates
from fsm.observation import HostSample
from schema.jsontext import U64_PATTERN, ascii_digits, fields, shown, text_lines

SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's block size
_SKIP_BLOCK = ("loop", "ram", "zram", "fd", "sr")
# partitions would count their disk's traffic twice (sysfs marks them with a `partition` file)
_PARTITION = re.compile(r"(?a)^(nvme\d+n\d+p\d+|(sd|vd|xvd|hd)[a-z]+\d+|mmcblk\d+p\d+)$")


# Documentation/admin-guide/iostats.rst: the fields after major, minor and name (11 before 4.18,
# 15 with the discard fields, 17 with the flush ones since 5.5); all printed %lu or %u
_DISK_FIELDS = (
    "reads completed", "reads merged", "sectors read", "time reading", "writes completed", "writes merged",
    "sectors written", "time writing", "I/Os in progress", "time doing I/O", "weighted time doing I/O",
    "discards completed", "discards merged", "sectors discarded", "time discarding", "flushes completed",
    "time flushing",
)  # fmt: skip
# /proc/net/dev (net/core/net-procfs.c, dev_seq_printf_stats): 8 receive, 8 transmit counters
_NET_FIELDS = tuple(
    f"{side} {what}"
    for side, whats in (
        ("rx", ("bytes", "packets", "errs", "drop", "fifo", "frame", "compressed", "multicast")),
        ("tx", ("bytes", "packets", "errs", "drop", "fifo", "colls", "carrier", "compressed")),
    )
    for what in whats
)


def _counters(tokens: list[str], names: tuple[str, ...], source: str, n: int) -> None:
    """Every count of the line is a u64 the kernel printed, else a ParseError naming the first that
    is not: the readers use two of them, but a line with garbage in the others is no kernel line
    and its two may be garbage too. One join and two C checks for the usual all-digits line."""
    joined = "".join(tokens)
    if ascii_digits(joined) and max(map(len, tokens), default=0) < 20:
        return  # under 20 digits: below 10**19 < 2**64
    for i, tok in enumerate(tokens):
        counter(tok, source, n, names[i] if i < len(names) else f"field {i + 1}")


# The kernel's line (block/genhd.c, diskstats_show): "%4d %7d %pg " then the counters, one space
# apart; sectors read and written are the 3rd and 7th.
_C = U64_PATTERN
_DISK_LINE = re.compile(
    rf"^ *[0-9]{{1,10}} +[0-9]{{1,10}} (\S+) {_C} {_C} ({_C}) {_C} {_C} {_C} ({_C})(?: {_C}){{4,}}$", re.M
)


def parse_diskstats(text: str, source: str = "/proc/diskstats") -> dict[str, tuple[int, int]]:
    """device -> (bytes read, bytes written), cumulative."""
    fast = _DISK_LINE.findall(text)
    # the kernel writes one "\n"-terminated line per device; anything else takes the careful path
    if len(fast) == text.count("\n") and (not text or text[-1] == "\n"):
        return {name: (int(rd) * SECTOR, int(wr) * SECTOR) for name, rd, wr in fast}
    return _parse_diskstats_lines(text, source)


def _parse_diskstats_lines(text: str, source: str) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for n, line in enumerate(text_lines(text), 1):
        f = fields(line)
        if not f:
            continue
        if len(f) < 14:
            raise ParseError(source, n, f"expected at least 14 fields, got {len(f)}")
        if not (ascii_digits(f[0]) and ascii_digits(f[1])):
            raise ParseError(source, n, f"expected major and minor numbers first, got {shown(f[0])} {shown(f[1])}")
        _counters(f[3:], _DISK_FIELDS, source, n)
        out[f[2]] = (int(f[5]) * SECTOR, int(f[9]) * SECTOR)
    return out


def parse_net_dev(text: str, source: str = "/proc/net/dev") -> dict[str, tuple[int, int]]:
    """interface -> (rx bytes, tx bytes), cumulative."""
    out: dict[str, tuple[int, int]] = {}
    for n, line in enumerate(text_lines(text), 1):
        if n <= 2 and "|" in line:
            continue  # the two header lines
        if not line.strip():
            continue
        name, sep, rest = line.partition(":")
        f = fields(rest)
        if not sep or len(f) != 16:
            raise ParseError(source, n, f"expected 'IFACE: 16 counters', got {line.strip()[:80]!r}")
        _counters(f, _NET_FIELDS, source, n)
        out[name.strip()] = (int(f[0]), int(f[8]))
    return out


def parse_interrupts(text: str, source: str = "/proc/interrupts") -> dict[int, int]:
    """cpu -> total interrupts on it, cumulative (sum over all IRQ lines).

    The kernel prints each per-CPU count as " %10u" (fs/proc/interrupts.c, arch show_interrupts),
    so on a big host (224 CPUs x 600 IRQ lines, 1.5 MB) the count columns of every line are cut at
    11 x CPUs characters and summed by numpy in one pass; a line where that cut does not fall on a
    field boundary (a count wider than 10 digits, ERR/MIS, a shorter line) is split the slow way.
    """
    lines = text.split("\n")
    if not lines or not lines[0].strip():
        raise ParseError(source, 1, "empty file or no CPU header")
    cpus = []
    for tok in fields(lines[0]):
        # ASCII and short: isdecimal() took "CPU١" and 5,000 digits, which int() refused bare
        if not tok.startswith("CPU") or not ascii_digits(tok[3:]) or len(tok) > 9:
            raise ParseError(source, 1, f"expected a header of CPUn columns, got {shown(tok)}")
        cpus.append(int(tok[3:]))
    n = len(cpus)
    width = 11 * n
    fast: list[tuple[int, str]] = []
    slow: list[tuple[int, str]] = []
    for i, line in enumerate(lines[1:], 2):
        _irq, sep, rest = line.partition(":")
        if not sep:
            if line.strip():
                raise ParseError(source, i, f"expected 'IRQ: counts...', got {line.strip()[:80]!r}")
            continue
        if len(rest) >= width and (len(rest) == width or rest[width] == " "):
            fast.append((i, rest[:width]))
        else:
            slow.append((i, rest))
    totals = [0] * n
    if fast:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy warns on unmatched data; the size check below decides
                arr = np.fromstring(" ".join(r for _, r in fast), dtype=np.int64, sep=" ")
        except ValueError:  # newer numpy raises instead of warning: the slow path names the line
            arr = np.empty(0, dtype=np.int64)
        # numpy saturates a count past int64 (and its sum then wraps negative): a count is a u32
        # (" %10u"), and anything else is left to the slow path, which is exact
        if arr.size == n * len(fast) and (arr >= 0).all() and (arr <= 0xFFFFFFFF).all():
            totals = [int(x) for x in arr.reshape(len(fast), n).sum(axis=0)]
        else:
            slow = fast + slow
    for i, rest in slow:
        f = fields(rest)  # the counts, then the IRQ's chip and name
        # ERR/MIS (x86) carry one global number, not one per CPU: such lines are not per-CPU load
        # (isdecimal(), not ASCII digits: a count in other digits is a per-CPU line that counter()
        # refuses by name, not a line to pass over)
        if len(f) >= n and all(x.isdecimal() for x in f[:n]):
            for k in range(n):
                totals[k] += counter(f[k], source, i, f"CPU{cpus[k]} count")
    return dict(zip(cpus, totals, strict=True))


@dataclass(frozen=True, slots=True)
class HostReading:
    sample: HostSample
    unavailable: Mapping[str, str] = field(default_factory=dict)


class HostSampler:
    name = "host"

    def __init__(self, proc_root: str = "/proc", timeout_s: float = 1.0, irq_period_s: float = 5.0) -> None:
        self.proc_root = proc_root
        self.timeout_s = timeout_s
        # /proc/interrupts of a 224-CPU host with 600 IRQ lines is 1.5 MB (~10 ms to sum even with
        # numpy): it is read at most every irq_period_s, and the rates over that period are
        # reported on the ticks between.
        self.irq_period_s = irq_period_s
        self._irq_t: float | None = None
        self._irq_last: dict[int, float] = {}
        self._disk = CounterRates(max_rate=1e12)
        self._net = CounterRates(max_rate=1e12)
        self._irq = CounterRates(max_rate=1e9)
        self._files = FileReader()
        self._runner = InlineOrThread()

    def _read(self, rel: str) -> str:
        return self._files.read(os.path.join(self.proc_root, rel))

    def read(self, now: float) -> HostReading:
        reasons: dict[str, str] = {}
        block: dict[str, float] = {}
        nic: dict[str, float] = {}
        irq: dict[int, float] = {}
        try:
            disks = parse_diskstats(self._read("diskstats"), os.path.join(self.proc_root, "diskstats"))
            for dev, (rd, wr) in disks.items():
                if dev.startswith(_SKIP_BLOCK) or _PARTITION.match(dev):
                    continue
                r = self._disk.update(dev, now, rd + wr)
                if r is not None:
                    block[dev] = r
        except (OSError, ParseError) as e:
            reasons["host:block"] = str(e)
        try:
            nets = parse_net_dev(self._read("net/dev"), os.path.join(self.proc_root, "net/dev"))
            for dev, (rx, tx) in nets.items():
                if dev == "lo":
                    continue
                r = self._net.update(dev, now, rx + tx)
                if r is not None:
                    nic[dev] = r
        except (OSError, ParseError) as e:
            reasons["host:nic"] = str(e)
        if self._irq_t is not None and 0 <= now - self._irq_t < self.irq_period_s:
            irq = self._irq_last
        else:
            try:
                path = os.path.join(self.proc_root, "interrupts")
                for cpu, total in parse_interrupts(self._read("interrupts"), path).items():
                    r = self._irq.update(cpu, now, total)
                    if r is not None:
                        irq[cpu] = r
                self._irq_t, self._irq_last = now, irq
            except (OSError, ParseError) as e:
                reasons["host:irq"] = str(e)
                self._irq_t, self._irq_last = None, {}
        return HostReading(HostSample(block_bps=block, nic_bps=nic, irq_rate=irq), reasons)

    async def sample(self, now: float) -> HostReading | Unavailable:
        r = await self._runner.call(self.read, now)
        if len(r.unavailable) == 3:
            return Unavailable("; ".join(r.unavailable.values()))
        return r
