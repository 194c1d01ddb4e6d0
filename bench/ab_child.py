"""One side of bench_ab_actuators: a server over the tree given as the first argument (imported from
there, not from this checkout). It reads a figure's name per line on stdin, runs one round of it and
answers the round's wall time in seconds; `quit` cleans up and exits. Setup is done on a figure's
first round (answered too, and discarded by the caller as a warm-up)."""

# ruff: noqa: E402, I001

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

root, hang_timeout = sys.argv[1], float(sys.argv[2])
sys.path.insert(0, root)  # the tree under test, ahead of the editable install of this one
from actuators.reconciler import Reconciler, TenantActuation
from actuators.emulation.testing import blkio_sandbox, emu_host
from actuators.blockdev import resolve
from actuators.journal import Journal
import actuators.journal as journal_mod
from fsm.desired import DesiredState, Throttle
from fsm.mig import Slot

assert sys.modules["actuators"].__path__[0].startswith(root), sys.modules["actuators"].__path__

A = (Slot(0, "3g.20gb"), Slot(4, "3g.20gb"))
B = (Slot(0, "4g.20gb"), Slot(4, "2g.10gb"), Slot(6, "1g.5gb"))
TMP = Path(tempfile.mkdtemp(prefix="tg-ab-"))
STACK = contextlib.ExitStack()
LOOP = asyncio.new_event_loop()


def fake_v2(tmp: Path, n: int) -> tuple[Path, Path, list[str]]:
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


def tenants(groups: list[str]) -> dict[str, TenantActuation]:
    return {f"t{i}": TenantActuation(f"t{i}", g) for i, g in enumerate(groups)}


class Throttles:
    """set: every cap changes each round; renew: the expiry moves on; no-op: nothing changes."""

    def __init__(self, hier: str, n: int, path: str) -> None:
        self.n, self.path = n, path
        tmp = TMP / f"{hier}-{n}-{path}"
        if hier == "v2":
            cg, sysr, groups = fake_v2(tmp, n)
            self.dev = "259:0"
            self.r = Reconciler(cgroup_root=str(cg), cgroup_version="v2", sys_root=str(sysr), tenants=tenants(groups),
                                journal_path=tmp / "j" / "journal.jsonl")  # fmt: skip
        else:
            name, gdir = STACK.enter_context(blkio_sandbox("tailguard-ab"))
            groups = []
            for i in range(n):
                (gdir / f"t{i}").mkdir()
                groups.append(f"{name}/t{i}")
            self.dev = resolve(str(TMP))
            self.r = Reconciler(cgroup_root="/sys/fs/cgroup", cgroup_version="v1", tenants=tenants(groups),
                                journal_path=tmp / "j" / "journal.jsonl")  # fmt: skip
        self.k = 0
        self.exp = time.time() + 3600
        LOOP.run_until_complete(self.r.reconcile(self.want(50e6)))

    def want(self, wbps: float) -> DesiredState:
        ths = tuple(Throttle(f"t{i}", self.dev, None, 100e6, wbps, self.exp) for i in range(self.n))
        return DesiredState(t=time.time(), throttles=ths)

    def round(self) -> float:
        self.k += 1
        wbps = (60e6 if self.k % 2 else 50e6) if self.path == "set" else 50e6
        if self.path == "renew":
            self.exp += 1.0
        d = self.want(wbps)
        t0 = time.perf_counter()
        rep = LOOP.run_until_complete(self.r.reconcile(d))
        dt = time.perf_counter() - t0
        assert not rep.errors and len(rep.applied) == (self.n if self.path == "set" else 0), rep
        return dt


class Mig:
    """resize: reconcile a flip and wait until it is done; no-op: reconcile a converged GPU."""

    def __init__(self, path: str) -> None:
        self.path = path
        tmp = TMP / f"mig-{path}"
        h = emu_host(tmp / "emu", ["A100-SXM4-40GB"], {0: A})
        self.r = Reconciler(cgroup_root=str(tmp / "nocg"), nvidia_smi=str(h.nvsmi), gpus={"gpu0": 0},
                            gpu_models={"gpu0": "A100-SXM4-40GB"}, journal_path=tmp / "j.jsonl")  # fmt: skip
        self.k = 0
        LOOP.run_until_complete(self.r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": A})))

    def round(self) -> float:
        self.k += 1
        want = (B if self.k % 2 else A) if self.path == "resize" else A
        t0 = time.perf_counter()
        rep = LOOP.run_until_complete(self.r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": want})))
        LOOP.run_until_complete(self.r.wait_idle(120))
        dt = time.perf_counter() - t0
        assert all(o.ok for o in self.r.status().outcomes)
        assert self.path == "resize" or (not rep.ops and not rep.started), rep
        return dt


class Recover:
    """recover() of a 10,000-line journal of 10 tenants' renewals (a fresh reconciler each round)."""

    def __init__(self) -> None:
        tmp = TMP / "rec"
        self.cg, self.sysr, self.groups = fake_v2(tmp, 10)
        self.jp = tmp / "state" / "journal.jsonl"
        j = Journal(self.jp, max_bytes=64 << 20)
        t = time.time()
        real = journal_mod.os.fsync
        journal_mod.os.fsync = lambda fd: None  # building it fast; recovery reads it as written
        try:
            for k in range(10_000):
                caps = [{"cgroup": g, "dev": "259:0", "tenant": f"t{i}", "rbps": 100_000_000, "wbps": 50_000_000,
                         "expires_at": t + 3600 + k} for i, g in enumerate(self.groups)]  # fmt: skip
                j.append("throttle", phase="renew", action="set", caps=caps)
        finally:
            journal_mod.os.fsync = real
        j.close()
        self.snap = tmp / "copy"
        shutil.copytree(self.jp.parent, self.snap)

    def round(self) -> float:
        shutil.rmtree(self.jp.parent)
        shutil.copytree(self.snap, self.jp.parent)
        r = Reconciler(cgroup_root=str(self.cg), cgroup_version="v2", sys_root=str(self.sysr),
                       tenants=tenants(self.groups), journal_path=self.jp)  # fmt: skip
        t0 = time.perf_counter()
        s = LOOP.run_until_complete(r.recover())
        dt = time.perf_counter() - t0
        r.journal.close()
        assert len(s["reasserted"]) == 10 and not s["errors"], s
        return dt


class HungRecovery:
    """recover() with 4 GPUs, each with an open MIG change, and an nvidia-smi that hangs."""

    def __init__(self) -> None:
        self.k = 0
        self.bin = TMP / "hung-bin"
        self.bin.mkdir()
        (self.bin / "nvidia-smi").write_text("#!/bin/sh\nexec sleep 3600\n")
        (self.bin / "nvidia-smi").chmod(0o755)

    def round(self) -> float:
        self.k += 1
        jp = TMP / f"hung-{self.k}" / "journal.jsonl"
        j = Journal(jp)
        for i in range(4):
            j.append("mig", phase="intent", gpu=f"gpu{i}", before=[str(s) for s in A], after=[str(s) for s in B])
        j.close()
        r = Reconciler(cgroup_root=str(TMP / "nocg"), nvidia_smi=str(self.bin / "nvidia-smi"),
                       gpus={f"gpu{i}": i for i in range(4)}, gpu_models=dict.fromkeys(
                           (f"gpu{i}" for i in range(4)), "A100-SXM4-40GB"),
                       journal_path=jp, tool_timeout=hang_timeout)  # fmt: skip
        t0 = time.perf_counter()
        s = LOOP.run_until_complete(r.recover())
        dt = time.perf_counter() - t0
        r.journal.close()
        assert len(s["mig"]) == 4 and all("timed out" in v for v in s["mig"].values()), s
        return dt


def make(fig: str) -> Any:
    parts = fig.split()
    if parts[0] in ("v1", "v2"):
        return Throttles(parts[0], int(parts[1]), parts[2])
    if parts[0] == "mig":
        return Mig(parts[1])
    if fig == "recover 10k":
        return Recover()
    if fig == "recover hung 4 GPUs":
        return HungRecovery()
    raise SystemExit(f"unknown figure {fig!r}")


def main() -> None:
    figs: dict[str, Any] = {}
    try:
        for line in sys.stdin:
            fig = line.strip()
            if fig == "quit":
                break
            if fig not in figs:
                figs[fig] = make(fig)
            run: Callable[[], float] = figs[fig].round
            print(f"{run():.9f}", flush=True)
    finally:
        for f in figs.values():
            r = getattr(f, "r", None)
            if r is not None:
                with contextlib.suppress(Exception):
                    LOOP.run_until_complete(r.reconcile(DesiredState(t=time.time())))
                    r.journal.close()
        STACK.close()
        shutil.rmtree(TMP, ignore_errors=True)


main()
