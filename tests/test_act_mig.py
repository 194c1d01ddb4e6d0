"""The reconciler against the emulated nvidia-smi / nvidia-cuda-mps-control: layout changes,
"In use" refusals with rollback, tool faults (hang, non-zero exit, garbage), a second reconcile
while one runs, dry-run, tenant moves with readiness and move-back, MPS limits, recovery."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from actuators.emulation.statefile import load, locked
from actuators.emulation.testing import EmuHost, emu_host
from actuators.launcher import CommandLauncher
from actuators.reconciler import Reconciler, TenantActuation
from fsm.desired import DesiredState, MpsLimit
from fsm.mig import Slot
from fsm.observation import InstanceRef

A = (Slot(0, "3g.20gb"), Slot(4, "3g.20gb"))
B = (Slot(0, "4g.20gb"), Slot(4, "2g.10gb"), Slot(6, "1g.5gb"))


def host(tmp: Path, layout: tuple[Slot, ...] = A) -> EmuHost:
    return emu_host(tmp / "emu", ["A100-SXM4-40GB", "H100-80GB-HBM3"], {0: layout, 1: (Slot(0, "7g.80gb"),)})


def rec(tmp: Path, h: EmuHost, **kw: object) -> Reconciler:
    args: dict[str, object] = {
        "cgroup_root": str(tmp / "nocg"), "nvidia_smi": str(h.nvsmi), "mps_control": str(h.mps),
        "gpus": {"gpu0": 0, "gpu1": 1}, "journal_path": tmp / "journal.jsonl", "tool_timeout": 5.0,
        "inline_wait_s": 60.0,  # reports complete: these tests read rep.ops / errors / started
    }  # fmt: skip
    args.update(kw)
    return Reconciler(**args)  # type: ignore[arg-type]


def layout(h: EmuHost, i: int = 0) -> tuple[Slot, ...]:
    from actuators.emulation.nvidia_smi import layout_of

    return layout_of(load(h.nvsmi_state)["gpus"][i])


def test_layout_change_background_idempotent(tmp_path: Path) -> None:
    h = host(tmp_path)

    async def go() -> None:
        r = rec(tmp_path, h)
        rep = await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": B}))
        assert rep.started == ["gpu:gpu0"]
        assert rep.ops == ["gpu0: destroy 3g.20gb@0", "gpu0: destroy 3g.20gb@4", "gpu0: create 4g.20gb@0",
                           "gpu0: create 2g.10gb@4", "gpu0: create 1g.5gb@6"]  # fmt: skip
        assert "gpu:gpu0" in r.status().in_flight
        rep2 = await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": B}))  # while it runs
        assert rep2.busy == ["gpu:gpu0"] and not rep2.started
        await r.wait_idle(30)
        st = r.status()
        assert [(o.target, o.ok) for o in st.outcomes] == [("gpu:gpu0", True)] and not st.in_flight
        assert layout(h) == B
        assert (await r.read_actual()).layouts["gpu0"] == B
        rep3 = await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": B}))
        assert rep3.ops == [] and rep3.started == []

    asyncio.run(go())


def test_concurrent_reconciles_are_safe(tmp_path: Path) -> None:
    h = host(tmp_path)

    async def go() -> None:
        r = rec(tmp_path, h)
        d = DesiredState(t=time.time(), layouts={"gpu0": B, "gpu1": (Slot(0, "3g.40gb"), Slot(4, "3g.40gb"))})
        reps = await asyncio.gather(*(r.reconcile(d) for _ in range(4)))
        assert sum(len(x.started) for x in reps) == 2  # each GPU changed once, the others saw it busy
        await r.wait_idle(60)
        assert all(o.ok for o in r.status().outcomes)
        assert layout(h, 0) == B and layout(h, 1) == (Slot(0, "3g.40gb"), Slot(4, "3g.40gb"))

    asyncio.run(go())


def test_in_use_is_reported_and_rolled_back(tmp_path: Path) -> None:
    h = host(tmp_path)
    with locked(h.nvsmi_state) as st:  # a process runs on 3g@0 (destroyed second: 3g@4 goes first)
        next(gi for gi in st["gpus"][0]["gis"] if gi["start"] == 0)["processes"] = [4242]

    async def go() -> None:
        r = rec(tmp_path, h)
        await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": B}))
        await r.wait_idle(30)
        (o,) = r.status().outcomes
        assert not o.ok and "In use by another client" in o.error and "rolled back" in o.error
        assert layout(h) == A  # never left in between

    asyncio.run(go())


def test_dry_run_applies_nothing(tmp_path: Path) -> None:
    h = host(tmp_path)

    async def go() -> None:
        r = rec(tmp_path, h, dry_run=True)
        rep = await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": B}))
        assert rep.dry_run and len(rep.ops) == 5 and not rep.started
        assert layout(h) == A

    asyncio.run(go())


def test_invalid_target_layout_refused(tmp_path: Path) -> None:
    h = host(tmp_path)

    async def go() -> None:
        r = rec(tmp_path, h)
        rep = await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": (Slot(0, "7g.40gb"), Slot(4, "3g.20gb"))}))
        assert any("not valid" in e for e in rep.errors) and not rep.started
        assert layout(h) == A

    asyncio.run(go())


def fault(h: EmuHost, **f: object) -> None:
    with locked(h.nvsmi_state) as st:
        st["faults"] = [f]


def test_fault_hang_times_out(tmp_path: Path) -> None:
    h = host(tmp_path)
    fault(h, match="-lgi", mode="hang", seconds=30, times=1)

    async def go() -> None:
        r = rec(tmp_path, h, tool_timeout=1.0, inline_wait_s=0.5)
        t0 = time.monotonic()
        rep = await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": B}))
        assert time.monotonic() - t0 < 1.5  # reconcile waits for the check at most inline_wait_s
        assert rep.busy == ["gpu:gpu0"] and not rep.errors
        await r.wait_idle(30)
        (o,) = r.status().outcomes  # the timeout comes through status(), as a change's outcome does
        assert o.target == "gpu:gpu0" and not o.ok and "timed out" in o.error
        rep = await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": B}))  # next tick works
        await r.wait_idle(30)
        assert layout(h) == B

    asyncio.run(go())


def test_fault_nonzero_and_garbage_mid_change_roll_back(tmp_path: Path) -> None:
    for mode in ("exit", "garbage"):
        h = host(tmp_path / mode)
        fault(h, match="-cgi 14", mode=mode, code=255, message="Unknown Error", times=1)

        async def go() -> None:
            r = rec(tmp_path / mode, h)  # noqa: B023
            await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": B}))
            await r.wait_idle(30)
            (o,) = r.status().outcomes
            assert not o.ok and "rolled back" in o.error, o
            assert layout(h) == A  # noqa: B023

        asyncio.run(go())


def write_script(path: Path, body: str) -> Path:
    import sys

    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


def logging_launcher(tmp: Path) -> tuple[Path, Path]:
    """A launcher command that appends its arguments to a log: (the log, the command)."""
    log = tmp / "launch.log"
    return log, write_script(
        tmp / "launch", f"import sys\nopen({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
    )


async def never_ready(tenant: str) -> bool:
    return False


def test_move_with_readiness_and_move_back(tmp_path: Path) -> None:
    h = host(tmp_path, (Slot(0, "2g.10gb"), Slot(2, "2g.10gb"), Slot(4, "3g.20gb")))
    log, launcher_bin = logging_launcher(tmp_path)
    ready_on: dict[str, bool] = {"ok": True}

    async def ready(tenant: str) -> bool:  # the 2g@2 instance never answers once "ok" is off
        return ready_on["ok"] or "2g.10gb@2" not in log.read_text().splitlines()[-1]

    home = InstanceRef("gpu0", "2g.10gb", 0)
    t = TenantActuation("llm", None, home, CommandLauncher([str(launcher_bin), "{tenant}", "{instance}", "{uuid}"]),
                        readiness_timeout_s=1.0)  # fmt: skip

    async def go() -> None:
        r = rec(tmp_path, h, tenants={"llm": t}, readiness=ready)
        to = InstanceRef("gpu0", "3g.20gb", 4)
        rep = await r.reconcile(DesiredState(t=time.time(), placements={"llm": to}))
        assert rep.started == ["tenant:llm"]
        await r.wait_idle(30)
        (o,) = r.status().outcomes
        assert o.ok and r.placement["llm"] == to
        line = log.read_text().splitlines()[-1].split()
        assert line[:2] == ["llm", "gpu0/3g.20gb@4"]
        listing = (await r.nvsmi.list_gpus())[0]
        assert line[2] in {d.uuid for d in listing.mig if d.name == "3g.20gb"}
        # Now it never becomes ready on the other instance: moved back, failure reported.
        ready_on["ok"] = False
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": InstanceRef("gpu0", "2g.10gb", 2)}))
        await r.wait_idle(30)
        (o,) = r.status().outcomes
        assert not o.ok and "not ready" in o.error and r.placement["llm"] == to
        assert log.read_text().splitlines()[-1].split()[1] == "gpu0/3g.20gb@4"  # relaunched where it was
        assert o.outage_s is not None and o.outage_s >= 1.0  # the new copy's wait, then the move back
        # A target that does not exist (its MIG change refused): never launched, not moved back
        # (that would restart it where it serves for nothing), an outage of 0 said.
        n = len(log.read_text().splitlines())
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": InstanceRef("gpu0", "1g.5gb", 6)}))
        await r.wait_idle(30)
        (o,) = r.status().outcomes
        assert not o.ok and o.error.endswith("; not stopped") and o.outage_s == 0.0
        assert len(log.read_text().splitlines()) == n and r.placement["llm"] == to

    asyncio.run(go())


def test_a_move_back_slower_than_the_readiness_wait_is_left_to_finish(tmp_path: Path) -> None:
    """A cold start outlasting readiness_timeout_s on both instances: the move fails and moves back,
    and the relaunched tenant is placed where it was, still starting. The next reconcile with the
    same desired state launches nothing: relaunching it would restart it from scratch, after every
    backoff, and it would never serve."""
    h = host(tmp_path, (Slot(0, "2g.10gb"), Slot(2, "2g.10gb"), Slot(4, "3g.20gb")))
    log, launcher_bin = logging_launcher(tmp_path)

    home = InstanceRef("gpu0", "2g.10gb", 0)
    t = TenantActuation("llm", None, home, CommandLauncher([str(launcher_bin), "{tenant}", "{instance}", "{uuid}"]),
                        readiness_timeout_s=0.5)  # fmt: skip

    async def go() -> None:
        r = rec(tmp_path, h, tenants={"llm": t}, readiness=never_ready)
        r.placement["llm"] = home
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": InstanceRef("gpu0", "3g.20gb", 4)}))
        await r.wait_idle(30)
        (o,) = r.status().outcomes
        assert not o.ok and "moved back, still starting" in o.error and "not ready" in o.error
        assert r.placement["llm"] == home
        launches = log.read_text().splitlines()
        assert [ln.split()[1] for ln in launches] == ["gpu0/3g.20gb@4", "gpu0/2g.10gb@0"]
        rep = await r.reconcile(DesiredState(t=time.time(), placements={"llm": home}))
        await r.wait_idle(30)
        assert rep.started == [] and log.read_text().splitlines() == launches

    asyncio.run(go())


def test_a_resize_past_the_readiness_wait_whose_old_instance_is_gone_is_left_on_the_new_one(tmp_path: Path) -> None:
    """Growing a tenant in place (the MIG change destroys its own instance) with a start slower than
    readiness_timeout_s: there is nothing to move back to, so the copy starting on the new instance
    is left to finish there, recorded there, the failure reported. Before, its place was unknown and
    the next reconcile after the backoff relaunched it from scratch, and so on: it never served."""
    h = host(tmp_path, (Slot(0, "2g.10gb"), Slot(2, "2g.10gb"), Slot(4, "3g.20gb")))
    log, launcher_bin = logging_launcher(tmp_path)

    home, to = InstanceRef("gpu0", "2g.10gb", 0), InstanceRef("gpu0", "3g.20gb", 0)
    t = TenantActuation("llm", None, home, CommandLauncher([str(launcher_bin), "{tenant}", "{instance}"]),
                        readiness_timeout_s=0.3)  # fmt: skip
    grown = (Slot(0, "3g.20gb"), Slot(4, "3g.20gb"))

    async def go() -> None:
        r = rec(tmp_path, h, tenants={"llm": t}, readiness=never_ready)
        r.placement["llm"] = home
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": to}, layouts={"gpu0": grown}))
        await r.wait_idle(30)
        assert layout(h) == grown
        (o,) = [o for o in r.status().outcomes if o.target == "tenant:llm"]
        assert not o.ok and "not moved back" in o.error and "still starting" in o.error, o
        assert r.placement["llm"] == to
        launches = log.read_text().splitlines()
        assert [ln.split()[1] for ln in launches] == ["gpu0/3g.20gb@0"]
        rep = await r.reconcile(DesiredState(t=time.time(), placements={"llm": to}, layouts={"gpu0": grown}))
        await r.wait_idle(30)
        assert "tenant:llm" not in rep.started and log.read_text().splitlines() == launches

    asyncio.run(go())


def test_a_resize_records_its_relaunch_apart_from_the_mig_change(tmp_path: Path) -> None:
    """A move into an instance a MIG change makes beside the tenant's own waits for the change: its
    outage ("resize") counts from the start of that wait, and its relaunch alone (`relaunch_s`,
    what the cost model prices every relaunch with) from the launch; both journaled, and a restart
    of tailguard reads them back."""
    h = host(tmp_path, (Slot(0, "2g.10gb"), Slot(2, "2g.10gb"), Slot(4, "3g.20gb")))
    launcher = write_script(tmp_path / "launch", "import time\ntime.sleep(0.3)\n")
    home, to = InstanceRef("gpu0", "2g.10gb", 0), InstanceRef("gpu0", "2g.10gb", 4)
    t = TenantActuation("llm", None, home, CommandLauncher([str(launcher), "{uuid}"]))
    grown = (Slot(0, "2g.10gb"), Slot(2, "2g.10gb"), Slot(4, "2g.10gb"), Slot(6, "1g.5gb"))

    async def go() -> None:
        r = rec(tmp_path, h, tenants={"llm": t})
        r.placement["llm"] = home
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": to}, layouts={"gpu0": grown}))
        await r.wait_idle(30)
        assert all(o.ok for o in r.status().outcomes) and r.placement["llm"] == to
        (o,) = r.recent_outages()["llm"]
        assert o["kind"] == "resize" and 0.3 <= o["relaunch_s"] <= o["seconds"]
        r.journal.close()
        r2 = rec(tmp_path, h, tenants={"llm": t})
        await r2.recover()
        assert r2.recent_outages()["llm"][0]["relaunch_s"] == o["relaunch_s"]
        r2.journal.close()

    asyncio.run(go())


def test_layout_refuses_to_destroy_a_tenants_instance(tmp_path: Path) -> None:
    h = host(tmp_path)
    t = TenantActuation("llm", None, InstanceRef("gpu0", "3g.20gb", 0), CommandLauncher(["/bin/true"]))

    async def go() -> None:
        r = rec(tmp_path, h, tenants={"llm": t})
        rep = await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": B}))
        assert any("will not destroy instances in use" in e for e in rep.errors) and layout(h) == A

    asyncio.run(go())


def mps_host(tmp: Path, procs: str, servers: dict[str, object]) -> tuple[EmuHost, Path]:
    """The emulated host with MPS `servers` and a cgroup v2 tree whose `train` group holds `procs`."""
    h = host(tmp)
    cg = tmp / "cg"
    (cg / "train").mkdir(parents=True)
    (cg / "cgroup.controllers").write_text("io\n")
    (cg / "train" / "cgroup.procs").write_text(procs)
    with locked(h.mps_state) as st:
        st["servers"] = servers
    return h, cg


def mps_rec(tmp: Path, h: EmuHost, cg: Path) -> Reconciler:
    t = TenantActuation("train", "train", mps=True)
    return rec(tmp, h, cgroup_root=str(cg), cgroup_version="v2", tenants={"train": t})


def test_mps_limits_set_lifted_and_faults(tmp_path: Path) -> None:
    servers = {"900": {"clients": [7, 5002], "percent": 100.0}, "901": {"clients": [8], "percent": 100.0}}
    h, cg = mps_host(tmp_path, "5001\n5002\n", servers)

    async def go() -> None:
        r = mps_rec(tmp_path, h, cg)
        exp = time.time() + 60
        await r.reconcile(DesiredState(t=time.time(), mps=(MpsLimit("train", "gpu0", 40, exp),)))
        assert load(h.mps_state)["servers"]["900"]["percent"] == 40.0
        assert load(h.mps_state)["servers"]["901"]["percent"] == 100.0
        rep = await r.reconcile(DesiredState(t=time.time(), mps=(MpsLimit("train", "gpu0", 40, exp),)))
        assert rep.ops == []
        await r.reconcile(DesiredState(t=time.time()))
        assert load(h.mps_state)["servers"]["900"]["percent"] == 100.0
        with locked(h.mps_state) as st:
            st["faults"] = [{"match": "get_server_list", "mode": "exit", "times": -1}]
        rep = await r.reconcile(DesiredState(t=time.time(), mps=(MpsLimit("train", "gpu0", 40, exp),)))
        assert rep.errors and any(not o.ok for o in r.status().outcomes)

    asyncio.run(go())


def test_an_mps_limit_without_a_finite_expiry_is_refused_not_applied(tmp_path: Path) -> None:
    # Journaled as Infinity/NaN, recovery would skip its record: the limit would outlive a crash.
    h, cg = mps_host(tmp_path, "5002\n", {"900": {"clients": [5002], "percent": 100.0}})

    async def go() -> None:
        r = mps_rec(tmp_path, h, cg)
        for exp in (float("inf"), float("nan"), 10**400):
            rep = await r.reconcile(DesiredState(t=time.time(), mps=(MpsLimit("train", "gpu0", 40, exp),)))  # type: ignore[arg-type]
            assert any("MPS limit of train: expires_at must be a finite time" in e for e in rep.errors), rep.errors
            assert load(h.mps_state)["servers"]["900"]["percent"] == 100.0
            assert rep.ops == []
        r.journal.close()
        journal = tmp_path / "journal.jsonl"
        assert not journal.exists() or '"mps"' not in journal.read_text()  # nothing journaled either

    asyncio.run(go())


def test_recovery_finishes_an_interrupted_change(tmp_path: Path) -> None:
    h = host(tmp_path)

    async def go() -> None:
        r = rec(tmp_path, h)
        # Simulate a crash after the intent and one destroy step.
        r.journal.append("mig", phase="intent", gpu="gpu0", before=[str(s) for s in A], after=[str(s) for s in B])
        await r.nvsmi.destroy_ci(0, 2)
        await r.nvsmi.destroy_gi(0, 2)  # 3g@4 gone: the layout is in between
        r.journal.close()
        r2 = rec(tmp_path, h)
        summary = await r2.recover()
        assert summary["mig"]["gpu0"] == "finished" and layout(h) == B

    asyncio.run(go())


def test_converged_layout_is_not_re_read_every_tick_but_drift_is_found(tmp_path: Path) -> None:
    """Once a GPU's layout reads back as desired, reconciles within layout_recheck_s skip the
    `nvidia-smi mig -lgi` (a tick must not pay ~0.1 s per managed GPU); after that a drift made
    behind tailguard's back is found and repaired."""
    h = host(tmp_path)

    async def go() -> None:
        r = rec(tmp_path, h, layout_recheck_s=3600.0)
        calls = []
        real = r.nvsmi.lgi

        async def counted(i: int):  # type: ignore[no-untyped-def]
            calls.append(i)
            return await real(i)

        r.nvsmi.lgi = counted  # type: ignore[method-assign]
        d = DesiredState(t=time.time(), layouts={"gpu0": A})
        assert (await r.reconcile(d)).ops == []  # already there: read once
        assert len(calls) == 1
        for _ in range(5):
            assert (await r.reconcile(d)).ops == []
        assert len(calls) == 1  # inside the window: not read again
        with locked(h.nvsmi_state) as st:  # somebody destroys an instance behind tailguard's back
            st["gpus"][0]["gis"] = [gi for gi in st["gpus"][0]["gis"] if gi["start"] != 4]
        r.layout_recheck_s = 0.0  # the window has passed
        rep = await r.reconcile(d)
        # read again (the change task may already have read once more to apply its plan)
        assert len(calls) >= 2 and rep.started == ["gpu:gpu0"] and rep.ops == ["gpu0: create 3g.20gb@4"]
        await r.wait_idle(30)
        assert layout(h) == A
        r.layout_recheck_s = 3600.0
        n = len(calls)
        await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": B}))  # a new desired layout: read now
        assert len(calls) > n
        await r.wait_idle(30)

    asyncio.run(go())


def test_open_mig_change_survives_a_journal_rotation(tmp_path: Path) -> None:
    """A MIG change's step records can rotate the journal between its intent and its outcome; the
    new file's snapshot must carry the open intent, or recovery after a crash would leave the GPU
    half changed (found by the 50-kill crash test)."""
    from actuators.journal import _file_records

    h = host(tmp_path)

    async def go() -> None:
        r1 = rec(tmp_path, h, journal_max_bytes=100)  # every record rotates
        stuck = asyncio.Event()

        async def hang(*a: object, **k: object) -> None:  # the crash comes at the first create
            stuck.set()
            await asyncio.Event().wait()

        r1.nvsmi.create_gi = hang  # type: ignore[method-assign]
        await r1.reconcile(DesiredState(t=time.time(), layouts={"gpu0": B}))
        await asyncio.wait_for(stuck.wait(), 30)
        newest = _file_records(r1.journal.path)
        assert newest[0]["kind"] == "snapshot" and not any(x.get("phase") == "intent" for x in newest)
        for task in list(r1._tasks.values()):  # SIGKILL: nothing more is written
            task.cancel()
        r1.journal.close()
        assert layout(h) not in (A, B)  # half changed: both 3g.20gb destroyed, nothing created
        r2 = rec(tmp_path, h, journal_max_bytes=300)
        summary = await r2.recover()
        assert summary["mig"].get("gpu0") in ("finished", "rolled back"), summary
        assert layout(h) in (A, B)

    asyncio.run(go())
