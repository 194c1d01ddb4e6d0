"""The actuators: throttle reconcile latency, the journal's cost, MIG plan + apply, recovery time.

1. Throttles: `Reconciler.reconcile(desired)` until it returns (each cap written and read back
   inside it) for 1, 10 and 50 tenants' caps, (a) on the real cgroup v1 blkio hierarchy (child
   groups under a unique `tailguard-bench-*` parent, removed again whatever happens), (b) on a fake
   cgroup v2 tree in a temp dir. Three paths: `set` (every cap changes: journal intent, write, read
   back, journal done), `renew` (caps in place, expiry moved on: what every tick does while a guard
   holds, since decide() renews expiries to now + throttle_expiry_s), `no-op` (desired == actual,
   expiry unchanged). Plus the journal alone: one fsync'd append.
2. MIG: a resize on an emulated A100-SXM4-40GB and H100-80GB-HBM3 through the emulated nvidia-smi
   on PATH (the real code path): plan time, nvidia-smi calls, wall time of the apply, and the time
   spent inside the tool vs tailguard's own. The emulator is a Python process per call; a real
   GPU's MIG change takes seconds per reconfiguration (NVIDIA's MIG user guide; the paper: ~18 s).
3. Recovery: `recover()` of a fresh reconciler on journals of 1k and 10k lines written by the real
   reconciler (renewals of 10 tenants' caps, a changed cap now and then), at the default rotation
   (4 MiB x 3 kept), at a small rotation (256 KiB: several rotations), and the default's worst
   case (every kept file full).

Run: .venv/bin/python -m bench.bench_actuators [--rounds-scale F] [--skip-v1] [--skip-worst]
Needs root and /sys/fs/cgroup/blkio for 1(a); without them that part is skipped and said so.
Figures are wall time (time.perf_counter), median and p99 (nearest rank) over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actuators import journal as journal_mod  # noqa: E402
from actuators import nvsmi as nvsmi_mod  # noqa: E402
from actuators.blockdev import resolve  # noqa: E402
from actuators.cgroup import Caps  # noqa: E402
from actuators.emulation.testing import BLKIO, blkio_sandbox, emu_host  # noqa: E402
from actuators.journal import Journal  # noqa: E402
from actuators.migplan import plan  # noqa: E402
from actuators.proc import Result  # noqa: E402
from actuators.reconciler import OwnedCap, Reconciler, TenantActuation  # noqa: E402
from fsm.desired import DesiredState, Throttle  # noqa: E402
from fsm.mig import Slot, model_by_name  # noqa: E402

SIZES = (1, 10, 50)
ROUNDS = {1: 200, 10: 60, 50: 20}  # per size and path; scaled by --rounds-scale
MIG_RESIZES = {
    "A100-SXM4-40GB": ((Slot(0, "3g.20gb"), Slot(4, "3g.20gb")),
                       (Slot(0, "4g.20gb"), Slot(4, "2g.10gb"), Slot(6, "1g.5gb"))),
    "H100-80GB-HBM3": ((Slot(0, "7g.80gb"),),
                       (Slot(0, "2g.20gb"), Slot(2, "2g.20gb"), Slot(4, "3g.40gb"))),
}  # fmt: skip


def q(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def ms(x: float) -> str:
    return f"{x * 1e3:.2f}" if x < 10 else f"{x * 1e3:.0f}"


class Counters:
    """Counts journal appends (one fsync each) and cgroup control-file writes of one reconciler."""

    def __init__(self, r: Reconciler) -> None:
        self.appends = 0
        self.writes = 0
        self.journal_s = 0.0
        real_append, real_write = r.journal.append, r.cg._write_file

        def append(kind: str, **fields: Any) -> dict[str, Any]:
            t0 = time.perf_counter()
            try:
                return real_append(kind, **fields)
            finally:
                self.appends += 1
                self.journal_s += time.perf_counter() - t0

        def write(path: Path, line: str, rel: str) -> None:
            self.writes += 1
            real_write(path, line, rel)

        r.journal.append = append  # type: ignore[method-assign]
        r.cg._write_file = write  # type: ignore[method-assign]

    def take(self) -> tuple[int, int, float]:
        out = (self.appends, self.writes, self.journal_s)
        self.appends, self.writes, self.journal_s = 0, 0, 0.0
        return out


# ---------------------------------------------------------------- 1. throttles


def fake_v2(tmp: Path, n: int) -> tuple[Path, Path, list[str]]:
    """A cgroup v2 tree with n tenant groups (empty io.max) and a sysfs with disk 259:0."""
    root = tmp / "cgroup"
    root.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    groups = []
    for i in range(n):
        g = root / "tenants.slice" / f"t{i}.service"
        g.mkdir(parents=True)
        (g / "io.max").write_text("")
        groups.append(f"tenants.slice/t{i}.service")
    sysr = tmp / "sys"
    disk = sysr / "devices" / "nvme" / "block" / "nvme0n1"
    disk.mkdir(parents=True)
    (disk / "dev").write_text("259:0\n")
    (sysr / "dev" / "block").mkdir(parents=True)
    (sysr / "dev" / "block" / "259:0").symlink_to(disk)
    return root, sysr, groups


def desired(groups: list[str], dev: str, wbps: float, expires: float) -> DesiredState:
    ths = tuple(Throttle(f"t{i}", dev, None, 100e6, wbps, expires, "llm") for i in range(len(groups)))
    return DesiredState(t=time.time(), throttles=ths)


async def throttle_rounds(r: Reconciler, groups: list[str], dev: str, rounds: int) -> dict[str, dict[str, Any]]:
    """set / renew / no-op rounds; every reconcile must succeed and be read back."""
    c = Counters(r)
    n = len(groups)
    out: dict[str, dict[str, Any]] = {}
    exp = time.time() + 3600
    await r.reconcile(desired(groups, dev, 50e6, exp))  # warm-up: first cap, journal file created
    c.take()
    for path in ("set", "renew", "no-op"):
        lat: list[float] = []
        per: list[tuple[int, int, float]] = []
        for k in range(rounds):
            if path == "set":
                wbps = 60e6 if k % 2 == 0 else 50e6  # every cap changes
            else:
                wbps = 50e6 if rounds % 2 == 0 else 60e6  # stays what the last set round left
            if path == "renew":
                exp += 1.0
            d = desired(groups, dev, wbps, exp)
            t0 = time.perf_counter()
            rep = await r.reconcile(d)
            lat.append(time.perf_counter() - t0)
            per.append(c.take())
            assert not rep.errors, rep.errors
            want = n if path == "set" else 0
            assert len(rep.applied) == want, (path, rep.applied)
        # read-back through the reconciler's own reader, outside the timing
        act = await r.read_actual()
        assert len(act.throttles) == n and all(v.wbps == round(wbps) for v in act.throttles.values())
        out[path] = {
            "rounds": rounds, "median": statistics.median(lat), "p99": q(lat, 99),
            "appends": statistics.mean(p[0] for p in per), "writes": statistics.mean(p[1] for p in per),
            "journal_share": sum(p[2] for p in per) / sum(lat),
        }  # fmt: skip
    rep = await r.reconcile(DesiredState(t=time.time()))  # lift everything
    assert len(rep.applied) == n and not rep.errors
    r.journal.close()
    return out


async def bench_v2(tmp: Path, n: int, rounds: int) -> dict[str, dict[str, Any]]:
    root, sysr, groups = fake_v2(tmp / f"v2-{n}", n)
    r = Reconciler(cgroup_root=str(root), cgroup_version="v2", sys_root=str(sysr),
                   tenants={f"t{i}": TenantActuation(f"t{i}", g) for i, g in enumerate(groups)},
                   journal_path=tmp / f"v2-{n}" / "state" / "journal.jsonl")  # fmt: skip
    return await throttle_rounds(r, groups, "259:0", rounds)


async def bench_v1(tmp: Path, n: int, rounds: int) -> dict[str, dict[str, Any]]:
    dev = resolve(str(tmp))  # the whole disk that holds the journal (ext4 on /dev/vda here)
    with blkio_sandbox("tailguard-bench") as (name, gdir):
        groups = []
        for i in range(n):
            (gdir / f"t{i}").mkdir()
            groups.append(f"{name}/t{i}")
        r = Reconciler(cgroup_root="/sys/fs/cgroup", cgroup_version="v1",
                       tenants={f"t{i}": TenantActuation(f"t{i}", g) for i, g in enumerate(groups)},
                       journal_path=tmp / f"v1-{n}" / "journal.jsonl")  # fmt: skip
        assert r.cg.version == "v1"
        try:
            res = await throttle_rounds(r, groups, dev, rounds)
        finally:
            r.journal.close()
    assert not (BLKIO / name).exists(), f"{BLKIO / name} left behind"
    return res


def bench_journal(tmp: Path, n: int = 500) -> dict[str, float]:
    """One fsync'd append of a throttle record, and the write / fsync parts of it."""
    j = Journal(tmp / "jbench" / "journal.jsonl")
    rec = {"cgroup": "tenants.slice/t1.service", "dev": "254:0", "tenant": "t1", "rbps": 100_000_000,
           "wbps": 50_000_000, "expires_at": time.time() + 120}  # fmt: skip
    j.append("throttle", phase="intent", action="set", **rec)
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        j.append("throttle", phase="done", action="set", **rec)
        lat.append(time.perf_counter() - t0)
    fd = j._open()
    wr, fs = [], []
    line = b'{"kind":"x"}\n'
    for _ in range(n):
        t0 = time.perf_counter()
        os.write(fd, line)
        t1 = time.perf_counter()
        os.fsync(fd)
        t2 = time.perf_counter()
        wr.append(t1 - t0)
        fs.append(t2 - t1)
    j.close()
    return {"n": n, "median": statistics.median(lat), "p99": q(lat, 99), "fsync_median": statistics.median(fs),
            "fsync_p99": q(fs, 99), "write_median": statistics.median(wr)}  # fmt: skip


# ---------------------------------------------------------------- 2. MIG


@contextmanager
def count_tool_calls() -> Iterator[list[tuple[tuple[str, ...], float]]]:
    """Record every nvidia-smi call (argv, seconds) made through actuators.nvsmi."""
    calls: list[tuple[tuple[str, ...], float]] = []
    real = nvsmi_mod.run

    async def run(argv: Any, timeout: float, **kw: Any) -> Result:
        t0 = time.perf_counter()
        try:
            return await real(argv, timeout, **kw)
        finally:
            calls.append((tuple(argv), time.perf_counter() - t0))

    with mock.patch.object(nvsmi_mod, "run", run):
        yield calls


async def bench_mig(tmp: Path, rounds: int) -> dict[str, dict[str, Any]]:
    models = list(MIG_RESIZES)
    h = emu_host(tmp / "emu", models, {i: MIG_RESIZES[m][0] for i, m in enumerate(models)})
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{h.nvsmi.parent}{os.pathsep}{old_path}"  # the emulator first on PATH
    try:
        assert shutil.which("nvidia-smi") == str(h.nvsmi)
        r = Reconciler(cgroup_root=str(tmp / "nocg"), gpus={f"gpu{i}": i for i in range(len(models))},
                       journal_path=tmp / "mig-state" / "journal.jsonl")  # fmt: skip
        # nvidia_smi is the default "nvidia-smi", found on PATH
        await r.read_actual()  # models from `nvidia-smi -L` once, as the daemon's first tick does
        out: dict[str, dict[str, Any]] = {}
        for i, m in enumerate(models):
            gpu, (a, b) = f"gpu{i}", MIG_RESIZES[m]
            model = model_by_name(m)
            reps = 2000
            t0 = time.perf_counter()
            for _ in range(reps):
                p = plan(gpu, model, a, b)
            plan_s = (time.perf_counter() - t0) / reps
            walls, inline, ncalls, tool, per_call = [], [], [], [], []
            for k in range(rounds):
                want = b if k % 2 == 0 else a
                with count_tool_calls() as calls:
                    t0 = time.perf_counter()
                    rep = await r.reconcile(DesiredState(t=time.time(), layouts={gpu: want}))
                    t1 = time.perf_counter()
                    await r.wait_idle(120)
                    t2 = time.perf_counter()
                st = r.status()
                assert rep.started == [f"gpu:{gpu}"] and [(o.target, o.ok) for o in st.outcomes] == [
                    (f"gpu:{gpu}", True)], (rep, st)  # fmt: skip
                assert await r.read_layout(gpu) == want
                walls.append(t2 - t0)
                inline.append(t1 - t0)
                ncalls.append(len(calls))
                tool.append(sum(d for _, d in calls))
                per_call += [d for _, d in calls]
            noop, noop_calls = [], []
            for _ in range(rounds):  # desired == actual: what every later tick costs for a managed GPU
                with count_tool_calls() as calls:
                    t0 = time.perf_counter()
                    rep = await r.reconcile(DesiredState(t=time.time(), layouts={gpu: want}))
                    noop.append(time.perf_counter() - t0)
                assert not rep.ops and not rep.started and not rep.errors, rep
                noop_calls.append(len(calls))
            steps = len(p.destroy) + len(p.create)
            out[m] = {
                "resize": f"{', '.join(map(str, a))} -> {', '.join(map(str, b))}", "steps": steps,
                "plan_us": plan_s * 1e6, "rounds": rounds, "calls": statistics.median(ncalls),
                "inline_median": statistics.median(inline), "wall_median": statistics.median(walls),
                "wall_p99": q(walls, 99), "tool_median": statistics.median(tool),
                "own_median": statistics.median(w - t for w, t in zip(walls, tool, strict=True)),
                "per_call_median": statistics.median(per_call), "noop_median": statistics.median(noop),
                "noop_calls": statistics.median(noop_calls),
            }  # fmt: skip
        r.journal.close()
        return out
    finally:
        os.environ["PATH"] = old_path


# ---------------------------------------------------------------- 3. recovery


N_JOURNAL_TENANTS = 10


def write_journal(tmp: Path, lines: int, max_bytes: int, fill: bool = False
                  ) -> tuple[Path, Path, Path, list[str], dict[str, Any]]:  # fmt: skip
    """A journal of `lines` records in the reconciler's shapes, through its Journal (rotation and
    the reconciler's own snapshot included): every tick one `renew` record for the 10 tenants'
    caps, every 25th tick a change instead (intent + done per cap), as `Throttles.reconcile` (actuators/throttles.py)
    writes them. Written directly (no cgroup I/O, no fsync) so that building it stays fast; the
    recovery below checks it reads back all 10 caps. `fill`: go on until every kept file is full
    (the default rotation's worst restart)."""
    root, sysr, groups = fake_v2(tmp / "cg", N_JOURNAL_TENANTS)
    jpath = tmp / "state" / "journal.jsonl"
    r = Reconciler(cgroup_root=str(root), cgroup_version="v2", sys_root=str(sysr),
                   tenants={f"t{i}": TenantActuation(f"t{i}", g) for i, g in enumerate(groups)},
                   journal_path=jpath, journal_max_bytes=max_bytes)  # fmt: skip
    rotations = 0
    real_rotate = r.journal.rotate

    def rotate() -> None:
        nonlocal rotations
        rotations += 1
        real_rotate()

    r.journal.rotate = rotate  # type: ignore[method-assign]
    t = time.time()
    tick = 0
    j = r.journal
    with mock.patch.object(journal_mod.os, "fsync", lambda fd: None):
        while (j._seq < lines) if not fill else (rotations < j.keep or os.path.getsize(j.path) < 0.98 * max_bytes):
            tick += 1
            caps = Caps(100_000_000, 50_000_000 if (tick // 25) % 2 == 0 else 40_000_000)
            owned = {(g, "259:0"): OwnedCap(f"t{i}", caps, t + tick + 3600) for i, g in enumerate(groups)}
            fields = [{"cgroup": g, "dev": d, "tenant": o.tenant, "rbps": o.caps.rbps, "wbps": o.caps.wbps,
                       "expires_at": o.expires_at} for (g, d), o in owned.items()]  # fmt: skip
            if tick % 25 == 0:
                for f in fields:
                    j.append("throttle", phase="intent", action="set", **f)
                    r.owned[(f["cgroup"], f["dev"])] = owned[(f["cgroup"], f["dev"])]
                    j.append("throttle", phase="done", action="set", **f)
            else:
                j.append("throttle", phase="renew", action="set", caps=fields)
                r.owned.update(owned)
    j.close()
    files = j.files()
    t0 = time.perf_counter()
    n_all = len(list(j.records()))
    all_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tail = len(j.tail_from_snapshot())
    tail_s = time.perf_counter() - t0
    info = {"lines": n_all, "files": len(files), "bytes": sum(f.stat().st_size for f in files),
            "rotations": rotations, "tail": tail, "parse_all_s": all_s, "parse_tail_s": tail_s}  # fmt: skip
    return root, sysr, jpath, groups, info


def bench_recovery(tmp: Path, lines: int, max_bytes: int, rounds: int, fill: bool = False) -> dict[str, Any]:
    root, sysr, jpath, groups, info = write_journal(tmp, lines, max_bytes, fill)
    snap = tmp / "state-copy"
    shutil.copytree(jpath.parent, snap)
    lat = []
    for _ in range(rounds):
        shutil.rmtree(jpath.parent)
        shutil.copytree(snap, jpath.parent)  # the journal as the crash left it, every round
        r = Reconciler(cgroup_root=str(root), cgroup_version="v2", sys_root=str(sysr),
                       tenants={f"t{i}": TenantActuation(f"t{i}", g) for i, g in enumerate(groups)},
                       journal_path=jpath, journal_max_bytes=max_bytes)  # fmt: skip
        t0 = time.perf_counter()
        summary = asyncio.run(r.recover())
        lat.append(time.perf_counter() - t0)
        r.journal.close()
        assert not summary["errors"] and len(summary["reasserted"]) == N_JOURNAL_TENANTS, summary
    return {**info, "max_bytes": max_bytes, "rounds": rounds, "median": statistics.median(lat), "p99": q(lat, 99)}


# ---------------------------------------------------------------- main


def run_async(f: Callable[..., Awaitable[Any]], *a: Any) -> Any:
    return asyncio.run(f(*a))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds-scale", type=float, default=1.0, help="scale every round count")
    ap.add_argument("--skip-v1", action="store_true", help="skip the real cgroup v1 blkio part")
    ap.add_argument("--skip-worst", action="store_true", help="skip recovery of a full default rotation set")
    args = ap.parse_args()
    sc = args.rounds_scale
    t_start = time.perf_counter()
    print(f"{date.today()} {platform.machine()} CPython {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}, kernel {platform.release()}")  # fmt: skip
    # The journal and the dd-free v1 caps live on the disk that holds the temp dir (/ here).
    with tempfile.TemporaryDirectory(prefix="tailguard-bench-") as d:
        tmp = Path(d)
        st = os.statvfs(tmp)
        print(f"temp dir {tmp} (journal's disk: {resolve(str(tmp))}, block size {st.f_bsize})")

        print("\n## 1. throttle reconcile: reconcile() until it returns, every cap read back")
        print("| hierarchy | tenants | path | rounds | median ms | p99 ms | journal appends (fsyncs) | "
              "control-file writes | journal share of the time |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        v1_ok = not args.skip_v1 and os.geteuid() == 0 and (BLKIO / "blkio.throttle.write_bps_device").exists()
        for hier in ("v1", "v2"):
            if hier == "v1" and not v1_ok:
                print("| v1 blkio (real) | - | skipped: needs root and /sys/fs/cgroup/blkio (or --skip-v1) |")
                continue
            for n in SIZES:
                rounds = max(5, round(ROUNDS[n] * sc))
                res = run_async(bench_v1 if hier == "v1" else bench_v2, tmp, n, rounds)
                label = "v1 blkio (real kernel)" if hier == "v1" else "v2 io.max (fake tree)"
                for path, x in res.items():
                    print(f"| {label} | {n} | {path} | {x['rounds']} | {ms(x['median'])} | {ms(x['p99'])} | "
                          f"{x['appends']:.0f} | {x['writes']:.0f} | {x['journal_share'] * 100:.0f}% |")  # fmt: skip

        print("\n## journal: one fsync'd append (ext4 on the temp dir's disk)")
        j = bench_journal(tmp, max(50, round(500 * sc)))
        print("| appends | median ms | p99 ms | of which fsync: median / p99 ms | write(2) median ms |")
        print("|---|---|---|---|---|")
        print(f"| {j['n']} | {ms(j['median'])} | {ms(j['p99'])} | {ms(j['fsync_median'])} / {ms(j['fsync_p99'])} | "
              f"{j['write_median'] * 1e3:.3f} |")  # fmt: skip

        print("\n## 2. MIG resize through the emulated nvidia-smi on PATH (emulator time is not a GPU's)")
        print("| GPU | resize | steps | plan us | rounds | nvidia-smi calls | reconcile() returns ms | "
              "apply wall median / p99 ms | in the tool ms | tailguard's own ms | per call ms | "
              "no-op reconcile: calls, ms |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for m, x in run_async(bench_mig, tmp, max(2, round(10 * sc))).items():
            print(f"| {m} | {x['resize']} | {x['steps']} | {x['plan_us']:.0f} | {x['rounds']} | {x['calls']:.0f} | "
                  f"{ms(x['inline_median'])} | {ms(x['wall_median'])} / {ms(x['wall_p99'])} | "
                  f"{ms(x['tool_median'])} | {ms(x['own_median'])} | {ms(x['per_call_median'])} | "
                  f"{x['noop_calls']:.0f}, {ms(x['noop_median'])} |")  # fmt: skip

        print("\n## 3. recover() on a journal in the reconciler's shapes (10 tenants' caps renewed every tick)")
        head = (
            "| lines in the kept files | rotation (max x 3 kept) | rotations | files | MB | records after the "
            "latest snapshot | parse: all files / from the snapshot ms | rounds | recover() median ms | p99 ms |"
        )
        print(head)  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        cases: list[tuple[int, int, bool]] = [(1000, 4 << 20, False), (10_000, 4 << 20, False),
                                              (10_000, 256 << 10, False)]  # fmt: skip
        if not args.skip_worst:
            cases.append((0, 4 << 20, True))  # default rotation, every kept file full: the worst restart
        for i, (lines, mb, fill) in enumerate(cases):
            x = bench_recovery(tmp / f"rec{i}", lines, mb, max(3, round((20 if not fill else 5) * sc)), fill)
            print(f"| {x['lines']} | {x['max_bytes'] >> 10} KiB | {x['rotations']} | {x['files']} | "
                  f"{x['bytes'] / 1e6:.2f} | {x['tail']} | {ms(x['parse_all_s'])} / {ms(x['parse_tail_s'])} | "
                  f"{x['rounds']} | {ms(x['median'])} | {ms(x['p99'])} |")  # fmt: skip
    print(f"\n({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
