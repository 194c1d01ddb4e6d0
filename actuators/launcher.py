"""Restart a tenant on a given MIG instance: a systemd drop-in that sets CUDA_VISIBLE_DEVICES
then `systemctl restart`, or an argv template. No shell; every call has a timeout."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from actuators.proc import ToolError, run
from fsm.observation import InstanceRef

_UUID = re.compile(r"^MIG-[0-9A-Za-z][0-9A-Za-z/-]{0,100}$")
_UNIT = re.compile(r"^[A-Za-z0-9:_.@\\-]{1,200}\.service$")
DROPIN_NAME = "50-tailguard-mig.conf"


class LaunchError(Exception):
    pass


def check_uuid(uuid: str) -> str:
    if not _UUID.match(uuid):
        raise LaunchError(f"refusing MIG device UUID {uuid!r}: not MIG-<hex/dashes>")
    return uuid


class Launcher(Protocol):
    async def launch(self, tenant: str, ref: InstanceRef, uuid: str) -> None: ...


class SystemdLauncher:
    def __init__(self, unit: str, dropin_root: str = "/etc/systemd/system", systemctl: str = "systemctl",
                 timeout: float = 90.0) -> None:  # fmt: skip
        if not _UNIT.match(unit):
            raise LaunchError(f"bad systemd unit name {unit!r}")
        self.unit = unit
        self.dropin_root = Path(dropin_root)
        self.systemctl = systemctl
        self.timeout = timeout

    def dropin_path(self) -> Path:
        return self.dropin_root / f"{self.unit}.d" / DROPIN_NAME

    async def launch(self, tenant: str, ref: InstanceRef, uuid: str) -> None:
        check_uuid(uuid)
        p = self.dropin_path()
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
        for args in (["daemon-reload"], ["restart", self.unit]):
            try:
                r = await run([self.systemctl, *args], self.timeout)
            except ToolError as e:
                raise LaunchError(str(e)) from None
            if r.rc != 0:
                raise LaunchError(f"systemctl {' '.join(args)}: exit {r.rc}: {r.text.strip()[:200]}")

    def current_uuid(self) -> str | None:
        try:
            for ln in self.dropin_path().read_text().splitlines():
                if ln.startswith("Environment=CUDA_VISIBLE_DEVICES="):
                    return ln.split("=", 2)[2]
        except OSError:
            return None
        return None


class CommandLauncher:
    """argv template; {uuid}, {instance} and {tenant} are replaced inside each argument."""

    def __init__(self, argv: Sequence[str], timeout: float = 90.0) -> None:
        if not argv:
            raise LaunchError("empty launcher command")
        self.argv = list(argv)
        self.timeout = timeout

    async def launch(self, tenant: str, ref: InstanceRef, uuid: str) -> None:
        check_uuid(uuid)
        subst = {"{uuid}": uuid, "{instance}": str(ref), "{tenant}": tenant}
        argv = []
        for a in self.argv:
            for k, v in subst.items():
                a = a.replace(k, v)
            argv.append(a)
        try:
            r = await run(argv, self.timeout)
        except ToolError as e:
            raise LaunchError(str(e)) from None
        if r.rc != 0:
            raise LaunchError(f"launcher {argv[0]}: exit {r.rc}: {r.text.strip()[:200]}")
