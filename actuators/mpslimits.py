"""The MPS lever: active-thread limits on the MPS server that serves a tenant's processes.

A limit is owned (with its expiry) from its journaled intent on; one past its expiry or no longer
wanted is lifted (100%). Every call goes through `nvidia-cuda-mps-control` (actuators/mps.py).
"""

from __future__ import annotations

from typing import Any

from actuators.cgroup import CgroupError
from actuators.hands import Hands, ReconcileReport
from actuators.journal import JournalError
from actuators.mps import MpsControl, MpsError
from actuators.paths import PathError, confine
from fsm.desired import DesiredState, MpsLimit
from schema.files import read_small_text
from schema.jsontext import ascii_digits, fields, finite_float, shown, text_lines


class MpsLimits:
    def __init__(self, h: Hands, ctl: MpsControl) -> None:
        self.h = h
        self.ctl = ctl
        self.owned: dict[str, tuple[int, float]] = {}  # tenant -> (server pid, expires_at)

    def snapshot(self) -> dict[str, list[float]]:
        return {t: [pid, exp] for t, (pid, exp) in sorted(self.owned.items())}

    async def server(self, tenant: str) -> int:
        """The MPS server whose clients include a process of the tenant's cgroup."""
        h = self.h
        cg = h.tenant_cgroup(tenant, None)
        procs_file = confine(h.cg.root, cg) / "cgroup.procs"
        try:
            # a regular file of bounded size: read_text() hung on a FIFO, raised a bare
            # UnicodeDecodeError, and int() took "-5" and "١" or raised without naming the file
            text = read_small_text(procs_file, errors="replace")
        except OSError as e:
            raise MpsError(f"tenant {tenant}: cannot read {procs_file}: {e.strerror}") from None
        pids: set[int] = set()
        for n, line in enumerate(text_lines(text), 1):
            for x in fields(line):
                if not ascii_digits(x) or len(x) > 10:
                    raise MpsError(f"tenant {tenant}: {procs_file}: line {n}: not a process id: {shown(x)}")
                pids.add(int(x))
        for server in await self.ctl.servers():
            if pids & set(await self.ctl.clients(server)):
                return server
        raise MpsError(f"tenant {tenant}: no MPS server serves a process of cgroup {cg!r}")

    async def reconcile(self, desired: DesiredState, now: float, rep: ReconcileReport) -> None:
        h = self.h
        wanted: dict[str, MpsLimit] = {}
        for m in desired.mps:
            # An infinite or NaN expiry never passes, and recovery skips such a journal record: the
            # limit would outlive a crash. (finite_float: None for those and for a non-number.)
            if finite_float(m.expires_at) is None:
                rep.errors.append(
                    f"MPS limit of {m.tenant}: expires_at must be a finite time, got {shown(m.expires_at)}"
                )
            elif m.expires_at > now:
                wanted[m.tenant] = m
        for tenant in sorted(set(self.owned) - rep.kept(wanted)):  # a dry run lifts all
            pid, _ = self.owned[tenant]
            if not rep.lift(f"lift MPS limit of {tenant} (server {pid})"):
                continue
            h.jot("mps", phase="intent", action="lift", tenant=tenant, pid=pid)
            try:
                await self.ctl.set_percentage(pid, 100)
            except MpsError as e:
                rep.errors.append(str(e))
                h.outcome(f"mps:{tenant}", False, str(e))
                continue
            self.owned.pop(tenant)
            h.jot("mps", phase="done", action="lift", tenant=tenant, pid=pid)
            h.outcome(f"mps:{tenant}", True)
        for tenant, m in sorted(wanted.items()):
            try:
                pid = await self.server(tenant)
                cur = await self.ctl.get_percentage(pid)
            except (MpsError, ValueError, PathError, CgroupError) as e:
                rep.errors.append(str(e))
                h.outcome(f"mps:{tenant}", False, str(e))
                continue
            if abs(cur - m.percent) < 0.5:
                if not rep.dry_run:
                    self.owned[tenant] = (pid, m.expires_at)
                continue
            rep.ops.append(f"set MPS limit {m.percent}% on {tenant} (server {pid})")
            if rep.dry_run:
                continue
            try:
                h.journal.append("mps", phase="intent", action="set", tenant=tenant, pid=pid,
                                 percent=m.percent, expires_at=m.expires_at)  # fmt: skip
            except JournalError as e:
                rep.errors.append(f"not applied: {e}")
                h.outcome(f"mps:{tenant}", False, f"not applied: {e}")
                continue
            self.owned[tenant] = (pid, m.expires_at)
            try:
                await self.ctl.set_percentage(pid, m.percent)
            except MpsError as e:
                rep.errors.append(str(e))
                h.outcome(f"mps:{tenant}", False, str(e))
                continue
            h.jot("mps", phase="done", action="set", tenant=tenant, pid=pid, percent=m.percent,
                  expires_at=m.expires_at)  # fmt: skip
            h.outcome(f"mps:{tenant}", True)

    async def recover(self, now: float, summary: dict[str, Any]) -> None:
        """After the journal was read: lift the limits past their expiry."""
        for tenant, (pid, exp) in sorted(self.owned.items()):
            if exp <= now and not self.h.dry_run:
                try:
                    await self.ctl.set_percentage(pid, 100)
                    self.owned.pop(tenant)
                except MpsError as e:
                    summary["errors"].append(str(e))
