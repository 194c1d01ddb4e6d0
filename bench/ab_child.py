"""One side of bench_ab_actuators: the figures of the tree given as the first argument (imported
from there, not from this checkout). Prints one JSON line."""

# ruff: noqa: E402, I001

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

root, skip_v1, hang_timeout = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
sys.path.insert(0, root)  # the tree under test, ahead of the editable install of this one
from actuators.reconciler import Reconciler, TenantActuation
from actuators.emulation.testing import BLKIO, blkio_sandbox, emu_host
from actuators.blockdev import resolve
from actuators.journal import Journal
from fsm.desired import DesiredState, Throttle
from fsm.mig import Slot

assert Reconciler.__module__ == "actuators.reconciler" and sys.modules["actuators"].__path__[0].startswith(root)


def fake_v2(tmp, n):
    r = tmp / "cgroup"
    r.mkdir(parents=True)
    (r / "cgroup.controllers").write_text("io\n")
    groups = []
    for i in range(n):
        g = r / "t.slice" / f"t{i}.service"
        g.mkdir(parents=True)
        (g / "io.max").write_text("")
        groups.append(f"t.slice/t{i}.service")
    s = tmp / "sys"
    d = s / "devices" / "nvme" / "block" / "nvme0n1"
    d.mkdir(parents=True)
    (d / "dev").write_text("259:0\n")
    (s / "dev" / "block").mkdir(parents=True)
    (s / "dev" / "block" / "259:0").symlink_to(d)
    return r, s, groups


def want(n, dev, wbps, exp):
    return DesiredState(
        t=time.time(), throttles=tuple(Throttle(f"t{i}", dev, None, 100e6, wbps, exp) for i in range(n))
    )


async def throttles(r, n, dev, rounds):
    out = {}
    exp = time.time() + 3600
    await r.reconcile(want(n, dev, 50e6, exp))
    for path in ("set", "renew", "no-op"):
        lat = []
        for k in range(rounds):
            w = (60e6 if k % 2 == 0 else 50e6) if path == "set" else (50e6 if rounds % 2 == 0 else 60e6)
            if path == "renew":
                exp += 1.0
            t0 = time.perf_counter()
            rep = await r.reconcile(want(n, dev, w, exp))
            lat.append(time.perf_counter() - t0)
            assert not rep.errors and len(rep.applied) == (n if path == "set" else 0), rep
        out[path] = statistics.median(lat)
    await r.reconcile(DesiredState(t=time.time()))
    r.journal.close()
    return out


A = (Slot(0, "3g.20gb"), Slot(4, "3g.20gb"))
B = (Slot(0, "4g.20gb"), Slot(4, "2g.10gb"), Slot(6, "1g.5gb"))


async def mig(tmp, rounds):
    h = emu_host(tmp / "emu", ["A100-SXM4-40GB"], {0: A})
    r = Reconciler(
        cgroup_root=str(tmp / "nocg"),
        nvidia_smi=str(h.nvsmi),
        gpus={"gpu0": 0},
        gpu_models={"gpu0": "A100-SXM4-40GB"},
        journal_path=tmp / "mj" / "j.jsonl",
    )
    walls = []
    for k in range(rounds):
        t0 = time.perf_counter()
        await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": B if k % 2 == 0 else A}))
        await r.wait_idle(120)
        walls.append(time.perf_counter() - t0)
        assert all(o.ok for o in r.status().outcomes)
    last = B if (rounds - 1) % 2 == 0 else A
    await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": last}))  # converged: read once
    noop = []
    for _ in range(200):
        t0 = time.perf_counter()
        rep = await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": last}))
        noop.append(time.perf_counter() - t0)
        assert not rep.ops and not rep.started
    r.journal.close()
    return statistics.median(walls), statistics.median(noop)


def recovery(tmp, lines, rounds):
    root, sysr, groups = fake_v2(tmp / "rc", 10)
    jp = tmp / "rs" / "journal.jsonl"
    j = Journal(jp, max_bytes=64 << 20)
    t = time.time()
    import actuators.journal as jm

    real = jm.os.fsync
    jm.os.fsync = lambda fd: None
    for k in range(lines):
        j.append(
            "throttle",
            phase="renew",
            action="set",
            caps=[
                {
                    "cgroup": g,
                    "dev": "259:0",
                    "tenant": f"t{i}",
                    "rbps": 100000000,
                    "wbps": 50000000,
                    "expires_at": t + 3600 + k,
                }
                for i, g in enumerate(groups)
            ],
        )
    jm.os.fsync = real
    j.close()
    snap = tmp / "rs-copy"
    shutil.copytree(jp.parent, snap)
    lat = []
    for _ in range(rounds):
        shutil.rmtree(jp.parent)
        shutil.copytree(snap, jp.parent)
        r = Reconciler(
            cgroup_root=str(root),
            cgroup_version="v2",
            sys_root=str(sysr),
            journal_path=jp,
            tenants={f"t{i}": TenantActuation(f"t{i}", g) for i, g in enumerate(groups)},
        )
        t0 = time.perf_counter()
        s = asyncio.run(r.recover())
        lat.append(time.perf_counter() - t0)
        r.journal.close()
        assert len(s["reasserted"]) == 10 and not s["errors"], s
    return statistics.median(lat)


async def hung_recovery(tmp):
    b = tmp / "hbin"
    b.mkdir()
    (b / "nvidia-smi").write_text("#!/bin/sh\nexec sleep 3600\n")
    (b / "nvidia-smi").chmod(0o755)
    jp = tmp / "hj" / "journal.jsonl"
    j = Journal(jp)
    for i in range(4):
        j.append("mig", phase="intent", gpu=f"gpu{i}", before=[str(s) for s in A], after=[str(s) for s in B])
    j.close()
    r = Reconciler(
        cgroup_root=str(tmp / "nocg"),
        nvidia_smi=str(b / "nvidia-smi"),
        gpus={f"gpu{i}": i for i in range(4)},
        gpu_models={f"gpu{i}": "A100-SXM4-40GB" for i in range(4)},
        journal_path=jp,
        tool_timeout=hang_timeout,
    )
    t0 = time.perf_counter()
    s = await r.recover()
    dt = time.perf_counter() - t0
    r.journal.close()
    assert all("timed out" in v for v in s["mig"].values()), s
    return dt


def main():
    out = {}
    with tempfile.TemporaryDirectory(prefix="tg-ab-") as d:
        tmp = Path(d)
        for n, rounds in ((10, 40), (50, 12)):
            root, sysr, groups = fake_v2(tmp / f"v2-{n}", n)
            r = Reconciler(
                cgroup_root=str(root),
                cgroup_version="v2",
                sys_root=str(sysr),
                tenants={f"t{i}": TenantActuation(f"t{i}", g) for i, g in enumerate(groups)},
                journal_path=tmp / f"v2-{n}" / "j" / "journal.jsonl",
            )
            for path, v in asyncio.run(throttles(r, n, "259:0", rounds)).items():
                out[f"v2 {n} {path}"] = v
        if not skip_v1 and os.geteuid() == 0 and (BLKIO / "blkio.throttle.write_bps_device").exists():
            dev = resolve(str(tmp))
            with blkio_sandbox("tailguard-ab") as (name, gdir):
                groups = []
                for i in range(10):
                    (gdir / f"t{i}").mkdir()
                    groups.append(f"{name}/t{i}")
                r = Reconciler(
                    cgroup_root="/sys/fs/cgroup",
                    cgroup_version="v1",
                    journal_path=tmp / "v1" / "j.jsonl",
                    tenants={f"t{i}": TenantActuation(f"t{i}", g) for i, g in enumerate(groups)},
                )
                for path, v in asyncio.run(throttles(r, 10, dev, 40)).items():
                    out[f"v1 10 {path}"] = v
        wall, noop = asyncio.run(mig(tmp, 6))
        out["mig resize wall"] = wall
        out["mig no-op reconcile"] = noop
        out["recover 10k lines"] = recovery(tmp, 10_000, 5)
        out["recover 4 GPUs, hung nvidia-smi"] = asyncio.run(hung_recovery(tmp))
    print(json.dumps(out))


main()
