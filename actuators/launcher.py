"""Run a tenant on a given MIG instance. No shell; every call has a timeout.

Two hand-over modes per launcher:
- "restart" (break-before-make): a systemd drop-in that sets CUDA_VISIBLE_DEVICES then
  `systemctl restart UNIT`, or an argv template;
- "warm" (make-before-break): a second copy is started on the target instance while the old one
  serves (systemd: the template instance `NAME@<MIG-uuid>.service` with its own drop-in; command:
  a start and a stop template); the reconciler waits for the new copy's readiness, then stops the
  old copy, or stops the new one when it never became ready. Stops must be idempotent.

The systemd launcher writes runtime drop-ins under DROPIN_ROOT (/run/systemd/system, where
`systemctl edit --runtime` puts them): the shipped unit's ProtectSystem=strict keeps /etc read-only,
and a move is runtime state anyway. They vanish at reboot; recovery notices (has_dropins) and lets
the next reconcile relaunch the tenant, which writes them again (docs/actuators.md).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from actuators.proc import ToolError, run
from fsm.observation import InstanceRef

_UUID = re.compile(r"^MIG-[0-9A-Za-z][0-9A-Za-z/-]{0,100}$")
# The unit names tailguard starts and stops: systemd's characters (systemd.unit(5)), bounded so
# that a warm copy's NAME@<MIG uuid>.service stays within systemd's 255 (config.py checks with these)
UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@\\-]{1,200}\.service$")
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9:_.\\-]{1,150}@\.service$")
DROPIN_NAME = "50-tailguard-mig.conf"
DROPIN_ROOT = "/run/systemd/system"  # runtime units and drop-ins (systemd.unit(5)); in the unit's ReadWritePaths
HANDOVERS = ("restart", "warm")
READY_TIMEOUT_S = 10.0  # one per-copy readiness probe (the reconciler's deadline bounds the wait)


class LaunchError(Exception):
    pass


def check_uuid(uuid: str) -> str:
    if not _UUID.match(uuid):
        raise LaunchError(f"refusing MIG device UUID {uuid!r}: not MIG-<hex/dashes>")
    return uuid


def _handover(mode: str) -> str:
    if mode not in HANDOVERS:
        raise LaunchError(f"handover must be one of {', '.join(HANDOVERS)}, got {mode!r}")
    return mode


class Launcher(Protocol):
    handover: str  # "restart" | "warm"

    async def launch(self, tenant: str, ref: InstanceRef, uuid: str) -> None:
        """restart: (re)start the tenant on `ref`, in place of wherever it ran."""
        ...

    async def start_copy(self, tenant: str, ref: InstanceRef, uuid: str) -> None:
        """warm: start a copy on `ref` beside the running one (returns once started, not ready)."""
        ...

    async def stop_copy(self, tenant: str, ref: InstanceRef | None, uuid: str) -> None:
        """warm: stop the copy on the MIG device `uuid`; stopping a stopped copy succeeds."""
        ...

    async def copy_ready(self, tenant: str, ref: InstanceRef, uuid: str) -> bool | None:
        """warm: is that copy ready? None: this launcher cannot tell one copy from the other."""
        ...

    async def other_copies(self, tenant: str, keep_uuid: str) -> list[str] | None:
        """warm: MIG uuids of the running copies but `keep_uuid`; None: cannot list them."""
        ...

    async def exited(self, tenant: str, ref: InstanceRef, uuid: str) -> str:
        """Has the copy just started (restart: the tenant; warm: the copy on `uuid`) exited before
        it was ready? Why, or "" (it runs, or this launcher cannot tell)."""
        ...


async def _argv_ok(argv: list[str], timeout: float, what: str) -> None:
    try:
        r = await run(argv, timeout)
    except ToolError as e:
        raise LaunchError(str(e)) from None
    if r.rc != 0:
        raise LaunchError(f"{what}: {r.status}: {r.text.strip()[:200]}")


def _subst(template: Sequence[str], tenant: str, ref: InstanceRef | None, uuid: str) -> list[str]:
    subst = {"{uuid}": uuid, "{instance}": str(ref) if ref is not None else "", "{tenant}": tenant}
    argv = []
    for a in template:
        for k, v in subst.items():
            a = a.replace(k, v)
        argv.append(a)
    return argv


class SystemdLauncher:
    def __init__(self, unit: str, dropin_root: str = DROPIN_ROOT, systemctl: str = "systemctl",
                 timeout: float = 90.0, handover: str = "restart",
                 ready_command: Sequence[str] | None = None) -> None:  # fmt: skip
        self.handover = _handover(handover)
        if self.handover == "warm":
            if not TEMPLATE_NAME.match(unit):
                raise LaunchError(f"warm hand-over needs a template unit NAME@.service, got {unit!r}")
        elif not UNIT_NAME.match(unit):
            raise LaunchError(f"bad systemd unit name {unit!r}")
        self.unit = unit
        self.dropin_root = Path(dropin_root)
        self.systemctl = systemctl
        self.timeout = timeout
        self.ready_command = list(ready_command) if ready_command else None

    def instance_unit(self, uuid: str) -> str:
        """warm: the template's instance for a MIG device: NAME@<uuid>.service ('/' of legacy
        MIG-GPU-<uuid>/gi/ci names becomes '-', as systemd-escape does for paths)."""
        check_uuid(uuid)
        name = self.unit.replace("@.service", f"@{uuid.replace('/', '-')}.service")
        if not UNIT_NAME.match(name):
            raise LaunchError(f"bad systemd unit name {name!r}")
        return name

    def dropin_path(self, unit: str | None = None) -> Path:
        return self.dropin_root / f"{unit or self.unit}.d" / DROPIN_NAME

    def has_dropins(self) -> bool:
        """Is any drop-in of this launcher in place (restart: the unit's; warm: any instance's)?
        False after a reboot: runtime drop-ins do not survive it."""
        if self.handover != "warm":
            return self.dropin_path().exists()
        prefix = self.unit.removesuffix("@.service") + "@"
        try:
            return any(d.name.startswith(prefix) and (d / DROPIN_NAME).exists() for d in self.dropin_root.iterdir())
        except OSError:
            return False

    def _write_dropin(self, unit: str, tenant: str, ref: InstanceRef, uuid: str) -> None:
        p = self.dropin_path(unit)
        text = (
            f"# Written by tailguard: tenant {tenant} runs on MIG instance {ref}.\n"
            f"[Service]\nEnvironment=CUDA_VISIBLE_DEVICES={uuid}\n"
        )
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, p)
        except OSError as e:
            raise LaunchError(f"{p}: cannot write the drop-in: {e.strerror}") from None

    async def _ctl(self, *args: str) -> None:
        await _argv_ok([self.systemctl, *args], self.timeout, f"systemctl {' '.join(args)}")

    async def launch(self, tenant: str, ref: InstanceRef, uuid: str) -> None:
        check_uuid(uuid)
        self._write_dropin(self.unit, tenant, ref, uuid)
        await self._ctl("daemon-reload")
        await self._ctl("restart", self.unit)

    async def start_copy(self, tenant: str, ref: InstanceRef, uuid: str) -> None:
        unit = self.instance_unit(uuid)
        self._write_dropin(unit, tenant, ref, uuid)
        await self._ctl("daemon-reload")
        # --no-block: a Type=notify unit's start would wait for READY=1; the reconciler's
        # readiness deadline bounds that wait instead of this call's timeout.
        await self._ctl("start", "--no-block", unit)

    async def stop_copy(self, tenant: str, ref: InstanceRef | None, uuid: str) -> None:
        unit = self.instance_unit(uuid)
        await self._ctl("stop", unit)  # stopping an inactive unit succeeds: idempotent
        with contextlib.suppress(OSError):
            self.dropin_path(unit).unlink()
            self.dropin_path(unit).parent.rmdir()

    async def copy_ready(self, tenant: str, ref: InstanceRef, uuid: str) -> bool | None:
        unit = self.instance_unit(uuid)
        try:
            r = await run([self.systemctl, "is-active", unit], min(self.timeout, READY_TIMEOUT_S))
        except ToolError:
            return False
        if r.stdout.strip() != "active":  # activating: a Type=notify unit has not sent READY=1
            return False
        return await _probe(self.ready_command, tenant, ref, uuid)

    async def exited(self, tenant: str, ref: InstanceRef, uuid: str) -> str:
        # `systemctl is-active` prints the unit's active state (systemctl(1)): "failed" (its
        # process exited with an error: out of memory on the slice, a bad argument) or "inactive"
        # (it exited cleanly, or was stopped) will not turn ready; "activating" may. A unit with
        # Restart= set goes back to "activating" and is waited for.
        unit = self.instance_unit(uuid) if self.handover == "warm" else self.unit
        try:
            r = await run([self.systemctl, "is-active", unit], min(self.timeout, READY_TIMEOUT_S))
        except ToolError:
            return ""
        state = r.stdout.strip()
        return f"{unit} is {state}" if state in ("failed", "inactive") else ""

    async def other_copies(self, tenant: str, keep_uuid: str) -> list[str] | None:
        keep = self.instance_unit(keep_uuid)
        pattern = self.unit.replace("@.service", "@*.service")
        try:
            r = await run([self.systemctl, "list-units", "--plain", "--no-legend", "--no-pager",
                           "--state=active,activating,reloading", pattern], self.timeout)  # fmt: skip
        except ToolError:
            return None
        if r.rc != 0:
            return None
        out = []
        for ln in r.stdout.splitlines():
            unit = ln.split()[0] if ln.split() else ""
            if unit == keep or not unit.startswith(pattern[: -len("*.service")]) or not UNIT_NAME.match(unit):
                continue
            inst = unit[len(pattern) - len("*.service") : -len(".service")]
            if _UUID.match(inst):
                out.append(inst)  # legacy names lost their '/': stop_copy maps them back the same way
        return out

    def current_uuid(self) -> str | None:
        try:
            for ln in self.dropin_path().read_text().splitlines():
                if ln.startswith("Environment=CUDA_VISIBLE_DEVICES="):
                    return ln.split("=", 2)[2]
        except OSError:
            return None
        return None


class CommandLauncher:
    """argv templates; {uuid}, {instance} and {tenant} are replaced inside each argument.
    restart: `argv` relaunches the tenant. warm: `argv` starts a copy, `stop_argv` stops one,
    `ready_argv` (optional) exits 0 once that copy serves."""

    def __init__(self, argv: Sequence[str], timeout: float = 90.0, handover: str = "restart",
                 stop_argv: Sequence[str] | None = None, ready_argv: Sequence[str] | None = None) -> None:  # fmt: skip
        if not argv:
            raise LaunchError("empty launcher command")
        self.handover = _handover(handover)
        if self.handover == "warm" and not stop_argv:
            raise LaunchError("warm hand-over needs a stop command")
        self.argv = list(argv)
        self.stop_argv = list(stop_argv) if stop_argv else None
        self.ready_argv = list(ready_argv) if ready_argv else None
        self.timeout = timeout

    async def launch(self, tenant: str, ref: InstanceRef, uuid: str) -> None:
        check_uuid(uuid)
        argv = _subst(self.argv, tenant, ref, uuid)
        await _argv_ok(argv, self.timeout, f"launcher {argv[0]}")

    async def start_copy(self, tenant: str, ref: InstanceRef, uuid: str) -> None:
        await self.launch(tenant, ref, uuid)

    async def stop_copy(self, tenant: str, ref: InstanceRef | None, uuid: str) -> None:
        check_uuid(uuid)
        if self.stop_argv is None:
            raise LaunchError("no stop command configured")
        argv = _subst(self.stop_argv, tenant, ref, uuid)
        await _argv_ok(argv, self.timeout, f"stop command {argv[0]}")

    async def copy_ready(self, tenant: str, ref: InstanceRef, uuid: str) -> bool | None:
        if self.ready_argv is None:
            return None
        return await _probe(self.ready_argv, tenant, ref, uuid)

    async def other_copies(self, tenant: str, keep_uuid: str) -> list[str] | None:
        return None

    async def exited(self, tenant: str, ref: InstanceRef, uuid: str) -> str:
        return ""  # a command starts the tenant and returns: what it started is not ours to watch


async def _probe(template: Sequence[str] | None, tenant: str, ref: InstanceRef, uuid: str) -> bool:
    """A readiness command for one copy: exit 0 = ready (no command: ready)."""
    if not template:
        return True
    check_uuid(uuid)
    try:
        r = await run(_subst(template, tenant, ref, uuid), READY_TIMEOUT_S)
    except ToolError:
        return False
    return r.rc == 0
