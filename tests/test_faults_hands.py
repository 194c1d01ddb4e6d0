"""Fault matrix, the journal's and the daemon's rows: real faults under a running daemon on real v1
blkio caps (tests/fakes/hands_rig.py). Each test asserts the invariants: no cap past its expiry, no
cap without an owner in the journal, the other levers kept working, the fault visible in the
metrics and /status, and convergence once the fault clears."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.hands_rig import TENANTS, Rig, fill, mount, need_root_blkio, read_only, until

from actuators.emulation.testing import blkio_sandbox
from actuators.journal import Journal
from actuators.reconciler import Reconciler

pytestmark = [pytest.mark.faults, pytest.mark.root]

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000


@pytest.fixture
def group() -> Iterator[str]:
    need_root_blkio()
    with blkio_sandbox("tailguard-fault") as (name, _):
        yield name


async def _stop(task: asyncio.Task[int], d: object) -> int:
    d.request_stop("test done")  # type: ignore[attr-defined]
    return await asyncio.wait_for(task, 30)


def test_enospc_journal_on_a_full_tmpfs(tmp_path: Path, group: str) -> None:
    """The state dir is a 64 KiB tmpfs, filled up while the daemon runs: a new cap is refused (no
    intent, no cap), an expiring cap is still lifted, no journal line is torn or glued; ENOSPC is
    counted and "journal" is degraded; once space is back the refused cap is applied."""
    state = tmp_path / "state"
    state.mkdir()
    with mount(state, "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"):
        rig = Rig(tmp_path, group, state)
        host = rig.host()

        async def go() -> None:
            await host.start()
            d = rig.daemon(host)
            task = asyncio.create_task(d.run())
            now = time.time()
            rig.want = {"bulk-a": (20 * MB, now + 4.0), "bulk-b": (30 * MB, now + 600)}
            await until(lambda: rig.cap_of("bulk-a") == 20 * MB and rig.cap_of("bulk-b") == 30 * MB, what="caps set")
            filler = fill(state)
            # The journal's last page still has room: new values (an intent and a done record each)
            # fill it until a write comes back short (cut off again) or fails.
            for i in range(1, 200):
                rig.want["bulk-b"] = ((30 + i) * MB, now + 600)
                await asyncio.sleep(0.12)
                if rig.metric("tailguard_journal_failing") == 1.0:
                    break
            assert time.time() < now + 4.0, "the journal filled up too slowly for this test"
            fill(state)  # whatever a cut-off short write gave back
            rig.check_invariants()
            # Fail safe: a new value is not applied without its intent (a longer record than the
            # one that did not fit: more digits) ...
            applied = rig.cap_of("bulk-b")
            refused = 1_234_567_890
            rig.want["bulk-b"] = (refused, now + 600)
            await asyncio.sleep(0.5)
            assert rig.cap_of("bulk-b") == applied != refused
            # ... while the other direction keeps working: the expired cap is lifted on a full disk.
            await until(lambda: rig.cap_of("bulk-a") is None, timeout=4, what="expired cap lifted")
            rig.check_invariants()
            assert (rig.metric("tailguard_journal_write_errors_total", errno="ENOSPC") or 0) >= 1
            # (a short lift record may still fit; the refused cap's intent fails again at once)
            await until(lambda: rig.metric("tailguard_degraded", condition="journal", group="host") == 1.0,
                        what="journal degraded")  # fmt: skip
            st = rig.status()
            assert "No space left" in st["degraded"]["journal"]["cause"] and st["journal"]["failing"]
            rig.journal_lines_whole()
            # The fault clears: the refused cap is applied, the condition ends.
            filler.unlink()
            await until(lambda: rig.cap_of("bulk-b") == refused, what="cap applied once space is back")
            await until(lambda: "journal" not in rig.status()["degraded"], what="journal condition cleared")
            rig.check_invariants()
            rig.journal_lines_whole()
            assert await _stop(task, d) == 0
            assert rig.kernel_caps() == {}  # lifted on the way out
            rig.close()

        asyncio.run(go())


def test_torn_last_line_then_appends_and_a_recovery(tmp_path: Path, group: str) -> None:
    """A crash in the middle of a write leaves half a record at the end of the journal: the next
    daemon cuts it off before its first append (the next record is not glued onto it), the cap
    whose record was torn still has an owner (its intent), and a crash after that recovers whole."""
    rig = Rig(tmp_path, group)

    async def go() -> None:
        r1 = rig.reconciler()
        await r1.recover()
        now = time.time()
        rig.want = {"bulk-a": (20 * MB, now + 600), "bulk-b": (30 * MB, now + 600)}
        await r1.reconcile(rig.desired(now))
        r1.journal.close()  # the crash: no shutdown
        data = rig.journal_path.read_bytes()
        last = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
        assert b'"phase":"done"' in last and b"bulk-b" in last
        rig.journal_path.write_bytes(data[: len(data) - len(last) // 2 - 1])  # half the last record, no newline
        host = rig.host(lift_on_exit=False)
        summary = await host.start()
        assert not host.recovery_error and summary["errors"] == []
        rig.check_invariants()
        assert rig.cap_of("bulk-b") == 30 * MB  # owned through its intent record, re-asserted
        d = rig.daemon(host)
        task = asyncio.create_task(d.run())
        rig.want = {"bulk-a": (20 * MB, now + 600), "bulk-b": (12 * MB, now + 600)}
        await until(lambda: rig.cap_of("bulk-b") == 12 * MB, what="new cap after the torn tail")
        rig.journal_lines_whole()  # the torn half was cut, nothing glued onto it
        await until(lambda: rig.metric("tailguard_journal_torn_repairs_total") == 1.0, what="repair counted")
        assert rig.metric("tailguard_journal_skipped_lines_total") == 1.0  # recovery skipped the torn line
        assert rig.status()["journal"]["torn_repairs_total"] == 1
        rig.check_invariants()
        assert await _stop(task, d) == 0  # lift_throttles_on_exit = false: caps stay, like a crash
        rig.close()
        # Recovery after that crash: every cap in the kernel has its owner; past expiry they go.
        r3 = rig.reconciler()
        later = now + 601
        r3.clock = lambda: later
        summary = await r3.recover()
        assert sorted(summary["lifted"]) == sorted(f"{group}/{t} {rig.dev}" for t in TENANTS)
        assert rig.kernel_caps() == {}
        rig.journal_lines_whole()

    asyncio.run(go())


def test_state_dir_deleted_and_replaced_while_running(tmp_path: Path, group: str) -> None:
    """The state dir is deleted (then replaced by a new, empty one) under the running daemon: the
    journal notices on its next append, reopens and writes a snapshot first, so after a crash every
    cap in the kernel has an owner and recovery lifts them when they expire."""
    rig = Rig(tmp_path, group)
    host = rig.host(lift_on_exit=False)

    async def go() -> None:
        await host.start()
        d = rig.daemon(host)
        task = asyncio.create_task(d.run())
        now = time.time()
        rig.want = {"bulk-a": (20 * MB, now + 30), "bulk-b": (30 * MB, now + 30)}
        await until(lambda: rig.cap_of("bulk-a") == 20 * MB and rig.cap_of("bulk-b") == 30 * MB, what="caps set")
        shutil.rmtree(rig.state)  # deleted, with the open journal in it
        rig.want["bulk-b"] = (15 * MB, now + 30)
        await until(lambda: rig.cap_of("bulk-b") == 15 * MB, what="cap applied after the state dir was deleted")
        await until(lambda: rig.metric("tailguard_journal_reopens_total") == 1.0, what="reopen counted")
        assert rig.journal_path.exists()
        rig.check_invariants()  # bulk-a's owner came back with the snapshot
        old = rig.state.with_name("state.old")
        os.rename(rig.state, old)  # replaced: a new, empty directory of the same name
        rig.state.mkdir()
        rig.want["bulk-a"] = (25 * MB, now + 30)
        await until(lambda: rig.cap_of("bulk-a") == 25 * MB, what="cap applied after the state dir was replaced")
        await until(lambda: rig.status()["journal"]["reopens_total"] == 2, what="second reopen counted")
        rig.check_invariants()
        assert rig.cap_of("bulk-b") == 15 * MB  # the other cap untouched throughout
        assert await _stop(task, d) == 0  # caps left in place: a crash, as far as they are concerned
        rig.close()
        r = rig.reconciler()
        summary = await r.recover()
        assert summary["lifted"] == [] and len(summary["reasserted"]) == 2
        assert set(r.owned) == set(rig.kernel_caps())  # no cap without an owner
        r.journal.close()
        r2 = rig.reconciler()
        later = now + 31
        r2.clock = lambda: later
        await r2.recover()
        assert rig.kernel_caps() == {}

    asyncio.run(go())


def test_eperm_erofs_read_only_state_dir_at_start(tmp_path: Path, group: str) -> None:
    """The state dir is a read-only bind mount when tailguard starts (a disk remounted read-only
    after errors): recovery still lifts the expired cap, new caps are refused (EROFS, counted,
    "journal" degraded), and once the mount is writable again they are applied."""
    rig = Rig(tmp_path, group)

    async def go() -> None:
        r0 = rig.reconciler()
        now = time.time()
        rig.want = {"bulk-a": (20 * MB, now + 0.5)}
        await r0.reconcile(rig.desired(now))
        r0.journal.close()
        await asyncio.sleep(0.6)  # bulk-a's cap expires while tailguard is down
        with read_only(rig.state):
            host = rig.host()
            summary = await host.start()
            assert summary["lifted"] == [f"{group}/bulk-a {rig.dev}"] and rig.kernel_caps() == {}
            d = rig.daemon(host)
            task = asyncio.create_task(d.run())
            rig.want = {"bulk-b": (30 * MB, time.time() + 600)}
            await until(lambda: (rig.metric("tailguard_journal_write_errors_total", errno="EROFS") or 0) >= 1,
                        what="EROFS counted")  # fmt: skip
            await asyncio.sleep(0.3)
            assert rig.cap_of("bulk-b") is None  # no intent, no cap
            st = rig.status()
            assert "Read-only file system" in st["degraded"]["journal"]["cause"]
            assert rig.metric("tailguard_degraded", condition="journal", group="host") == 1.0
            rig.check_invariants()
        await until(lambda: rig.cap_of("bulk-b") == 30 * MB, what="cap applied once writable")
        await until(lambda: rig.status()["degraded"] == {}, what="degraded cleared")
        rig.check_invariants()
        assert await _stop(task, d) == 0
        rig.close()

    asyncio.run(go())


def _as_nobody(tmp: Path, group: str, state: Path, status: Path) -> dict[str, object]:
    """The rig's child as uid/gid 65534 without any capability (setpriv)."""
    spec = tmp / "child.json"
    spec.write_text(json.dumps({"tmp": str(tmp), "group": group, "state": str(state), "status": str(status)}))
    spec.chmod(0o644)
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed for the permission faults"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}"}
    p = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                        "--bounding-set=-all", sys.executable, "-m", "fakes.hands_rig", str(spec)],
                       capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp))  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A scratch dir an unprivileged child can reach (pytest's tmp_path is root's, mode 0700)."""
    d = Path(tempfile.mkdtemp(prefix="tailguard-eperm-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_eperm_dropped_capabilities(open_tmp: Path, group: str) -> None:
    """Without root and capabilities (setpriv): a journal in root's 0700 state dir cannot be
    opened (EACCES: no intent, no cap, "journal" degraded in its status); with a journal it may
    write, the blkio write is refused (EACCES/EPERM, reported as a failed cap); the kernel holds no
    cap either way and root's tailguard then sets the cap as usual."""
    need_root_blkio()
    locked = open_tmp / "locked"
    locked.mkdir(mode=0o700)
    own = open_tmp / "own"
    own.mkdir()
    status = open_tmp / "status"
    status.mkdir()
    for d in (own, status):
        os.chown(d, 65534, 65534)
    rig = Rig(open_tmp, group)
    out = _as_nobody(open_tmp, group, locked, status)
    assert out["uid"] == 65534
    st = out["status"]
    assert isinstance(st, dict)
    assert "Permission denied" in st["degraded"]["journal"]["cause"] and st["journal"]["errors_total"] == {
        "EACCES": st["journal"]["errors_total"]["EACCES"]}  # fmt: skip
    assert any("not applied" in e and "Permission denied" in e for e in out["errors"])  # type: ignore[union-attr]
    assert rig.kernel_caps() == {} and not (locked / "journal.jsonl").exists()
    out = _as_nobody(open_tmp, group, own, status)
    errs = " ".join(out["errors"])  # type: ignore[arg-type]
    assert "Permission denied" in errs or "Operation not permitted" in errs, errs
    assert rig.kernel_caps() == {}
    rig.state = own
    rig.journal_lines_whole()
    recs = list(Journal(own / "journal.jsonl").records())
    pairs = [(r["phase"], r["action"]) for r in recs if r["kind"] == "throttle" and r["action"] == "set"]
    assert pairs and pairs == [("intent", "set"), ("failed", "set")] * (len(pairs) // 2)  # each try: intent, failed
    rig.check_invariants()
    # The same cap with the privileges tailguard runs with: applied.
    r = Reconciler(cgroup_root="/sys/fs/cgroup", cgroup_version="v1", tenants=rig.reconciler().tenants,
                   journal_path=open_tmp / "root-state" / "journal.jsonl")  # fmt: skip
    rig.want = {"bulk-a": (8 * MB, time.time() + 60)}
    rep = asyncio.run(r.reconcile(rig.desired(time.time())))
    assert not rep.errors and rig.cap_of("bulk-a") == 8 * MB
    asyncio.run(r.shutdown(lift_throttles=True))
    assert rig.kernel_caps() == {}


def test_eperm_status_as_non_root_suggests_url(open_tmp: Path) -> None:
    """`tailguard status` by a user who may not read the daemon's 0700 state dir says so and
    points at the loopback endpoint instead of a bare "Permission denied"."""
    if os.geteuid() != 0:
        pytest.skip("needs root to set up the other user's view")
    state = open_tmp / "state"
    state.mkdir(mode=0o700)
    (state / "status.json").write_text("{}")
    exe = Path(sys.executable).parent / "tailguard"
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                        "--bounding-set=-all", str(exe), "status", "--state-dir", str(state)],
                       capture_output=True, text=True, timeout=60, cwd=str(open_tmp))  # fmt: skip
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "Permission denied" in p.stderr and "--url http://127.0.0.1:9433/status" in p.stderr, p.stderr


def test_degraded_start_when_recovery_raises(tmp_path: Path, group: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tailguard run`'s start path with a recovery that raises: the daemon comes up anyway (READY=1,
    no exit 1 for systemd to loop on), says DEGRADED in STATUS=, /status and the metrics, lifts the
    expired cap at once and the other when it expires (the lever that must never stop), and clears
    the condition when a retried recovery succeeds."""
    import argparse

    from fakes.daemon_fakes import free_port

    from actuators import recovery as recmod
    from controller import cmd_run, linux_host
    from controller.cmd_run import Setup

    rig = Rig(tmp_path, group)
    now = time.time()
    r0 = rig.reconciler()
    rig.want = {"bulk-a": (20 * MB, now + 0.3), "bulk-b": (30 * MB, now + 3.0)}
    asyncio.run(r0.reconcile(rig.desired(now)))
    r0.journal.close()  # tailguard dies with two caps in place
    time.sleep(0.4)  # bulk-a's expires while it is down
    rig.want = {}
    real = recmod.Recovery.run
    calls = {"n": 0}

    async def broken(self: object, snapshot: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected: recovery bug")
        return await real(self, snapshot)  # type: ignore[arg-type]

    monkeypatch.setattr(recmod.Recovery, "run", broken)
    monkeypatch.setattr(linux_host, "RECOVERY_RETRY_S", 2.0)
    notes = tmp_path / "notify.sock"
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notes))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notes))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    port = free_port()
    host = rig.host()
    # The desired state comes from the real decision core: no latency data, so no cap is wanted.
    s = Setup(
        host=host,
        spec=host.spec,
        host_name="rig",
        period_s=0.1,
        until_t=time.time() + 6.0,
        state_dir=str(rig.status_dir),
        metrics=("127.0.0.1", port),
        mqtt=None,
        reload=None,
        simulated=False,
    )
    args = argparse.Namespace(record=None, quiet=True, command="run")
    seen: dict[str, object] = {}

    def url(path: str) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return str(r.read().decode())

    async def watch() -> None:
        await until(lambda: rig.cap_of("bulk-a") is None, timeout=3, what="expired cap lifted at start")
        assert rig.cap_of("bulk-b") == 30 * MB  # not expired yet: kept, and owned in the journal
        rig.check_invariants()
        await asyncio.sleep(0.5)
        st = json.loads(url("/status"))
        seen["status"] = st
        seen["metrics"] = url("/metrics")
        await until(lambda: rig.cap_of("bulk-b") is None, timeout=4, what="second cap lifted at its expiry")
        rig.check_invariants()
        await until(lambda: "recovery" not in json.loads(url("/status"))["degraded"], timeout=4,
                    what="recovery retried and cleared")  # fmt: skip

    async def go() -> int:
        w = asyncio.create_task(watch())
        rc = await cmd_run.serve(s, args)
        await w
        return rc

    assert asyncio.run(go()) == 0
    st = seen["status"]
    assert isinstance(st, dict) and "injected: recovery bug" in st["degraded"]["recovery"]["cause"]
    assert st["state"] == "running"
    assert 'tailguard_degraded{condition="recovery",group="host"} 1.0' in str(seen["metrics"])
    msgs = []
    while True:
        try:
            msgs.append(sock.recv(65536).decode())
        except BlockingIOError:
            break
    sock.close()
    assert any("READY=1" in m for m in msgs)
    assert any("STATUS=DEGRADED (recovery)" in m for m in msgs), msgs[:3]
    assert calls["n"] >= 2 and not host.recovery_error
    assert rig.kernel_caps() == {}
