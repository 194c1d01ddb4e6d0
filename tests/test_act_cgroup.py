"""cgroup I/O caps: v2 io.max on a fake cgroupfs tree with the kernel's formats, faults (group gone,
EPERM, journal disk full), and for real on this machine's v1 blkio hierarchy with dd oflag=direct."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actuators import cgroup as cgmod
from actuators.blockdev import resolve
from actuators.emulation.testing import blkio_sandbox
from actuators.reconciler import Reconciler, TenantActuation
from fsm.desired import DesiredState, Throttle

MiB = 1 << 20


def fake_v2(tmp: Path) -> tuple[Path, Path]:
    """A cgroup v2 tree and a sysfs with one NVMe disk 259:0 (nvme0n1)."""
    root = tmp / "cgroup"
    g = root / "system.slice" / "etl.service"
    g.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (g / "io.max").write_text("")
    sysr = tmp / "sys"
    disk = sysr / "devices" / "nvme" / "block" / "nvme0n1"
    disk.mkdir(parents=True)
    (disk / "dev").write_text("259:0\n")
    (sysr / "class" / "block").mkdir(parents=True)
    (sysr / "dev" / "block").mkdir(parents=True)
    (sysr / "class" / "block" / "nvme0n1").symlink_to(disk)
    (sysr / "dev" / "block" / "259:0").symlink_to(disk)
    return root, sysr


def v2_rec(tmp: Path, **kw: object) -> Reconciler:
    root, sysr = fake_v2(tmp)
    args: dict[str, object] = {
        "cgroup_root": str(root), "cgroup_version": "auto", "sys_root": str(sysr),
        "tenants": {"etl": TenantActuation("etl", "system.slice/etl.service")},
        "journal_path": tmp / "j" / "journal.jsonl",
    }  # fmt: skip
    args.update(kw)
    return Reconciler(**args)  # type: ignore[arg-type]


def thr(expires: float, wbps: float | None = 50e6, rbps: float | None = None, dev: str = "nvme0n1") -> Throttle:
    return Throttle("etl", dev, None, rbps, wbps, expires, "llm")


def test_v2_io_max_set_readback_lift_and_expiry(tmp_path: Path) -> None:
    r = v2_rec(tmp_path)
    io_max = tmp_path / "cgroup" / "system.slice" / "etl.service" / "io.max"
    assert r.cg.version == "v2"

    async def go() -> None:
        now = time.time()
        rep = await r.reconcile(DesiredState(t=now, throttles=(thr(now + 60),)))
        assert rep.applied and io_max.read_text() == "259:0 rbps=max wbps=50000000\n"
        actual = await r.read_actual()
        assert actual.throttles[("system.slice/etl.service", "259:0")] == cgmod.Caps(None, 50_000_000)
        rep = await r.reconcile(DesiredState(t=now, throttles=(thr(now + 60),)))
        assert rep.ops == []  # idempotent
        # Past its expiry the cap is lifted even though the desired state still lists it.
        r.clock = lambda: now + 61
        rep = await r.reconcile(DesiredState(t=now + 61, throttles=(thr(now + 60),)))
        assert io_max.read_text() == "259:0 rbps=max wbps=max\n" and not r.owned
        assert [(o.target, o.ok) for o in r.status().outcomes] == [("throttle:etl", True), ("throttle:etl", True)]

    asyncio.run(go())


def test_v2_dry_run_and_bad_values(tmp_path: Path) -> None:
    r = v2_rec(tmp_path, dry_run=True)
    io_max = tmp_path / "cgroup" / "system.slice" / "etl.service" / "io.max"

    async def go() -> None:
        now = time.time()
        rep = await r.reconcile(DesiredState(t=now, throttles=(thr(now + 60),)))
        assert rep.dry_run and rep.ops and io_max.read_text() == ""
        r.dry_run = False
        for bad in (float("nan"), -5.0, 0.0, float("inf")):
            rep = await r.reconcile(DesiredState(t=now, throttles=(thr(now + 60, wbps=bad),)))
            assert rep.errors and io_max.read_text() == ""
        rep = await r.reconcile(DesiredState(t=now, throttles=(Throttle("etl", "nvme0n1", "../../etc", None, 1e6,
                                                                        now + 60),)))  # fmt: skip
        assert any("'..'" in e for e in rep.errors)

    asyncio.run(go())


def test_an_invalid_desired_cap_lifts_the_cap_in_force(tmp_path: Path) -> None:
    """Chosen behaviour (actuators/throttles.py, Throttles.wanted): a desired cap that is invalid
    (NaN, a negative rate, no finite expiry) is an error and not wanted, so the cap tailguard set
    on that group and device is lifted, journaled, rather than kept: failing open is the safe
    direction, and nothing valid asks for the old cap any more. A valid cap beside it still holds."""
    r = v2_rec(tmp_path)
    io_max = tmp_path / "cgroup" / "system.slice" / "etl.service" / "io.max"

    async def go() -> None:
        now = time.time()
        await r.reconcile(DesiredState(t=now, throttles=(thr(now + 60),)))
        assert io_max.read_text() == "259:0 rbps=max wbps=50000000\n"
        for bad in (thr(now + 60, wbps=float("nan")), thr(now + 60, rbps=-5.0), thr(float("inf"))):
            rep = await r.reconcile(DesiredState(t=now, throttles=(bad,)))
            assert rep.errors and rep.errors[0].startswith("throttle etl: ")
            assert io_max.read_text() == "259:0 rbps=max wbps=max\n" and not r.owned
            assert rep.applied == ["lifted system.slice/etl.service 259:0"]
            assert rep.ops and rep.ops[-1].endswith("(its desired cap is invalid)"), rep.ops
            await r.reconcile(DesiredState(t=now, throttles=(thr(now + 60),)))  # set again for the next
        rep = await r.reconcile(DesiredState(t=now, throttles=(thr(now + 60), thr(now + 60, wbps=float("nan")))))
        assert len(rep.errors) == 1 and io_max.read_text() == "259:0 rbps=max wbps=50000000\n" and r.owned

    asyncio.run(go())
    lifts = [json.loads(ln) for ln in (tmp_path / "j" / "journal.jsonl").read_text().splitlines()]
    assert sum(1 for j in lifts if j.get("action") == "lift" and j.get("phase") == "done") == 3


def test_group_disappears_mid_operation(tmp_path: Path) -> None:
    r = v2_rec(tmp_path)
    g = tmp_path / "cgroup" / "system.slice" / "etl.service"

    async def go() -> None:
        now = time.time()
        await r.reconcile(DesiredState(t=now, throttles=(thr(now + 60),)))
        r.status()
        (g / "io.max").unlink()
        g.rmdir()  # the tenant's service stopped
        rep = await r.reconcile(DesiredState(t=now, throttles=(thr(now + 60),)))
        assert any("does not exist" in e for e in rep.errors)
        rep = await r.reconcile(DesiredState(t=now))
        assert not r.owned and not rep.errors  # nothing to lift in a group that is gone

    asyncio.run(go())


def test_eperm_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = v2_rec(tmp_path)
    real_open = os.open

    def deny(path: object, flags: int, *a: object) -> int:
        if str(path).endswith("io.max") and flags & os.O_WRONLY:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real_open(path, flags, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(cgmod.os, "open", deny)

    async def go() -> None:
        now = time.time()
        rep = await r.reconcile(DesiredState(t=now, throttles=(thr(now + 60),)))
        assert any("Operation not permitted" in e and "needs root" in e for e in rep.errors)
        (o,) = r.status().outcomes
        assert not o.ok

    asyncio.run(go())


def test_journal_disk_full_applies_no_new_throttle(tmp_path: Path) -> None:
    r = v2_rec(tmp_path)
    io_max = tmp_path / "cgroup" / "system.slice" / "etl.service" / "io.max"
    good = r.journal.path

    def full(on: bool) -> None:  # /dev/full answers every write with ENOSPC, like a full disk
        r.journal.close()
        r.journal.path = Path("/dev/full") if on else good

    async def go() -> None:
        now = time.time()
        full(True)
        rep = await r.reconcile(DesiredState(t=now, throttles=(thr(now + 60),)))
        assert io_max.read_text() == "" and any("No space left" in e for e in rep.errors)
        full(False)
        await r.reconcile(DesiredState(t=now, throttles=(thr(now + 60),)))
        assert io_max.read_text() == "259:0 rbps=max wbps=50000000\n"
        full(True)  # lifting still works without a journal
        await r.reconcile(DesiredState(t=now))
        assert io_max.read_text() == "259:0 rbps=max wbps=max\n"

    asyncio.run(go())


def test_journal_rotation_keeps_state(tmp_path: Path) -> None:
    r = v2_rec(tmp_path, journal_max_bytes=600)

    async def go() -> None:
        now = time.time()
        for i in range(30):  # renewals rotate the journal many times
            await r.reconcile(DesiredState(t=now, throttles=(thr(now + 60 + i),)))
        assert len(r.journal.files()) <= 4
        r2 = v2_rec(tmp_path / "again")
        r2.journal = r.journal
        r2._cg = r.cg
        await r2.recover()
        (only,) = r2.owned.values()
        assert only.expires_at == now + 89

    asyncio.run(go())


# ---------------------------------------------------------------- the real kernel (v1 blkio)


@contextlib.contextmanager
def dd_target(tmp: Path) -> Iterator[tuple[str, str]]:
    """(device to throttle, path for dd to write to) on a real block device."""
    st = os.stat(tmp)
    if os.major(st.st_dev) != 0:
        yield str(tmp), str(tmp / "dd.bin")  # a file on the disk that holds tmp (ext4 on /dev/vda here)
        return
    # tmp is on overlay/tmpfs: use a loop device backed by a file (its bios are throttled too).
    backing = tmp / "loop.img"
    with open(backing, "wb") as f:
        f.truncate(256 * MiB)
    loop = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, timeout=20,
                          check=True).stdout.strip()  # fmt: skip
    try:
        yield loop, loop
    finally:
        subprocess.run(["losetup", "-d", loop], timeout=20, check=False)


def dd_in_group(group: Path, target: str, mib: int) -> float:
    """Bytes/s of a direct-I/O dd run inside `group`."""
    procs = group / "cgroup.procs"

    def enter() -> None:
        procs.write_text(str(os.getpid()))

    t0 = time.monotonic()
    out = subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mib}", "oflag=direct", "conv=notrunc"],
        capture_output=True, text=True, timeout=60, preexec_fn=enter, check=True,
    )  # fmt: skip
    dt = time.monotonic() - t0
    m = re.search(r"(\d+) bytes", out.stderr)
    assert m and int(m[1]) == mib * MiB, out.stderr
    return mib * MiB / dt


@pytest.mark.root
def test_real_v1_blkio_write_cap_with_dd(tmp_path: Path) -> None:
    cap = 8 * MiB
    with blkio_sandbox() as (name, gdir), dd_target(tmp_path) as (device, target):
        (gdir / "bulk").mkdir()
        r = Reconciler(cgroup_root="/sys/fs/cgroup", cgroup_version="v1",
                       tenants={"bulk": TenantActuation("bulk", f"{name}/bulk")},
                       journal_path=tmp_path / "journal.jsonl")  # fmt: skip
        assert r.cg.version == "v1"
        majmin = resolve(device)

        async def go() -> None:
            now = time.time()
            th = Throttle("bulk", device, None, None, float(cap), now + 120)
            rep = await r.reconcile(DesiredState(t=now, throttles=(th,)))
            assert rep.applied, rep
            assert (gdir / "bulk" / "blkio.throttle.write_bps_device").read_text() == f"{majmin} {cap}\n"
            capped = dd_in_group(gdir / "bulk", target, 16)
            assert 0.6 * cap < capped < 1.3 * cap, f"capped dd ran at {capped / MiB:.1f} MiB/s, cap 8"
            await r.reconcile(DesiredState(t=time.time()))  # lifted
            assert (gdir / "bulk" / "blkio.throttle.write_bps_device").read_text() == ""
            free = dd_in_group(gdir / "bulk", target, 64)
            assert free > 4 * cap, f"uncapped dd ran at only {free / MiB:.1f} MiB/s"
            print(f"\nv1 blkio on {device} ({majmin}): capped {capped / MiB:.2f} MiB/s (cap 8), "
                  f"lifted {free / MiB:.0f} MiB/s")  # fmt: skip

        asyncio.run(go())
    assert not (Path("/sys/fs/cgroup/blkio") / name).exists()


def test_renewals_share_one_journal_record_and_survive_recovery(tmp_path: Path) -> None:
    """While a guard holds, every tick renews its caps' expiry: one fsync'd record for all of them
    (not one per cap), no control-file write; a no-op writes nothing; recovery keeps the renewals."""
    root, sysr = fake_v2(tmp_path)
    groups = [f"tenants.slice/t{i}.service" for i in range(3)]
    for g in groups:
        (root / g).mkdir(parents=True)
        (root / g / "io.max").write_text("")
    tenants = {f"t{i}": TenantActuation(f"t{i}", g) for i, g in enumerate(groups)}
    jpath = tmp_path / "j" / "journal.jsonl"

    def make() -> Reconciler:
        return Reconciler(cgroup_root=str(root), sys_root=str(sysr), tenants=tenants, journal_path=jpath)

    def want(exp: float) -> DesiredState:
        return DesiredState(t=time.time(), throttles=tuple(Throttle(f"t{i}", "nvme0n1", None, None, 50e6, exp)
                                                           for i in range(3)))  # fmt: skip

    def lines() -> list[str]:
        return jpath.read_text().splitlines()

    r = make()

    async def go() -> None:
        now = time.time()
        rep = await r.reconcile(want(now + 60))
        assert len(rep.applied) == 3 and len(lines()) == 6  # intent + done per cap
        mtimes = [os.stat(root / g / "io.max").st_mtime_ns for g in groups]
        for k in range(1, 4):
            rep = await r.reconcile(want(now + 60 + k))
            assert rep.ops == [] and not rep.errors
        assert len(lines()) == 6 + 3  # one record per renewing reconcile
        last = json.loads(lines()[-1])
        assert (last["kind"], last["phase"], len(last["caps"])) == ("throttle", "renew", 3)
        assert [os.stat(root / g / "io.max").st_mtime_ns for g in groups] == mtimes  # nothing rewritten
        await r.reconcile(want(now + 63))  # no-op: desired == actual
        assert len(lines()) == 9
        r.journal.close()
        r2 = make()
        await r2.recover()
        assert sorted(o.expires_at for o in r2.owned.values()) == [now + 63] * 3

    asyncio.run(go())


def test_recovery_parses_only_the_newest_file_with_a_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from actuators import journal as jmod

    state = {"n": 0}
    j = jmod.Journal(tmp_path / "journal.jsonl", max_bytes=2000, snapshot=lambda: {"n": state["n"]})
    for i in range(200):
        state["n"] = i
        j.append("throttle", phase="done", i=i)
    j.close()
    assert len(j.files()) == 4
    recs = list(j.records())
    last = max(k for k, rec in enumerate(recs) if rec["kind"] == "snapshot")
    read: list[Path] = []
    real = jmod.read_file
    monkeypatch.setattr(jmod, "read_file", lambda f: (read.append(f), real(f))[1])
    assert j.tail_from_snapshot() == recs[last:]
    assert read == [j.path]  # the rotated files are not parsed at all
    # Without any snapshot every file is still read, oldest first.
    j2 = jmod.Journal(tmp_path / "plain" / "journal.jsonl", max_bytes=500)
    for i in range(40):
        j2.append("x", i=i)
    j2.close()
    assert [r["i"] for r in j2.tail_from_snapshot()] == [r["i"] for r in j2.records()]
