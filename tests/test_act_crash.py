"""Crash test: a subprocess runs real reconciles (v1 blkio caps with short expiries on two real
groups, MIG layout flips on two emulated GPUs) and is SIGKILLed at 50 random points, together with
the nvidia-smi it may be running (as systemd's KillMode=control-group does). The emulated
`-cgi -C` pauses between its GPU instance and its compute instance, so some kills land there.
After each kill a fresh reconciler recovers from the journal; then: no cap past its expiry, no cap
tailguard does not know about, no group but the tenants', every GPU's layout is the before or the
after, no GPU instance without its compute instance."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fakes.polling import wait_for  # noqa: E402

from actuators.emulation.nvidia_smi import BETWEEN_ENV, layout_of  # noqa: E402
from actuators.emulation.statefile import load  # noqa: E402
from actuators.emulation.testing import blkio_sandbox, emu_host  # noqa: E402
from actuators.reconciler import Reconciler, TenantActuation  # noqa: E402
from fsm.desired import DesiredState, Throttle  # noqa: E402
from fsm.mig import Slot  # noqa: E402

LAYOUTS = {
    "gpu0": ((Slot(0, "3g.20gb"), Slot(4, "3g.20gb")), (Slot(0, "4g.20gb"), Slot(4, "2g.10gb"), Slot(6, "1g.5gb"))),
    "gpu1": ((Slot(0, "7g.80gb"),), (Slot(0, "2g.20gb"), Slot(2, "2g.20gb"), Slot(4, "3g.40gb"))),
}
TENANTS = ("bulk-a", "bulk-b")
KILLS = 50


def make(cfg: dict[str, Any]) -> Reconciler:
    return Reconciler(
        cgroup_root="/sys/fs/cgroup", cgroup_version="v1", nvidia_smi=cfg["nvsmi"], mps_control=cfg["mps"],
        gpus={"gpu0": 0, "gpu1": 1},
        tenants={t: TenantActuation(t, f"{cfg['group']}/{t}") for t in TENANTS},
        journal_path=cfg["journal"], tool_timeout=10.0, journal_max_bytes=16 << 10,
    )  # fmt: skip


async def worker(cfg: dict[str, Any]) -> None:
    r = make(cfg)
    await r.recover()
    rnd = random.Random(cfg["seed"])
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        now = time.time()
        ths = tuple(
            Throttle(t, cfg["device"], None, rnd.choice([None, 20e6]), float(rnd.randint(5, 50) * 1_000_000),
                     now + rnd.uniform(0.05, 1.5))
            for t in TENANTS if rnd.random() < 0.8
        )  # fmt: skip
        layouts = {g: pair[rnd.randint(0, 1)] for g, pair in LAYOUTS.items()}
        await r.reconcile(DesiredState(t=now, throttles=ths, layouts=layouts))
        await r.wait_idle(30)
        r.status()


def check(cfg: dict[str, Any], gdir: Path) -> dict[str, Any]:
    half = sum(1 for g in load(cfg["nvsmi_state"])["gpus"] for gi in g["gis"] if not gi["cis"])
    r = make(cfg)
    now = time.time()  # what recovery compares expiries against (a cap may lapse while we look)
    r.clock = lambda: now
    summary = asyncio.run(r.recover())
    bad: list[str] = []
    for t in TENANTS:
        caps = r.cg.read(f"{cfg['group']}/{t}")
        for dev, c in caps.items():
            o = r.owned.get((f"{cfg['group']}/{t}", dev))
            if o is None:
                bad.append(f"{t} {dev}: cap {c} nobody owns")
            elif o.expires_at <= now:
                bad.append(f"{t} {dev}: cap {c} past its expiry")
            elif o.caps != c:
                bad.append(f"{t} {dev}: cap {c}, journal says {o.caps}")
    bad += [f"owned cap past expiry: {k}" for k, o in r.owned.items() if o.expires_at <= now]
    st = load(cfg["nvsmi_state"])
    for i, (g, pair) in enumerate(sorted(LAYOUTS.items())):
        got = layout_of(st["gpus"][i])
        if got not in pair:
            bad.append(f"{g}: layout {got} is neither before nor after ({summary['mig']})")
        missing_ci = [gi["id"] for gi in st["gpus"][i]["gis"] if not gi["cis"]]
        if missing_ci:
            bad.append(f"{g}: GIs without a compute instance {missing_ci}")
    groups = sorted(p.name for p in gdir.iterdir() if p.is_dir())
    if groups != sorted(TENANTS):
        bad.append(f"orphaned groups: {groups}")
    r.journal.close()
    return {"bad": bad, "summary": summary, "half": half}


def _half_made(state_file: str) -> bool:
    try:  # read without the lock: the emulator replaces the file atomically
        st = json.loads(Path(state_file).read_text())
    except (OSError, ValueError):
        return False
    return any(not gi["cis"] for g in st["gpus"] for gi in g["gis"])


def _journal_lines(journal: str) -> int:
    n = 0
    for p in Path(journal).parent.glob("journal.jsonl*"):
        with contextlib.suppress(FileNotFoundError):  # rotated away since the glob
            n += p.read_bytes().count(b"\n")
    return n


def _running(tool: Path) -> list[int]:
    """Processes still running the emulated tool (recovery must be the only actor on the GPUs)."""
    out = []
    for q in psutil.process_iter(["pid", "cmdline", "status"]):
        if str(tool) in (q.info["cmdline"] or []) and q.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(q.info["pid"])
    return out


def kill_at(k: int, rnd: random.Random, cfg: dict[str, Any]) -> None:
    """Where the k-th kill lands: every third right between a -cgi's GPU instance and its compute
    instance (seen in the emulator's state), every third after a random number of journal records
    (a point in the sequence of operations, whatever the machine's speed), the rest at a random time."""
    if k % 3 == 0:
        wait_for(lambda: _half_made(cfg["nvsmi_state"]), 30.0)
    elif k % 3 == 1:
        n0, n = _journal_lines(cfg["journal"]), rnd.randint(1, 10)
        wait_for(lambda: _journal_lines(cfg["journal"]) >= n0 + n, 30.0)
        time.sleep(rnd.uniform(0.0, 0.3))
    else:
        time.sleep(rnd.uniform(0.0, 0.6))


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.faults
def test_sigkill_at_random_points_then_recover(tmp_path: Path) -> None:
    h = emu_host(tmp_path / "emu", ["A100-SXM4-40GB", "H100-80GB-HBM3"],
                 {0: LAYOUTS["gpu0"][0], 1: LAYOUTS["gpu1"][0]})  # fmt: skip
    rnd = random.Random(int(os.environ.get("TAILGUARD_CRASH_SEED", "5")))
    with blkio_sandbox("tailguard-crash") as (name, gdir):
        for t in TENANTS:
            (gdir / t).mkdir()
        cfg = {"nvsmi": str(h.nvsmi), "mps": str(h.mps), "nvsmi_state": str(h.nvsmi_state), "group": name,
               "journal": str(tmp_path / "state" / "journal.jsonl"), "device": str(tmp_path), "seed": 0}  # fmt: skip
        stats = {"lifted": 0, "reasserted": 0, "mig": 0, "half": 0}
        env = {**os.environ, BETWEEN_ENV: "0.15"}  # the window between -cgi's two steps, widened
        for k in range(KILLS):
            cfg["seed"] = k
            p = subprocess.Popen([sys.executable, __file__, "worker", json.dumps(cfg)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)  # fmt: skip
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", (line, p.stderr.read() if p.stderr else "")
            kill_at(k, rnd, cfg)
            # Freeze the worker before listing its tools: one it spawned between the listing and the
            # kill would survive (nvidia-smi runs in its own session) and finish a -cci under recovery.
            # systemd's KillMode=control-group has no such gap: it kills the whole cgroup.
            os.killpg(p.pid, signal.SIGSTOP)
            tools = psutil.Process(p.pid).children(recursive=True)
            os.killpg(p.pid, signal.SIGKILL)
            for t in tools:
                with contextlib.suppress(psutil.NoSuchProcess):
                    t.kill()
            psutil.wait_procs(tools, timeout=10)
            p.wait(10)
            assert not _running(h.nvsmi), f"kill {k}: an nvidia-smi outlived its daemon"
            res = check(cfg, gdir)
            assert not res["bad"], f"kill {k}: {res['bad']}"
            s = res["summary"]
            stats["lifted"] += len(s["lifted"])
            stats["reasserted"] += len(s["reasserted"])
            stats["mig"] += sum(1 for v in s["mig"].values() if v in ("finished", "rolled back"))
            stats["half"] += res["half"]
        # Finally lift everything and leave the groups empty of caps.
        r = make(cfg)
        asyncio.run(r.recover())
        asyncio.run(r.reconcile(DesiredState(t=time.time())))
        for t in TENANTS:
            assert r.cg.read(f"{name}/{t}") == {}
        r.journal.close()
        print(f"\ncrash test: {KILLS} kills; recovery lifted {stats['lifted']} expired caps, re-asserted "
              f"{stats['reasserted']}, finished/rolled back {stats['mig']} interrupted MIG changes, "
              f"repaired {stats['half']} GPU instances a kill left without compute instance")  # fmt: skip
        assert stats["half"] >= KILLS // 6, "too few kills landed between -cgi and -cci"
    assert not (Path("/sys/fs/cgroup/blkio") / name).exists()


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    asyncio.run(worker(json.loads(sys.argv[2])))
