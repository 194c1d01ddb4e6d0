"""cgroup I/O and PSI: v1 blkio and PSI on this machine's real files (a copy taken from the
development VM when the CI machine has another layout), v2 on a fake tree in the kernel's format."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from controller.signals.base import ParseError
from controller.signals.cgroup import (
    CgroupReading,
    CgroupSampler,
    detect_version,
    parse_blkio_v1,
    parse_io_stat,
    parse_psi,
)

REAL = Path("/sys/fs/cgroup")
SNAPSHOT = Path(__file__).parent / "fakes" / "sig_cgroup_snapshot"
HAS_REAL = (REAL / "blkio" / "blkio.throttle.io_service_bytes").is_file() and (
    REAL / "unified" / "io.pressure"
).is_file()
HYBRID = REAL if HAS_REAL else SNAPSHOT


def test_real_v1_blkio_files() -> None:
    for name in (
        "blkio.throttle.io_service_bytes",
        "blkio.throttle.io_serviced",
        "blkio.throttle.io_service_bytes_recursive",
    ):
        path = HYBRID / "blkio" / name
        parsed = parse_blkio_v1(path.read_text(), str(path))
        text = path.read_text()
        for dev, (rd, wr) in parsed.items():
            assert f"{dev} Read {rd}" in text and f"{dev} Write {wr}" in text


def test_real_psi_files() -> None:
    for name in ("io.pressure", "cpu.pressure"):
        path = HYBRID / "unified" / name
        v = parse_psi(path.read_text(), str(path))
        first = path.read_text().split()[1]
        assert first.startswith("avg10=") and v == pytest.approx(float(first[6:]) / 100)
        assert 0.0 <= v <= 1.0


def test_real_hybrid_hierarchy_through_the_sampler() -> None:
    s = CgroupSampler({"root": "."}, root=str(HYBRID), version="auto")
    assert s.version == "v1"  # the hybrid layout: blkio v1 plus a cgroup2 mount at unified/
    r1 = s.read(0.0)
    r2 = s.read(1.0)
    assert isinstance(r2, CgroupReading) and not r2.unavailable, r2.unavailable
    t = r2.tenants["root"]
    assert t.io_pressure is not None and t.cpu_pressure is not None
    # the devices the kernel lists (a VM just booted may list none yet: "Total 0" alone; one read
    # later lists at least those)
    listed = HYBRID / "blkio" / "blkio.throttle.io_service_bytes_recursive"
    assert t.io is not None and set(t.io) <= set(parse_blkio_v1(listed.read_text(), str(listed)))
    for rate in t.io.values():
        for v in (rate.read_bps, rate.write_bps, rate.read_iops, rate.write_iops):
            assert v is not None and v >= 0
    assert all(v.read_bps is None for v in (r1.tenants["root"].io or {}).values())  # first read: no rate yet


def _v2_tree(root: Path) -> Path:
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    t = root / "system.slice" / "etl.service"
    t.mkdir(parents=True)
    (t / "io.stat").write_text(
        "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n"
        "259:0 rbytes=0 wbytes=4096 rios=0 wios=1 dbytes=0 dios=0\n"
    )
    (t / "io.pressure").write_text(
        "some avg10=12.50 avg60=3.10 avg300=0.90 total=1234567\nfull avg10=10.00 avg60=2.00 avg300=0.50 total=999\n"
    )
    (t / "cpu.pressure").write_text(
        "some avg10=0.75 avg60=0.20 avg300=0.05 total=4321\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    return t


def test_v2_fake_tree_rates(tmp_path: Path) -> None:
    t = _v2_tree(tmp_path)
    s = CgroupSampler({"etl": "system.slice/etl.service", "gone": "system.slice/none.service"}, str(tmp_path))
    assert s.version == "v2" and detect_version(str(tmp_path)) == "v2"
    s.read(10.0)
    (t / "io.stat").write_text(
        "8:16 rbytes=2507776 wbytes=524488704 rios=448 wios=553 dbytes=0 dios=0\n"
        "259:0 rbytes=0 wbytes=4096 rios=0 wios=1 dbytes=0 dios=0\n"
    )
    r = asyncio.run(s.sample(12.0))
    assert isinstance(r, CgroupReading)
    etl = r.tenants["etl"]
    assert etl.io is not None
    io = etl.io["8:16"]
    assert io.read_bps == pytest.approx((2507776 - 1459200) / 2)
    assert io.write_bps == pytest.approx((524488704 - 314773504) / 2)
    assert io.read_iops == pytest.approx(128) and io.write_iops == pytest.approx(100)
    assert etl.io["259:0"].write_bps == 0.0
    assert etl.io_pressure == pytest.approx(0.125) and etl.cpu_pressure == pytest.approx(0.0075)
    # a cgroup that does not exist is named, its values stay None (not zero)
    gone = r.tenants["gone"]
    assert gone.io is None and gone.io_pressure is None
    assert "none.service/io.stat" in r.unavailable["cgroup:gone:io"]
    # counters that go down (cgroup recreated) give no rate
    (t / "io.stat").write_text("8:16 rbytes=10 wbytes=10 rios=1 wios=1 dbytes=0 dios=0\n")
    r = s.read(14.0)
    assert r.tenants["etl"].io is not None and r.tenants["etl"].io["8:16"].read_bps is None


def test_v1_fake_tree_with_tenant(tmp_path: Path) -> None:
    d = tmp_path / "blkio" / "system.slice" / "etl.service"
    d.mkdir(parents=True)
    u = tmp_path / "unified" / "system.slice" / "etl.service"
    u.mkdir(parents=True)
    for name in ("blkio.throttle.io_service_bytes", "blkio.throttle.io_serviced"):
        shutil.copy(SNAPSHOT / "blkio" / name, d / name)
    for name in ("io.pressure", "cpu.pressure"):
        shutil.copy(SNAPSHOT / "unified" / name, u / name)
    s = CgroupSampler({"etl": "system.slice/etl.service"}, str(tmp_path), "v1")
    s.read(0.0)
    r = s.read(1.0)
    assert not r.unavailable and r.tenants["etl"].io is not None
    assert r.tenants["etl"].io["254:0"].read_bps == 0.0


@pytest.mark.parametrize(
    ("parser", "text", "line"),
    [
        (parse_io_stat, "8:16 rbytes=1 wbytes=2\nbogus rbytes=1\n", 2),
        (parse_io_stat, "8:16 rbytes=x\n", 1),
        (parse_blkio_v1, "8:0 Read 1\n8:0 Explode 2\n", 2),
        (parse_blkio_v1, "8:0 Read\n", 1),
        (parse_psi, "some avg10=abc avg60=0\n", 1),
        (parse_psi, "full avg10=1.00 avg60=0.00\nsome avg60=2\n", 2),
        (parse_psi, "some avg10=1.00\nfull avg10=1\n", 2),  # the "full" line, not used, still checked
        (parse_psi, "some avg10=1.00\nsome avg10=2.00\n", 2),
        (parse_psi, "some avg10=1.00\nfull avg10=1.00\nfull avg10=2.00\n", 3),
        (parse_psi, "some avg10=1.00\nmost avg10=1.00\n", 2),
        (parse_psi, "full avg10=1.00\n", None),
        (parse_psi, "some avg10=400.0\n", 1),
    ],
)
def test_bad_files_name_the_line(parser, text: str, line: int) -> None:
    with pytest.raises(ParseError) as e:
        parser(text, "f")
    assert e.value.line == line and (f"f: line {line}:" if line else "f: ") in str(e.value)


_IO = "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0"


@pytest.mark.parametrize(
    "extra",
    [
        # blk-cgroup with blkcg_debug_stats on: iocost sets use_delay to -1 while the cgroup is in debt
        " use_delay=-1 delay_nsec=250000 cost.usage=12 cost.wait=0 cost.indebt=3000 cost.indelay=0",
        " use_delay=2 delay_nsec=1000",
        " depth=max avg_lat=0 win=0",  # blk-iolatency on a rotating disk, no depth limit
        " depth=32 avg_lat=1200 win=100",
        " missed=0 total=0 depth=max",  # blk-iolatency on an SSD
    ],
    ids=["iocost-in-debt", "use-delay", "iolatency-hdd-max", "iolatency-hdd-depth", "iolatency-ssd-max"],
)
def test_io_stat_debug_keys_that_print_no_u64_are_read(extra: str) -> None:
    """Found by the adversarial hunt: with the blk_cgroup module's blkcg_debug_stats on, the kernel
    prints use_delay=%d (negative under iocost) and depth=max; both were refused, and the tenant's
    I/O rates were unavailable on every tick."""
    assert parse_io_stat(_IO + extra + "\n", "io.stat")["8:16"] == (1459200, 314773504, 192, 353)


@pytest.mark.parametrize("bad", ["use_delay=x", "use_delay=--1", "depth=-1", "depth=maximum", "cost.usage=-1"])
def test_io_stat_debug_keys_still_refuse_garbage(bad: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_io_stat(f"{_IO} {bad}\n", "io.stat")
    assert e.value.line == 1
