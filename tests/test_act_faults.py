"""Fault matrix, the reconciler's side: real faults on the real code path (a hanging or garbage-
printing nvidia-smi on PATH, a compute instance destroyed behind tailguard's back, journal records
of the wrong shape, a dropped capability on a real cgroup file). Each test checks the invariants:
no cap past its expiry, no cap without an owner, no half-done layout, the other levers kept
working, the fault visible in the report / status / summary, convergence once the fault clears."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from actuators.emulation.nvidia_smi import layout_of
from actuators.emulation.statefile import load, locked
from actuators.emulation.testing import BLKIO, EmuHost, blkio_sandbox, emu_host
from actuators.journal import Journal
from actuators.reconciler import Reconciler, TenantActuation
from fsm.desired import DesiredState, Throttle
from fsm.mig import Slot
from fsm.observation import Observation

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
A = (Slot(0, "3g.20gb"), Slot(4, "3g.20gb"))
B = (Slot(0, "4g.20gb"), Slot(4, "2g.10gb"), Slot(6, "1g.5gb"))
GROUP = "system.slice/etl.service"
BATCH = "system.slice/batch.service"


def fake_v2(tmp: Path) -> tuple[Path, Path]:
    """A cgroup v2 tree (one tenant group, one bystander group) and a sysfs with disk 259:0."""
    root = tmp / "cgroup"
    for g in (GROUP, BATCH, "system.slice/other.service"):
        (root / g).mkdir(parents=True)
        (root / g / "io.max").write_text("")
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    sysr = tmp / "sys"
    disk = sysr / "devices" / "nvme" / "block" / "nvme0n1"
    disk.mkdir(parents=True)
    (disk / "dev").write_text("259:0\n")
    (sysr / "class" / "block").mkdir(parents=True)
    (sysr / "dev" / "block").mkdir(parents=True)
    (sysr / "class" / "block" / "nvme0n1").symlink_to(disk)
    (sysr / "dev" / "block" / "259:0").symlink_to(disk)
    return root, sysr


def make(tmp: Path, **kw: object) -> Reconciler:
    root = tmp / "cgroup"
    if not root.exists():
        fake_v2(tmp)
    args: dict[str, object] = {
        "cgroup_root": str(root), "sys_root": str(tmp / "sys"),
        "tenants": {"etl": TenantActuation("etl", GROUP), "batch": TenantActuation("batch", BATCH)},
        "journal_path": tmp / "state" / "journal.jsonl",
        "gpus": {"gpu0": 0}, "gpu_models": {"gpu0": "A100-SXM4-40GB"},
    }  # fmt: skip
    args.update(kw)
    return Reconciler(**args)  # type: ignore[arg-type]


def cap(expires: float, wbps: float) -> Throttle:
    return Throttle("etl", "nvme0n1", None, None, wbps, expires, "llm")


def io_max(tmp: Path, group: str = GROUP) -> str:
    return (tmp / "cgroup" / group / "io.max").read_text()


def cap_problems(r: Reconciler, now: float) -> list[str]:
    """No cap past its expiry, no cap without an owner, every owned cap what the kernel shows."""
    bad = [f"owned cap past its expiry: {k}" for k, o in r.owned.items() if o.expires_at <= now]
    for t in r.tenants.values():
        assert t.cgroup is not None
        for dev, c in r.cg.read(t.cgroup).items():
            o = r.owned.get((t.cgroup, dev))
            if o is None:
                bad.append(f"{t.cgroup} {dev}: cap {c} nobody owns")
            elif o.caps != c:
                bad.append(f"{t.cgroup} {dev}: cap {c}, the books say {o.caps}")
    return bad


def gis_without_ci(h: EmuHost, i: int = 0) -> list[int]:
    return [gi["id"] for gi in load(h.nvsmi_state)["gpus"][i]["gis"] if not gi["cis"]]


def layout(h: EmuHost, i: int = 0) -> tuple[Slot, ...]:
    return layout_of(load(h.nvsmi_state)["gpus"][i])


def journal_records(r: Reconciler) -> list[dict[str, object]]:
    return list(Journal(r.journal.path).records())


def hanging_tool(bin_dir: Path, log: Path) -> Path:
    """An nvidia-smi that never answers: it notes when it started, then sleeps past any timeout."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    p = bin_dir / "nvidia-smi"
    p.write_text(f'#!/bin/sh\necho "$(date +%s.%N) $*" >> {log}\nexec sleep 3600\n')
    p.chmod(0o755)
    return p


def test_hang_nvidia_smi_caps_still_applied_within_a_tick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real nvidia-smi on PATH that hangs: the reconcile returns while it hangs, and the next
    tick's new cap is applied while the GPU check is still stuck (levers never wait on each other)."""
    bin_dir = tmp_path / "bin"
    hanging_tool(bin_dir, tmp_path / "calls.log")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    h = emu_host(tmp_path / "emu", ["A100-SXM4-40GB"], {0: ()})

    async def go() -> None:
        r = make(tmp_path, tool_timeout=4.0, inline_wait_s=0.3)  # nvidia_smi: "nvidia-smi" from PATH
        now = time.time()
        rep = await r.reconcile(DesiredState(t=now, throttles=(cap(now + 60, 50e6),), layouts={"gpu0": A}))
        assert rep.busy == ["gpu:gpu0"] and rep.applied == [f"capped {GROUP} 259:0 rbps=max wbps=50000000"]
        assert "gpu:gpu0" in r.status().in_flight  # the hung check goes on in its own task
        rep = await r.reconcile(DesiredState(t=now + 0.5, throttles=(cap(now + 61, 40e6),), layouts={"gpu0": A}))
        assert "gpu:gpu0" in r.status().in_flight, "the tool was killed already: the tick came too late"
        assert rep.busy == ["gpu:gpu0"] and io_max(tmp_path) == "259:0 rbps=max wbps=40000000\n"
        assert not cap_problems(r, time.time())
        await r.wait_idle(30)
        (o,) = r.status().outcomes  # the fault is visible: the check's outcome
        assert o.target == "gpu:gpu0" and not o.ok and "timed out" in o.error
        # The fault clears (a working nvidia-smi on PATH): the layout converges on the next tick.
        os.replace(bin_dir / "nvidia-smi", bin_dir / "nvidia-smi.hung")
        (bin_dir / "nvidia-smi").symlink_to(h.nvsmi)
        r.inline_wait_s = 60.0
        rep = await r.reconcile(DesiredState(t=time.time(), throttles=(cap(now + 62, 40e6),), layouts={"gpu0": A}))
        assert rep.started == ["gpu:gpu0"], rep
        await r.wait_idle(60)
        assert layout(h) == A and not gis_without_ci(h) and all(o.ok for o in r.status().outcomes)
        assert not cap_problems(r, time.time())
        r.journal.close()

    asyncio.run(go())


class ReconcilerHost:
    """The daemon's Host protocol over a real Reconciler (observations carry only its status)."""

    def __init__(self, r: Reconciler, tmp: Path) -> None:
        from fsm.examples import example_spec

        self.r = r
        self.tmp = tmp
        self.spec = example_spec()
        self.applied: list[tuple[float, str, tuple[str, ...]]] = []  # (wbps wanted, io.max after, in flight)

    def now(self) -> float:
        return time.time()

    async def observe(self) -> Observation:
        return Observation(t=time.time(), actuation=self.r.status())

    async def apply(self, desired: DesiredState) -> None:
        await self.r.reconcile(desired)
        want = desired.throttles[0].write_bps or 0.0
        self.applied.append((want, io_max(self.tmp), self.r.status().in_flight))

    async def close(self) -> None:
        for t in list(self.r._tasks.values()):
            t.cancel()
        await self.r.wait_idle(15)
        self.r.journal.close()


def test_hang_daemon_applies_each_ticks_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole loop: a decision that changes the cap on every tick, a layout to keep, and an
    nvidia-smi on PATH that hangs for the whole run: every tick's cap is applied during that tick."""
    from controller.daemon import Daemon, DaemonOptions
    from fsm.decide import Decision

    bin_dir = tmp_path / "bin"
    hanging_tool(bin_dir, tmp_path / "calls.log")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    host = ReconcilerHost(make(tmp_path, tool_timeout=30.0, inline_wait_s=0.1), tmp_path)
    ticks = iter(range(1000))

    def decide_fn(state: object, obs: Observation, spec: object) -> Decision:
        wbps = (40 + next(ticks)) * 1e6
        d = DesiredState(t=obs.t, throttles=(cap(obs.t + 60, wbps),), layouts={"gpu0": A})
        return Decision(state, d, ())  # type: ignore[arg-type]

    d = Daemon(host, DaemonOptions(period_s=0.4, max_ticks=6), decide_fn=decide_fn)  # type: ignore[arg-type]
    asyncio.run(d.run())
    assert [w for w, _, _ in host.applied] == [(40 + k) * 1e6 for k in range(6)]  # none skipped
    for wbps, got, in_flight in host.applied:
        assert got == f"259:0 rbps=max wbps={round(wbps)}\n" and "gpu:gpu0" in in_flight
    assert d.snapshot.apply_busy_total == 0  # no apply was still running when the next tick came
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 1  # one hung check, not one per tick


def test_hang_recovery_of_four_gpus_runs_concurrently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four GPUs with an open MIG change and a hung nvidia-smi: the caps are put right first, the
    four GPUs are read at the same time (one timeout, not four), the changes stay open for the
    next start, and once the tool answers again they are closed."""
    bin_dir = tmp_path / "bin"
    calls = tmp_path / "calls.log"
    hanging_tool(bin_dir, calls)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    gpus = {f"gpu{i}": i for i in range(4)}
    models = dict.fromkeys(gpus, "A100-SXM4-40GB")
    fake_v2(tmp_path)
    now = time.time()
    j = Journal(tmp_path / "state" / "journal.jsonl")
    for g in gpus:
        j.append("mig", phase="intent", gpu=g, before=[str(s) for s in A], after=[str(s) for s in B])
    for wbps, exp in ((30_000_000, now - 5), (20_000_000, now + 60)):  # expired on 259:0, valid on 259:1
        dev = "259:0" if exp < now else "259:1"
        j.append("throttle", phase="intent", action="set", cgroup=GROUP, dev=dev, tenant="etl", rbps=None,
                 wbps=wbps, expires_at=exp)  # fmt: skip
    j.close()
    (tmp_path / "cgroup" / GROUP / "io.max").write_text("259:0 rbps=max wbps=30000000\n")
    (tmp_path / "cgroup" / "system.slice/other.service" / "io.max").write_text("259:0 rbps=max wbps=7000000\n")

    async def go() -> None:
        r = make(tmp_path, gpus=gpus, gpu_models=models, tool_timeout=3.0, recovery_concurrency=4,
                 clock=lambda: now)  # fmt: skip
        summary = await r.recover()
        starts = sorted(float(ln.split()[0]) for ln in calls.read_text().splitlines())
        assert len(starts) == 4 and starts[-1] - starts[0] < 3.0, starts  # all four before the first timeout
        assert all(v.startswith("cannot read") and "timed out" in v for v in summary["mig"].values()), summary
        assert sorted(r.layouts.open) == sorted(gpus)  # still open: the next start tries again
        assert summary["lifted"] == [f"{GROUP} 259:0"] and len(summary["reasserted"]) == 1
        assert io_max(tmp_path, "system.slice/other.service") == "259:0 rbps=max wbps=7000000\n"  # not ours
        r.journal.close()
        # The tool answers again: the open changes are closed (the GPUs never left the "before").
        h = emu_host(tmp_path / "emu", ["A100-SXM4-40GB"] * 4, dict.fromkeys(range(4), A))
        (bin_dir / "nvidia-smi").unlink()
        (bin_dir / "nvidia-smi").symlink_to(h.nvsmi)
        r2 = make(tmp_path, gpus=gpus, gpu_models=models, tool_timeout=10.0, clock=lambda: now)
        s2 = await r2.recover()
        assert s2["mig"] == dict.fromkeys(gpus, "had not started") and not r2.layouts.open, s2
        assert not cap_problems(r2, now)
        r2.journal.close()

    asyncio.run(go())


def test_garbage_from_cgi_backs_off_without_layout_churn(tmp_path: Path) -> None:
    """`nvidia-smi mig -cgi` prints garbage on every call: each attempt is rolled back, further
    attempts wait (exponential backoff in the hands), the caps keep being applied every tick, and
    the layout converges once the tool is well again."""
    h = emu_host(tmp_path / "emu", ["A100-SXM4-40GB"], {0: A})
    with locked(h.nvsmi_state) as st:
        # every create of 4g.20gb (profile ID 5), the plan's first step: the rollback's creates work
        st["faults"] = [{"match": "-cgi 5:", "mode": "garbage", "times": -1}]
    clock = [1_000_000.0]

    async def go() -> None:
        r = make(tmp_path, nvidia_smi=str(h.nvsmi), tool_timeout=20.0, inline_wait_s=60.0,
                 backoff_base_s=10.0, backoff_max_s=40.0, clock=lambda: clock[0])  # fmt: skip
        deferred = 0
        for k in range(12):  # 24 s of ticks
            clock[0] += 2.0
            wbps = 50e6 if k % 2 else 40e6
            rep = await r.reconcile(DesiredState(t=clock[0], throttles=(cap(clock[0] + 30, wbps),),
                                                 layouts={"gpu0": B}))  # fmt: skip
            await r.wait_idle(60)
            deferred += bool(rep.deferred)
            assert io_max(tmp_path) == f"259:0 rbps=max wbps={round(wbps)}\n"  # the I/O lever kept working
            assert layout(h) == A and not gis_without_ci(h)  # rolled back each time, never half done
            assert not cap_problems(r, clock[0])
        intents = [x for x in journal_records(r) if x["kind"] == "mig" and x.get("phase") == "intent"]
        assert 2 <= len(intents) <= 3, len(intents)  # at t=2, 12 (and 32 > 24): not 12 attempts
        assert deferred >= 8
        st = r.backoff_status()["gpu:gpu0"]
        assert st["failures"] >= 2 and "unexpected output" in st["error"] and st["retry_in_s"] > 0
        with locked(h.nvsmi_state) as s:  # the fault clears
            s["faults"] = []
        clock[0] += 60.0
        rep = await r.reconcile(DesiredState(t=clock[0], layouts={"gpu0": B}))
        assert rep.started == ["gpu:gpu0"], rep
        await r.wait_idle(60)
        assert layout(h) == B and not gis_without_ci(h) and r.backoff_status() == {}
        assert not cap_problems(r, clock[0])
        r.journal.close()

    asyncio.run(go())


def test_compute_instance_destroyed_is_repaired_by_the_periodic_check(tmp_path: Path) -> None:
    """A compute instance destroyed behind tailguard's back (a GPU instance left without it) is
    found by the periodic drift check (`-lgi` and `-lci`) and repaired within layout_recheck_s;
    `-dci` on such a GPU instance says "No compute instances found: Not Found", which is tolerated."""
    h = emu_host(tmp_path / "emu", ["A100-SXM4-40GB"], {0: A})
    clock = [1_000_000.0]

    async def go() -> None:
        r = make(tmp_path, nvidia_smi=str(h.nvsmi), tool_timeout=20.0, inline_wait_s=60.0, layout_recheck_s=30.0,
                 clock=lambda: clock[0])  # fmt: skip
        d = DesiredState(t=clock[0], throttles=(cap(clock[0] + 300, 50e6),), layouts={"gpu0": A})
        rep = await r.reconcile(d)
        assert not rep.ops[1:] and not rep.started  # converged: only the cap was set
        gi = next(x["id"] for x in load(h.nvsmi_state)["gpus"][0]["gis"] if x["start"] == 4)
        out = subprocess.run([str(h.nvsmi), "mig", "-i", "0", "-gi", str(gi), "-dci"], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
        assert out.returncode == 0 and gis_without_ci(h) == [gi]
        ch = await r.nvsmi.destroy_ci(0, gi)  # nothing left to destroy: "Not Found" is not an error
        assert ch.error == "Not Found"
        clock[0] += 10.0
        rep = await r.reconcile(d)
        assert not rep.ops and gis_without_ci(h) == [gi]  # inside the recheck window: not read
        clock[0] += 25.0  # layout_recheck_s has passed
        rep = await r.reconcile(d)
        assert rep.ops == ["gpu0: repair 3g.20gb@4 (GPU instance without its compute instance)"], rep
        assert rep.started == ["gpu:gpu0"]
        await r.wait_idle(60)
        (o,) = [o for o in r.status().outcomes if o.target == "gpu:gpu0"]
        assert o.ok, o
        assert layout(h) == A and not gis_without_ci(h)
        assert io_max(tmp_path) == "259:0 rbps=max wbps=50000000\n" and not cap_problems(r, clock[0])
        recs = [x for x in journal_records(r) if x["kind"] == "mig"]
        assert recs[0]["phase"] == "intent" and recs[-1]["phase"] == "done"
        r.journal.close()

    asyncio.run(go())


MALFORMED = [
    {"kind": "snapshot", "state": None},
    {"kind": "throttle", "phase": "renew", "action": "set", "caps": [1, "x"]},
    {"kind": "throttle", "phase": "renew", "action": "set", "caps": {"cgroup": GROUP}},
    {"kind": "throttle", "phase": "intent", "action": "set", "cgroup": GROUP, "dev": "259:0", "tenant": "etl",
     "rbps": "abc", "wbps": None, "expires_at": 1e12},
    {"kind": "throttle", "phase": "intent", "action": "set", "cgroup": "../../etc", "dev": "259:0", "tenant": "etl",
     "rbps": None, "wbps": 10, "expires_at": 1e12},
    {"kind": "throttle", "phase": "done", "action": "set", "cgroup": GROUP, "dev": "259:0", "tenant": "etl",
     "rbps": None, "wbps": 10, "expires_at": "Infinity"},
    {"kind": "mig", "phase": "intent", "gpu": "gpu0", "before": ["3g.20gb@4"], "after": ["bogus"]},
    {"kind": "mig", "phase": "intent", "gpu": None},
    {"kind": "mps", "phase": "intent", "action": "set", "tenant": "etl", "pid": "x", "expires_at": 1e12},
    {"kind": "move", "phase": "done", "tenant": 5},
    {"kind": "snapshot", "state": {"throttles": [], "mps": {"etl": [1]}}},
]  # fmt: skip


def test_malformed_records_recovery_completes(tmp_path: Path) -> None:
    """Valid JSON of the wrong shape in every kind of record: recovery neither raises nor applies
    any of it; each is counted, named by file and line, and skipped; the well-formed records
    around them still count (a valid cap re-asserted, an expired one lifted, others' caps kept)."""
    fake_v2(tmp_path)
    now = time.time()
    jpath = tmp_path / "state" / "journal.jsonl"
    j = Journal(jpath)
    j.append("snapshot", state={"throttles": [
        {"cgroup": GROUP, "dev": "259:0", "tenant": "etl", "rbps": None, "wbps": 20_000_000, "expires_at": now + 60},
    ]})  # fmt: skip
    j.close()
    with jpath.open("a") as f:
        for rec in MALFORMED:
            f.write(json.dumps(rec) + "\n")
    j = Journal(jpath)
    # a valid record after the bad ones, expired
    j.append("throttle", phase="done", action="set", cgroup=BATCH, dev="259:0", tenant="batch", rbps=5_000_000,
             wbps=None, expires_at=now - 1)  # fmt: skip
    j.close()
    (tmp_path / "cgroup" / BATCH / "io.max").write_text("259:0 rbps=5000000 wbps=max\n")
    (tmp_path / "cgroup" / "system.slice/other.service" / "io.max").write_text("259:0 rbps=max wbps=7000000\n")
    first_bad = 2  # line of the first malformed record

    async def go() -> None:
        r = make(tmp_path, clock=lambda: now)
        summary = await r.recover()
        assert summary["skipped"] == len(MALFORMED), summary
        places = [s.split(": ", 1)[0] for s in summary["skipped_records"]]
        assert places == [f"{jpath}:{first_bad + i}" for i in range(len(MALFORMED))], places
        assert "state is NoneType, not an object" in summary["skipped_records"][0]
        assert summary["reasserted"] == [f"{GROUP} 259:0 rbps=max wbps=20000000"], summary
        assert summary["lifted"] == [f"{BATCH} 259:0"] and not summary["errors"]
        assert io_max(tmp_path) == "259:0 rbps=max wbps=20000000\n"
        assert io_max(tmp_path, BATCH) == "259:0 rbps=max wbps=max\n"
        assert io_max(tmp_path, "system.slice/other.service") == "259:0 rbps=max wbps=7000000\n"
        assert not r.layouts.open and not r.owned_mps and not cap_problems(r, now)
        assert [x["kind"] for x in journal_records(r)][-2:] == ["recovery", "snapshot"]
        r.journal.close()
        r2 = make(tmp_path, clock=lambda: now)  # the next start reads the clean snapshot
        assert (await r2.recover())["skipped"] == 0
        r2.journal.close()

    asyncio.run(go())


EPERM_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    sys.path.insert(0, sys.argv[1])
    from actuators.reconciler import Reconciler, TenantActuation
    from fsm.desired import DesiredState, Throttle
    group, device, journal = sys.argv[2], sys.argv[3], sys.argv[4]
    r = Reconciler(cgroup_root="/sys/fs/cgroup", cgroup_version="v1", journal_path=journal,
                   tenants={"bulk": TenantActuation("bulk", group)})
    now = time.time()
    th = Throttle("bulk", device, None, None, 8e6, now + 60)
    rep = asyncio.run(r.reconcile(DesiredState(t=now, throttles=(th,))))
    print(json.dumps({"errors": rep.errors, "applied": rep.applied}))
    """
)


@pytest.mark.root
def test_eperm_without_cap_dac_override_is_named(tmp_path: Path) -> None:
    """A real permission fault on the real kernel: the group's blkio files belong to another user
    (as a delegated group's do) and tailguard runs without CAP_DAC_OVERRIDE (dropped from its
    bounding set): the write fails with EACCES, the error names the capability, no cap is set; with
    the capability back the same desired state is applied."""
    if not (BLKIO / "blkio.throttle.write_bps_device").exists():
        pytest.fail("no cgroup v1 blkio hierarchy: this fault test needs root and /sys/fs/cgroup/blkio")
    with blkio_sandbox("tailguard-eperm") as (name, gdir):
        g = gdir / "bulk"
        g.mkdir()
        files = [g / "blkio.throttle.read_bps_device", g / "blkio.throttle.write_bps_device"]
        for f in files:
            os.chown(f, 65534, 65534)  # nobody's; mode 0644: root may write it only with CAP_DAC_OVERRIDE
        journal = tmp_path / "journal.jsonl"
        argv = [sys.executable, "-c", EPERM_CHILD, str(ROOT), f"{name}/bulk", str(tmp_path), str(journal)]
        drop = ["setpriv", "--bounding-set", "-dac_override", "--inh-caps", "-dac_override"]
        out = subprocess.run(drop + argv, capture_output=True, text=True, timeout=60, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert not res["applied"] and any("Permission denied" in e and "CAP_DAC_OVERRIDE" in e for e in res["errors"])
        assert files[1].read_text() == ""  # nothing set
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)  # the fault clears
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["applied"] and not res["errors"], res

        async def check() -> None:
            r = Reconciler(cgroup_root="/sys/fs/cgroup", cgroup_version="v1", journal_path=journal,
                           tenants={"bulk": TenantActuation("bulk", f"{name}/bulk")})  # fmt: skip
            await r.recover()
            assert not cap_problems(r, time.time()) and len(r.owned) == 1
            await r.reconcile(DesiredState(t=time.time()))  # lift it again
            assert r.cg.read(f"{name}/bulk") == {}
            r.journal.close()

        asyncio.run(check())


def test_malformed_many_records_counted_listed_once(tmp_path: Path) -> None:
    """A journal full of records of the wrong shape (3,000 renewals whose caps are strings): all
    counted, the first 20 named by file and line, the valid cap before them still re-asserted."""
    fake_v2(tmp_path)
    now = time.time()
    jpath = tmp_path / "state" / "journal.jsonl"
    j = Journal(jpath)
    j.append("throttle", phase="intent", action="set", cgroup=GROUP, dev="259:0", tenant="etl", rbps=None,
             wbps=20_000_000, expires_at=now + 60)  # fmt: skip
    j.close()
    with jpath.open("a") as f:
        for k in range(3000):
            f.write(json.dumps({"kind": "throttle", "phase": "renew", "seq": k, "caps": [f"cap {k}"]}) + "\n")

    async def go() -> None:
        r = make(tmp_path, clock=lambda: now)
        summary = await r.recover()
        assert summary["skipped"] == 3000 and len(summary["skipped_records"]) == 20
        assert summary["skipped_records"][19].startswith(f"{jpath}:21: throttle record skipped: caps[0] is str")
        assert summary["reasserted"] == [f"{GROUP} 259:0 rbps=max wbps=20000000"]
        assert io_max(tmp_path) == "259:0 rbps=max wbps=20000000\n" and not cap_problems(r, now)
        r.journal.close()

    asyncio.run(go())
