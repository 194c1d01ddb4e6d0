"""A real daemon on real hands for the fault tests: `tailguard`'s Daemon driving a LinuxHost whose
Reconciler writes real v1 blkio caps in a scratch group, with its journal in a state dir the test
breaks (a filled tmpfs, a deleted or replaced directory, a read-only bind mount). Only the decision
is scripted (`Rig.want`: tenant -> (write bps, expiry)), so each test says which caps it wants
when; metrics and /status are read over loopback HTTP, sd_notify through a real datagram socket.

`python -m fakes.hands_rig CHILD.json` runs one reconcile and a few daemon ticks in a child (the
permission tests start it with setpriv as an unprivileged user without capabilities)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actuators.blockdev import resolve
from actuators.cgroup import Caps, CgroupIO
from actuators.journal import Journal, read_file
from actuators.reconciler import Reconciler, TenantActuation
from actuators.salvage import owned_caps
from controller.config import Config, parse_config
from controller.daemon import Daemon, DaemonOptions
from controller.exporters.prometheus import DaemonCollector, MetricsServer, make_registry
from controller.linux_host import LinuxHost
from controller.sdnotify import Notifier
from controller.signals.base import Unavailable
from controller.signals.collect import SignalCollector
from controller.status import status_json
from fsm.decide import Decision
from fsm.desired import DesiredState, Throttle
from fsm.observation import Observation
from fsm.spec import HostSpec
from fsm.state import ControllerState
from fsm.topology import empty_topology

TENANTS = ("bulk-a", "bulk-b")
CG_ROOT = "/sys/fs/cgroup"
TICK_S = 0.05
SLACK_S = 1.0  # an expired cap is lifted at the next tick: allow that much past its expiry


def need_root_blkio() -> None:
    if os.geteuid() != 0 or not Path(CG_ROOT, "blkio", "blkio.throttle.write_bps_device").exists():
        if os.environ.get("CI"):
            pytest.fail("the fault tests need root and the cgroup v1 blkio hierarchy")
        pytest.skip("needs root and the cgroup v1 blkio hierarchy")


@contextlib.contextmanager
def mount(target: Path, *argv: str) -> Iterator[None]:
    subprocess.run(["mount", *argv, str(target)], check=True, capture_output=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True, timeout=30)


@contextlib.contextmanager
def read_only(d: Path) -> Iterator[None]:
    """A read-only bind mount of `d` over itself: writes below it fail with EROFS."""
    with mount(d, "--bind", str(d)):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(d)], check=True, capture_output=True, timeout=30)
        yield


def fill(d: Path) -> Path:
    """Fill the filesystem of `d` with a file until the kernel says ENOSPC (again: it appends);
    returns the file."""
    f = d / "filler"
    fd = os.open(f, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.write(fd, b"\0" * 4096)
            except OSError:
                try:
                    while True:
                        os.write(fd, b"\0")
                except OSError:
                    break
    finally:
        os.close(fd)
    return f


class Probe:
    """A signal source the test switches off and on (`down` = its cause)."""

    name = "probe"
    timeout_s = 1.0

    def __init__(self) -> None:
        self.down = ""

    async def sample(self, now: float) -> object:
        return Unavailable(self.down) if self.down else {"ok": True}


def toml(state: Path, group: str) -> str:
    tenants = "".join(f'\n[[tenants]]\nname = "{t}"\nrole = "bulk"\ncgroup = "{group}/{t}"\n' for t in TENANTS)
    return f"""
[host]
name = "rig"
mode = "enforce"
state_dir = "{state}"
cgroup_root = "{CG_ROOT}"
cgroup_version = "v1"
[[tenants]]
name = "llm"
role = "sensitive"
slo_ms = 50
[tenants.latency]
kind = "jsonl"
path = "/nonexistent/latency.jsonl"
{tenants}"""


class Notes:
    """sd_notify messages on a real AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.seen: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.seen.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return self.seen

    def close(self) -> None:
        self.sock.close()


class Rig:
    def __init__(self, tmp: Path, group: str, state: Path | None = None) -> None:
        self.tmp = tmp
        self.group = group
        self.state = state or tmp / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.status_dir = tmp / "status"
        self.device = str(tmp)  # a path on a real disk: its whole disk's MAJ:MIN
        self.dev = resolve(self.device, "/sys")
        for t in TENANTS:
            Path(CG_ROOT, "blkio", group, t).mkdir(parents=True, exist_ok=True)
        self.cfg: Config = parse_config(toml(self.state, group), "rig.toml")
        self.want: dict[str, tuple[float, float]] = {}  # tenant -> (write bytes/s, expires_at)
        self.probe = Probe()
        self.cg = CgroupIO(CG_ROOT, "v1")
        self.server: MetricsServer | None = None
        self.notes: Notes | None = None

    @property
    def journal_path(self) -> Path:
        return self.state / "journal.jsonl"

    def reconciler(self) -> Reconciler:
        tenants = {t: TenantActuation(t, f"{self.group}/{t}") for t in TENANTS}
        return Reconciler(cgroup_root=CG_ROOT, cgroup_version="v1", tenants=tenants, journal_path=self.journal_path,
                          nvidia_smi="/nonexistent/nvidia-smi", tool_timeout=5.0)  # fmt: skip

    def host(self, reconciler: Reconciler | None = None, lift_on_exit: bool = True) -> LinuxHost:
        topo = empty_topology()
        collector = SignalCollector(self.cfg, topo, samplers=[self.probe])
        return LinuxHost(self.cfg, topo, collector=collector, reconciler=reconciler or self.reconciler(),
                         lift_throttles_on_exit=lift_on_exit)  # fmt: skip

    def desired(self, now: float) -> DesiredState:
        return DesiredState(t=now, throttles=tuple(
            Throttle(t, self.device, None, None, w, exp) for t, (w, exp) in sorted(self.want.items())))  # fmt: skip

    def decide(self, state: ControllerState, obs: Observation, spec: HostSpec) -> Decision:
        return Decision(state, self.desired(time.time()), ())

    def daemon(self, host: LinuxHost, notify: bool = True) -> Daemon:
        notifier = None
        if notify:
            self.notes = Notes(self.tmp / "notify.sock")
            notifier = Notifier(address=str(self.notes.path))
        d = Daemon(host, DaemonOptions(host_name="rig", period_s=TICK_S, state_dir=str(self.status_dir),
                                       status_every_s=0.0), decide_fn=self.decide, notifier=notifier)  # fmt: skip
        self.server = MetricsServer(make_registry(DaemonCollector(lambda: d.snapshot)), "127.0.0.1", 0,
                                    status=lambda: status_json(d.snapshot))  # fmt: skip
        return d

    # ------------------------------------------------------------------ what an operator sees

    def http(self, path: str) -> str:
        assert self.server is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{self.server.port}{path}", timeout=5) as r:
            return str(r.read().decode())

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.http("/status")))

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of /metrics (None when absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for ln in self.http("/metrics").splitlines():
            if ln.startswith("#"):
                continue
            key, _, val = ln.rpartition(" ")
            base, _, lab = key.partition("{")
            got = ",".join(sorted(lab.rstrip("}").split(","))) if lab else ""
            if base == name and got == want:
                return float(val)
        return None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.notes is not None:
            self.notes.close()

    # ------------------------------------------------------------------ the host's truth

    def kernel_caps(self) -> dict[tuple[str, str], Caps]:
        out = {}
        for t in TENANTS:
            g = f"{self.group}/{t}"
            for dev, c in self.cg.read(g).items():
                if not c.empty:
                    out[(g, dev)] = c
        return out

    def cap_of(self, tenant: str) -> int | None:
        c = self.kernel_caps().get((f"{self.group}/{tenant}", self.dev))
        return c.wbps if c is not None else None

    def set_by_hand(self, tenant: str, wbps: int) -> None:
        self.cg.write(f"{self.group}/{tenant}", self.dev, Caps(None, wbps))

    def journal_lines_whole(self) -> None:
        """Every line of every journal file decodes: no record glued onto a torn one."""
        for f in Journal(self.journal_path).files():
            _recs, bad = read_file(f)
            assert not bad, f"undecodable journal lines: {bad}"

    def check_invariants(self, now: float | None = None) -> None:
        """No cap tailguard set without an owner in the journal, none past its expiry (plus a tick)."""
        now = time.time() if now is None else now
        owned, _ = owned_caps(Journal(self.journal_path).tail_from_snapshot())
        for key, c in self.kernel_caps().items():
            assert key in owned, f"cap {c} on {key} has no owner in the journal"
            assert owned[key][1] > now - SLACK_S, f"cap {c} on {key} is past its expiry {owned[key][1]:.2f} < {now}"


async def until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------- the permission child


def child(spec_path: str) -> None:
    """One reconcile toward a cap, then a few daemon ticks; prints what it saw as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    rig = Rig(Path(spec["tmp"]), spec["group"], Path(spec["state"]))
    rig.status_dir = Path(spec["status"])
    rig.want = {"bulk-a": (8e6, time.time() + 60)}
    r = rig.reconciler()
    host = rig.host(r)

    async def go() -> dict[str, Any]:
        rep = await r.reconcile(rig.desired(time.time()))
        d = Daemon(host, DaemonOptions(host_name="rig", period_s=TICK_S, state_dir=str(rig.status_dir), max_ticks=3,
                                       status_every_s=0.0), decide_fn=rig.decide)  # fmt: skip
        await d.run()
        return {"uid": os.getuid(), "errors": rep.errors, "applied": rep.applied, "status": status_json(d.snapshot)}

    print(json.dumps(asyncio.run(go())))


if __name__ == "__main__":
    child(sys.argv[1])
