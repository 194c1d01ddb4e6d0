"""Warm (make-before-break) tenant moves: a second copy starts on the target MIG instance while the
old one serves, the old one stops once the new is ready; a copy that never gets ready is stopped and
the old one kept; crash recovery keeps exactly one copy. Against the emulated nvidia-smi and a fake
systemctl (state in a JSON file, every call logged)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from actuators.emulation.testing import EmuHost, emu_host
from actuators.launcher import CommandLauncher, LaunchError, SystemdLauncher
from actuators.reconciler import Reconciler, TenantActuation
from controller.actuation import reconciler_from_config
from controller.config import ConfigError, parse_config
from fsm.desired import DesiredState
from fsm.mig import Slot
from fsm.observation import InstanceRef

HOME = InstanceRef("gpu0", "2g.10gb", 0)
TO = InstanceRef("gpu0", "3g.20gb", 4)
LAYOUT = (Slot(0, "2g.10gb"), Slot(2, "2g.10gb"), Slot(4, "3g.20gb"))

# A fake systemctl: units' states in state.json; "never_ready": units that stay "activating";
# "crash_once": units whose next start fails ("failed", as systemctl is-active prints a unit whose
# process exited with an error); "fail_stop": units whose stop fails. Every call is appended to
# "calls".
FAKE_SYSTEMCTL = r"""
import fnmatch, json, sys
path = sys.argv[0] + ".json"
st = json.load(open(path))
args = sys.argv[1:]
st["calls"].append(args)
rc, out = 0, ""
if args[0] == "daemon-reload":
    pass
elif args[0] in ("start", "restart"):
    unit = args[-1]
    if unit in st.get("crash_once", []):  # its process exits while starting (out of memory, say)
        st["crash_once"].remove(unit)
        st["units"][unit] = "failed"
    else:
        st["units"][unit] = "activating" if unit in st["never_ready"] else "active"
elif args[0] == "stop":
    if args[1] in st["fail_stop"]:
        rc, out = 1, "Job for " + args[1] + " failed"
    else:
        st["units"].pop(args[1], None)
elif args[0] == "is-active":
    out = st["units"].get(args[1], "inactive")
    rc = 0 if out == "active" else 3
elif args[0] == "list-units":
    out = "".join(u + " loaded " + s + " running x\n" for u, s in sorted(st["units"].items())
                  if fnmatch.fnmatch(u, args[-1]))
else:
    rc, out = 1, "unknown command"
json.dump(st, open(path, "w"))
print(out)
sys.exit(rc)
"""


class FakeSystemctl:
    def __init__(self, d: Path) -> None:
        self.bin = d / "systemctl"
        self.bin.write_text(f"#!{sys.executable}\n{FAKE_SYSTEMCTL}")
        self.bin.chmod(0o755)
        self.state = Path(str(self.bin) + ".json")
        self.save({"units": {}, "never_ready": [], "fail_stop": [], "calls": []})

    def load(self) -> dict[str, Any]:
        return dict(json.loads(self.state.read_text()))

    def save(self, st: dict[str, Any]) -> None:
        self.state.write_text(json.dumps(st))

    def set(self, **kw: Any) -> None:
        st = self.load()
        st.update(kw)
        self.save(st)

    def active(self) -> set[str]:
        return {u for u, s in self.load()["units"].items() if s in ("active", "activating")}


def _setup(tmp: Path, *, timeout: float = 2.0) -> tuple[EmuHost, FakeSystemctl, SystemdLauncher, TenantActuation]:
    h = emu_host(tmp / "emu", ["A100-SXM4-40GB"], {0: LAYOUT})
    ctl = FakeSystemctl(tmp)
    launcher = SystemdLauncher("vllm@.service", dropin_root=str(tmp / "units"), systemctl=str(ctl.bin),
                               timeout=5.0, handover="warm")  # fmt: skip
    return h, ctl, launcher, TenantActuation("llm", None, HOME, launcher, readiness_timeout_s=timeout)


def _rec(tmp: Path, h: EmuHost, t: TenantActuation, **kw: Any) -> Reconciler:
    args: dict[str, Any] = {
        "cgroup_root": str(tmp / "nocg"), "nvidia_smi": str(h.nvsmi), "gpus": {"gpu0": 0},
        "journal_path": tmp / "journal.jsonl", "tool_timeout": 5.0, "tenants": {"llm": t}, "inline_wait_s": 60.0,
    }  # fmt: skip
    args.update(kw)
    return Reconciler(**args)


def _journal(tmp: Path) -> list[tuple[str, str]]:
    recs = [json.loads(ln) for ln in (tmp / "journal.jsonl").read_text().splitlines()]
    # (phase, where the tenant is kept): a switched record keeps the copy on "to"
    return [(r["phase"], r.get("at") or (r["to"] if r["phase"] == "switched" else "")) for r in recs
            if r.get("kind") == "move"]  # fmt: skip


async def _start_home(r: Reconciler, ctl: FakeSystemctl, launcher: SystemdLauncher) -> tuple[str, str]:
    """The operator's copy on the home instance, and the target's MIG uuid."""
    home, to = await r.mig_uuid(HOME), await r.mig_uuid(TO)
    ctl.set(units={launcher.instance_unit(home): "active"})
    return home, to


def test_warm_systemd_move_starts_new_then_stops_old(tmp_path: Path) -> None:
    h, ctl, launcher, t = _setup(tmp_path)
    ready_calls: list[str] = []

    async def ready(tenant: str) -> bool:  # the tenant-wide check is not needed: systemd tells copies apart
        ready_calls.append(tenant)
        return False

    async def go() -> None:
        r = _rec(tmp_path, h, t, readiness=ready)
        home, to = await _start_home(r, ctl, launcher)
        rep = await r.reconcile(DesiredState(t=time.time(), placements={"llm": TO}))
        assert rep.started == ["tenant:llm"]
        await r.wait_idle(30)
        (o,) = r.status().outcomes
        assert o.ok, o.error
        assert r.placement["llm"] == TO and ctl.active() == {f"vllm@{to}.service"}
        calls = ctl.load()["calls"]
        start = calls.index(["start", "--no-block", f"vllm@{to}.service"])
        assert calls.index(["stop", f"vllm@{home}.service"]) > start  # make before break
        assert ["is-active", f"vllm@{to}.service"] in calls[start:]
        dropin = tmp_path / "units" / f"vllm@{to}.service.d" / "50-tailguard-mig.conf"
        assert f"Environment=CUDA_VISIBLE_DEVICES={to}\n" in dropin.read_text()
        assert _journal(tmp_path) == [("intent", ""), ("switched", str(TO)), ("done", str(TO))]
        assert not ready_calls
        # Back home: idempotent on the second reconcile, one copy again.
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": HOME}))
        await r.wait_idle(30)
        assert r.status().outcomes[0].ok and ctl.active() == {f"vllm@{home}.service"}
        assert not (tmp_path / "units" / f"vllm@{to}.service.d").exists()  # the drop-in goes with its copy
        rep = await r.reconcile(DesiredState(t=time.time(), placements={"llm": HOME}))
        assert rep.started == [] and rep.ops == []

    asyncio.run(go())


def test_warm_readiness_timeout_keeps_old_stops_new(tmp_path: Path) -> None:
    h, ctl, launcher, t = _setup(tmp_path, timeout=1.0)

    async def go() -> None:
        r = _rec(tmp_path, h, t)
        home, to = await _start_home(r, ctl, launcher)
        ctl.set(never_ready=[f"vllm@{to}.service"])
        t0 = time.monotonic()
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": TO}))
        await r.wait_idle(30)
        (o,) = r.status().outcomes
        assert not o.ok and "not ready" in o.error and "old copy kept" in o.error
        assert 1.0 <= time.monotonic() - t0 < 10
        assert r.placement["llm"] == HOME and ctl.active() == {f"vllm@{home}.service"}
        assert ["stop", f"vllm@{home}.service"] not in ctl.load()["calls"]
        assert _journal(tmp_path) == [("intent", ""), ("failed", str(HOME))]

    asyncio.run(go())


def test_warm_new_copy_that_exits_is_given_up_at_once_not_at_the_readiness_wait(tmp_path: Path) -> None:
    h, ctl, launcher, t = _setup(tmp_path, timeout=60.0)

    async def go() -> None:
        r = _rec(tmp_path, h, t)
        home, to = await _start_home(r, ctl, launcher)
        ctl.set(crash_once=[f"vllm@{to}.service"])
        t0 = time.monotonic()
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": TO}))
        await r.wait_idle(90)
        (o,) = r.status().outcomes
        assert not o.ok and f"exited on {TO} before it was ready (vllm@{to}.service is failed)" in o.error, o
        assert "old copy kept" in o.error and time.monotonic() - t0 < 20  # not the 60 s wait
        assert r.placement["llm"] == HOME and ctl.active() == {f"vllm@{home}.service"}

    asyncio.run(go())


def _restart_setup(tmp: Path) -> tuple[EmuHost, FakeSystemctl, TenantActuation, Any]:
    """A restart (systemd) launcher for vllm.service, which waits 60 s for readiness, and a
    readiness probe that says ready while the fake systemd has the unit active."""
    h = emu_host(tmp / "emu", ["A100-SXM4-40GB"], {0: LAYOUT})
    ctl = FakeSystemctl(tmp)
    launcher = SystemdLauncher("vllm.service", dropin_root=str(tmp / "units"), systemctl=str(ctl.bin), timeout=5.0)

    async def ready(tenant: str) -> bool:
        return bool(ctl.load()["units"].get("vllm.service") == "active")

    return h, ctl, TenantActuation("llm", None, HOME, launcher, readiness_timeout_s=60.0), ready


def test_restart_move_whose_tenant_exits_is_moved_back_at_once(tmp_path: Path) -> None:
    """A restart move onto a slice the tenant cannot start on (its process exits: the unit is
    "failed"): moved back as soon as systemd says so, not after readiness_timeout_s of outage."""
    h, ctl, t, ready = _restart_setup(tmp_path)

    async def go() -> None:
        r = _rec(tmp_path, h, t, readiness=ready)
        r.placement["llm"] = HOME
        ctl.set(units={"vllm.service": "active"}, crash_once=["vllm.service"])
        t0 = time.monotonic()
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": TO}))
        await r.wait_idle(90)
        (o,) = r.status().outcomes
        assert not o.ok and "exited on" in o.error and "vllm.service is failed" in o.error, o
        assert o.error.endswith("; moved back") and r.placement["llm"] == HOME
        assert time.monotonic() - t0 < 20 and o.outage_s is not None and o.outage_s < 20
        assert [c for c in ctl.load()["calls"] if c[0] == "restart"] == [["restart", "vllm.service"]] * 2

    asyncio.run(go())


def test_a_tenant_that_exits_on_both_instances_is_placed_nowhere_and_relaunched(tmp_path: Path) -> None:
    """The new copy exits and so does the move back: the tenant runs nowhere, so its place is
    unknown, and a later reconcile (after the failure's backoff) launches it again rather than
    taking it for served where it was."""
    h, ctl, t, ready = _restart_setup(tmp_path)

    async def go() -> None:
        r = _rec(tmp_path, h, t, readiness=ready)
        r.placement["llm"] = HOME
        ctl.set(units={"vllm.service": "active"}, crash_once=["vllm.service", "vllm.service"])
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": TO}))
        await r.wait_idle(90)
        (o,) = r.status().outcomes
        assert not o.ok and "; moved back, not running (" in o.error and r.placement["llm"] is None, o

    asyncio.run(go())


def test_warm_old_copy_that_will_not_stop_is_retried(tmp_path: Path) -> None:
    h, ctl, launcher, t = _setup(tmp_path)

    async def go() -> None:
        r = _rec(tmp_path, h, t)
        home, to = await _start_home(r, ctl, launcher)
        ctl.set(fail_stop=[f"vllm@{home}.service"])
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": TO}))
        await r.wait_idle(30)
        assert r.status().outcomes[0].ok and r.placement["llm"] == TO  # the new copy serves
        assert len(ctl.active()) == 2 and _journal(tmp_path)[-1] == ("switched", str(TO))
        ctl.set(fail_stop=[])
        rep = await r.reconcile(DesiredState(t=time.time(), placements={"llm": TO}))
        assert rep.started == ["tenant:llm"]
        await r.wait_idle(30)
        assert ctl.active() == {f"vllm@{to}.service"} and _journal(tmp_path)[-1] == ("done", str(TO))
        assert r.status().outcomes == ()  # a retry is bookkeeping, not a new operation

    asyncio.run(go())


@pytest.mark.parametrize("phase", ["intent", "switched"])
def test_warm_crash_recovery_leaves_exactly_one_copy(tmp_path: Path, phase: str) -> None:
    h, ctl, launcher, t = _setup(tmp_path)

    async def go() -> None:
        r = _rec(tmp_path, h, t)
        home, to = await _start_home(r, ctl, launcher)
        rec = {"handover": "warm", "tenant": "llm", "frm": str(HOME), "to": str(TO), "new": to, "old": home}
        r.journal.append("move", phase="intent", **rec)
        if phase == "switched":
            r.journal.append("move", phase="switched", **rec)
        ctl.set(units={f"vllm@{home}.service": "active", f"vllm@{to}.service": "active"})  # both up at the crash
        r.journal.close()
        r2 = _rec(tmp_path, h, t)
        summary = await r2.recover()
        keep, ref = (home, HOME) if phase == "intent" else (to, TO)
        assert ctl.active() == {f"vllm@{keep}.service"} and r2.placement["llm"] == ref, summary
        assert summary["moves"] == [f"llm: kept the {'old' if phase == 'intent' else 'new'} copy"]
        # The journal is closed: a second recovery does nothing more.
        r2.journal.close()
        r3 = _rec(tmp_path, h, t)
        assert (await r3.recover())["moves"] == [] and r3.placement["llm"] == ref

    asyncio.run(go())


def test_warm_command_launcher_start_ready_stop(tmp_path: Path) -> None:
    h = emu_host(tmp_path / "emu", ["A100-SXM4-40GB"], {0: LAYOUT})
    log = tmp_path / "calls.log"
    script = tmp_path / "tool"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "never = 'never' in open(sys.argv[0] + '.mode').read()\n"
        "sys.exit(1 if sys.argv[1] == 'ready' and never else 0)\n"
    )
    script.chmod(0o755)
    mode = Path(str(script) + ".mode")
    mode.write_text("ok")
    launcher = CommandLauncher([str(script), "start", "{tenant}", "{instance}", "{uuid}"], timeout=5.0,
                               handover="warm", stop_argv=[str(script), "stop", "{tenant}", "{uuid}"],
                               ready_argv=[str(script), "ready", "{uuid}"])  # fmt: skip
    t = TenantActuation("llm", None, HOME, launcher, readiness_timeout_s=1.0)

    async def go() -> None:
        r = _rec(tmp_path, h, t)
        home, to = await r.mig_uuid(HOME), await r.mig_uuid(TO)
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": TO}))
        await r.wait_idle(30)
        assert r.status().outcomes[0].ok
        lines = log.read_text().splitlines()
        assert lines[0] == f"start llm {TO} {to}" and lines[1] == f"ready {to}" and lines[-1] == f"stop llm {home}"
        # The next move never gets ready: the new copy is stopped, the one on TO kept.
        log.write_text("")
        mode.write_text("never")
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": HOME}))
        await r.wait_idle(30)
        (o,) = r.status().outcomes
        assert not o.ok and "not ready" in o.error and r.placement["llm"] == TO
        lines = log.read_text().splitlines()
        assert lines[0] == f"start llm {HOME} {home}" and lines[-1] == f"stop llm {home}"
        assert f"stop llm {to}" not in lines

    asyncio.run(go())


def test_warm_hostile_names_refused(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="template"):
        SystemdLauncher("vllm.service", handover="warm")
    for bad in ("vllm@.service; reboot", "vl lm@.service", "../x@.service", "vllm@x.service", "@.service"):
        with pytest.raises(LaunchError):
            SystemdLauncher(bad, handover="warm")
    with pytest.raises(LaunchError, match="handover"):
        SystemdLauncher("vllm.service", handover="hot")
    with pytest.raises(LaunchError, match="stop command"):
        CommandLauncher(["/bin/true"], handover="warm")
    ok = SystemdLauncher("vllm@.service", handover="warm")
    assert ok.instance_unit("MIG-GPU-5c89/1/0") == "vllm@MIG-GPU-5c89-1-0.service"
    for bad in ("MIG-abc; reboot", "MIG-a\nb", "GPU-123", "../x", "MIG-" + "a" * 200, "MIG-a b"):
        with pytest.raises(LaunchError):
            ok.instance_unit(bad)
    # No shell: metacharacters in the stop template stay literal arguments.
    out = tmp_path / "args"
    cl = CommandLauncher(["/bin/true"], handover="warm", stop_argv=[
        sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write('|'.join(sys.argv[2:]))",
        str(out), "$(id)", "{uuid}", "; rm -rf /", "{instance}"])  # fmt: skip
    asyncio.run(cl.stop_copy("t", TO, "MIG-1234-abcd"))
    assert out.read_text() == f"$(id)|MIG-1234-abcd|; rm -rf /|{TO}"
    with pytest.raises(LaunchError):
        asyncio.run(cl.stop_copy("t", TO, "MIG-1; reboot"))


BASE = """
[host]
mode = "dry-run"
[[tenants]]
name = "llm"
role = "bulk"
instance = "gpu0/3g.20gb@4"
[tenants.launcher]
"""


@pytest.mark.parametrize(
    ("launcher", "msg"),
    [
        ('kind = "systemd"\nunit = "vllm.service"\nhandover = "warm"', "template NAME@.service"),
        ('kind = "command"\ncommand = ["/x"]\nhandover = "warm"', "needs stop_command"),
        ('kind = "command"\ncommand = ["/x"]\nstop_command = ["/y"]', "stop_command is for"),
        ('kind = "systemd"\nunit = "v@.service"\nready_command = ["/r"]', "ready_command is for"),
        ('kind = "systemd"\nunit = "v@.service"\nhandover = "cold"', "handover"),
        ('kind = "command"\ncommand = ["/x"]\nhandover = "warm"\nstop_command = []', "stop_command"),
    ],
)
def test_warm_config_errors_name_the_key(launcher: str, msg: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + launcher, "t.toml")
    assert "tenants[0](llm).launcher" in str(e.value) and msg in str(e.value), str(e.value)


def test_warm_config_builds_warm_launchers(tmp_path: Path) -> None:
    cfg = parse_config(BASE + 'kind = "systemd"\nunit = "vllm@.service"\nhandover = "warm"\n'
                       'ready_command = ["/usr/bin/curl", "-sf", "http://127.0.0.1/{uuid}"]\n', "t.toml")  # fmt: skip
    r = reconciler_from_config(cfg, journal_path=tmp_path / "j.jsonl")
    lau = r.tenants["llm"].launcher
    assert isinstance(lau, SystemdLauncher) and lau.handover == "warm" and lau.ready_command is not None
    cfg2 = parse_config(BASE + 'kind = "command"\ncommand = ["/a", "{uuid}"]\n', "t.toml")
    lau2 = reconciler_from_config(cfg2, journal_path=tmp_path / "j2.jsonl").tenants["llm"].launcher
    assert isinstance(lau2, CommandLauncher) and lau2.handover == "restart"
