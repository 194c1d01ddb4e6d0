"""Host sampler: this machine's /proc, and a fake /proc whose counters reset and wrap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.signals.base import ParseError, Unavailable
from controller.signals.host import HostReading, HostSampler, parse_diskstats, parse_interrupts, parse_net_dev

DISKSTATS = """\
 259       0 nvme0n1 1000 0 20000 100 2000 0 40000 300 0 400 400 0 0 0 0 0 0
 259       1 nvme0n1p1 10 0 200 1 20 0 400 3 0 4 4 0 0 0 0 0 0
   7       0 loop0 5 0 10 0 0 0 0 0 0 0 0 0 0 0 0 0 0
"""
NETDEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compr
    lo:    3293      31    0    0    0     0          0         0     3293      31    0    0    0     0       0     0
  eth0: 1000000    2241    0    0    0     0          0         0   500000     915    0    0    0     0       0     0
"""
INTERRUPTS = """\
           CPU0       CPU1
 24:        100          0  IO-APIC   5-edge      ACPI:Ged
 28:         10         20 PCI-MSIX-0000:00:01.0   0-edge      virtio0-config
NMI:          1          2   Non-maskable interrupts
ERR:          0
MIS:          0
"""


def fake_proc(root: Path, disk: str = DISKSTATS, net: str = NETDEV, irq: str = INTERRUPTS) -> None:
    (root / "net").mkdir(parents=True, exist_ok=True)
    (root / "diskstats").write_text(disk)
    (root / "net" / "dev").write_text(net)
    (root / "interrupts").write_text(irq)


def test_fake_proc_rates(tmp_path: Path) -> None:
    fake_proc(tmp_path)
    s = HostSampler(str(tmp_path), irq_period_s=0.0)
    first = s.read(0.0)
    assert first.sample.block_bps == {} and not first.unavailable  # no rate from one reading
    fake_proc(
        tmp_path,
        DISKSTATS.replace("1000 0 20000", "1000 0 22048").replace("2000 0 40000", "2000 0 40000"),
        NETDEV.replace("1000000", "1100000"),
        INTERRUPTS.replace("        100          0", "        300         40"),
    )
    r = s.read(2.0)
    assert r.sample.block_bps["nvme0n1"] == pytest.approx(2048 * 512 / 2)
    assert "loop0" not in r.sample.block_bps and "nvme0n1p1" not in r.sample.block_bps
    assert r.sample.nic_bps == {"eth0": pytest.approx(50000.0)}  # lo left out
    assert r.sample.irq_rate == {0: pytest.approx(100.0), 1: pytest.approx(20.0)}
    # counters reset (reboot of a namespace, driver reload) or wrap: no negative, no absurd rate
    fake_proc(tmp_path, DISKSTATS.replace("1000 0 22048", "1 0 8"), NETDEV.replace("1000000", "5"), INTERRUPTS)
    r = s.read(4.0)
    assert "nvme0n1" not in r.sample.block_bps and "eth0" not in r.sample.nic_bps
    assert all(v >= 0 for v in r.sample.irq_rate.values())


def test_this_machines_proc() -> None:
    s = HostSampler("/proc", irq_period_s=0.0)

    async def run() -> HostReading:
        await s.sample(0.0)
        await asyncio.sleep(0.05)
        r = await s.sample(0.05)
        assert isinstance(r, HostReading)
        return r

    r = asyncio.run(run())
    assert not r.unavailable, r.unavailable
    assert r.sample.irq_rate and all(v >= 0 for v in r.sample.irq_rate.values())
    assert all(v >= 0 for v in r.sample.block_bps.values())
    assert all(v >= 0 for v in r.sample.nic_bps.values())


def test_parsers_on_real_proc_files() -> None:
    assert parse_diskstats(Path("/proc/diskstats").read_text())
    assert "lo" in parse_net_dev(Path("/proc/net/dev").read_text())
    assert 0 in parse_interrupts(Path("/proc/interrupts").read_text())


def test_broken_proc(tmp_path: Path) -> None:
    fake_proc(tmp_path, disk="8 0 sda 1 2 3\n", net="eth0 1 2 3\n", irq="garbage header\n")
    r = asyncio.run(HostSampler(str(tmp_path)).sample(0.0))
    assert isinstance(r, Unavailable)
    assert "diskstats: line 1: expected at least 14 fields" in r.reason
    assert "net/dev: line 1" in r.reason and f"{tmp_path}/interrupts: line 1" in r.reason
    with pytest.raises(ParseError, match="line 3"):
        parse_interrupts("  CPU0\n 1: 5 x\nbogus line\n")


def kernel_interrupts(ncpu: int, nirq: int, base: int = 0, wide: bool = False) -> str:
    """/proc/interrupts as the kernel prints it: "%*d: " then "%10u " per CPU, then the chip and name."""
    head = " " * 5 + "".join(f"CPU{i:<8d}" for i in range(ncpu))
    rows = [head]
    for irq in range(nirq):
        rows.append(
            f"{irq:4d}: "
            + "".join(f"{base + irq + c:10d} " for c in range(ncpu))
            + f" IR-PCI-MSI {irq}-edge  mlx5_comp{irq}"
        )
    loc = 12_345_678_901 if wide else 5
    rows.append(" LOC: " + "".join(f"{loc + base:10d} " for _ in range(ncpu)) + "  Local timer interrupts")
    rows += [" ERR:          3", " MIS:          0"]
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("wide", [False, True])
def test_big_interrupts_fast_path_matches_the_slow_one(wide: bool) -> None:
    text = kernel_interrupts(64, 40, wide=wide)
    got = parse_interrupts(text, "x")
    loc = 12_345_678_901 if wide else 5
    want = {c: sum(irq + c for irq in range(40)) + loc for c in range(64)}
    assert got == want


def test_interrupts_read_every_period(tmp_path: Path) -> None:
    fake_proc(tmp_path, irq=kernel_interrupts(2, 3))
    s = HostSampler(str(tmp_path), irq_period_s=5.0)
    s.read(0.0)
    (tmp_path / "interrupts").write_text(kernel_interrupts(2, 3, base=10))
    assert s.read(2.0).sample.irq_rate == {}  # within the period: not read again, no rate yet
    r = s.read(5.0)
    assert r.sample.irq_rate == {0: pytest.approx(4 * 10 / 5), 1: pytest.approx(4 * 10 / 5)}
    (tmp_path / "interrupts").write_text(kernel_interrupts(2, 3, base=100))
    assert s.read(7.0).sample.irq_rate == r.sample.irq_rate  # the last period's rates in between


def test_interrupts_with_a_mangled_row_take_the_slow_path() -> None:
    """Found by hypothesis: numpy >= 2 raises (not warns) on unmatched data in the fast path;
    the row is re-read by the slow path, which counts nothing it cannot read as counts."""
    text = "           CPU0       CPU1\n: 24:        100          0  IO-APIC   5-edge      ACPI:Ged\nERR:          0\n"
    assert parse_interrupts(text) == {0: 0, 1: 0}
    good = text.replace(": 24:", " 24:")
    assert parse_interrupts(good) == {0: 100, 1: 0}
