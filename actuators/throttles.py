"""The I/O lever: bps caps on the tenants' cgroups (v2 io.max, v1 blkio.throttle.*).

Diff the desired caps against what the kernel shows, apply the difference (a cap is owned from its
journaled intent on, so recovery lifts it if tailguard dies right after), read each write back.
Only file writes: done inline on every reconcile, never behind a tool call of another lever.
"""

from __future__ import annotations

from typing import Any

from actuators.blockdev import DeviceError, resolve
from actuators.cgroup import MAX_BPS, Caps, CgroupError, CgroupGone
from actuators.hands import Hands, OwnedCap, ReconcileReport
from actuators.journal import JournalError
from actuators.paths import PathError, check_rel, confine
from fsm.desired import DesiredState
from schema.jsontext import finite_float, shown


def _cap(v: float | None, what: str) -> int | None:
    if v is None:
        return None
    # finite_float: None for a bool, NaN, an infinity and an int past a double's range. The bounds
    # compare the value itself (exact for an int: 2**64 - 2 is a cap, its float is not).
    if finite_float(v) is None or v < 1 or v > MAX_BPS:
        raise ValueError(f"{what} must be a rate of 1 to {MAX_BPS} bytes/s, got {shown(v)}")
    return v if isinstance(v, int) else round(v)


def _expiry(v: float) -> float:
    # A NaN or infinite expiry never passes, and recovery cannot read it back from the journal: the
    # cap would stay after a crash. An int past a double's range would not fit the journal's float.
    t = finite_float(v)
    if t is None:
        raise ValueError(f"expires_at must be a finite time, got {shown(v)}")
    return t


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def cap_fields(cg: str, dev: str, o: OwnedCap) -> dict[str, Any]:
    """A cap as the journal holds it (intent/done/renew records and the snapshot)."""
    return {"cgroup": cg, "dev": dev, "tenant": o.tenant, "rbps": o.caps.rbps, "wbps": o.caps.wbps,
            "expires_at": o.expires_at}  # fmt: skip


class Throttles:
    def __init__(self, h: Hands) -> None:
        self.h = h
        self.owned: dict[tuple[str, str], OwnedCap] = {}  # (cgroup, MAJ:MIN) -> the cap tailguard set

    def snapshot(self) -> list[dict[str, Any]]:
        return [cap_fields(cg, dev, o) for (cg, dev), o in sorted(self.owned.items())]

    def groups(self) -> set[str]:
        return {t.cgroup for t in self.h.tenants.values() if t.cgroup} | {cg for cg, _ in self.owned}

    def wanted(
        self, desired: DesiredState, now: float, rep: ReconcileReport
    ) -> tuple[dict[tuple[str, str], OwnedCap], set[str]]:
        """The caps the desired state asks for, by (group, device), and the tenants of those it
        asks for that are invalid (each an error in `rep`)."""
        h = self.h
        wanted: dict[tuple[str, str], OwnedCap] = {}
        invalid: set[str] = set()
        devs: dict[str, str] = {}  # device -> MAJ:MIN, resolved once per reconcile (50 caps: 1 device)
        for th in desired.throttles:
            try:
                expires_at = _expiry(th.expires_at)
                if expires_at <= now:
                    continue  # past its expiry: lifted even though someone still lists it
                # The normal form ('a//b/' is 'a/b'): two spellings of one group would be two caps
                # rewriting one io.max in turn, every tick.
                cg = str(check_rel(h.tenant_cgroup(th.tenant, th.cgroup)))
                confine(h.cg.root, cg)
                dev = devs.get(th.device) or devs.setdefault(th.device, resolve(th.device, h.sys_root))
                caps = Caps(_cap(th.read_bps, "read_bps"), _cap(th.write_bps, "write_bps"))
            except (ValueError, PathError, DeviceError, CgroupError) as e:
                # Not wanted, so a cap tailguard set on that group and device is lifted, not kept:
                # a fault fails open (no throttle, the safe direction), and the old cap is one
                # nothing valid asks for any more (tests/test_act_cgroup.py documents this).
                rep.errors.append(f"throttle {th.tenant}: {e}")
                h.outcome(f"throttle:{th.tenant}", False, str(e))
                invalid.add(th.tenant)
                continue
            if caps.empty:
                continue
            prev = wanted.get((cg, dev))
            if prev is not None:  # two caps on one group and device: the tighter one wins
                caps = Caps(_min(prev.caps.rbps, caps.rbps), _min(prev.caps.wbps, caps.wbps))
                th_exp = max(prev.expires_at, expires_at)
            else:
                th_exp = expires_at
            wanted[(cg, dev)] = OwnedCap(th.tenant, caps, th_exp)
        return wanted, invalid

    def reconcile(self, desired: DesiredState, now: float, rep: ReconcileReport) -> None:
        h = self.h
        try:
            cg_io = h.cg
        except CgroupError as e:
            if desired.throttles or self.owned:
                rep.errors.append(str(e))
            return
        wanted, invalid = self.wanted(desired, now, rep)
        actual: dict[str, dict[str, Caps] | None] = {}
        for cg in {k[0] for k in wanted} | {k[0] for k in self.owned}:
            try:
                actual[cg] = cg_io.read(cg)
            except CgroupGone:
                actual[cg] = None
            except (CgroupError, PathError) as e:
                rep.errors.append(str(e))
                actual[cg] = None
        # Lift what tailguard set and no longer wants (or that expired); in a dry run, all of it
        # (ReconcileReport.lift: not in `run --dry-run`). Lifting is the safe direction.
        for key in sorted(set(self.owned) - rep.kept(wanted)):
            cg, dev = key
            o = self.owned[key]
            if actual.get(cg) is None:
                if not rep.lift(f"forget cap on {cg} {dev} (group gone)"):
                    continue
                self.owned.pop(key)
                h.jot("throttle", phase="done", action="lift", cgroup=cg, dev=dev, tenant=o.tenant, note="group gone")
                continue
            if o.expires_at <= now:
                why = "expired"
            elif rep.dry_run:
                why = "dry run"
            else:
                why = "its desired cap is invalid" if o.tenant in invalid else "no longer wanted"
            if not rep.lift(f"lift cap {o.caps} on {cg} {dev} ({why})"):
                continue
            # Lifting is the safe direction: done even when the journal cannot be written.
            h.jot("throttle", phase="intent", action="lift", cgroup=cg, dev=dev, tenant=o.tenant)
            try:
                cg_io.lift(cg, dev)
            except CgroupGone:
                pass
            except (CgroupError, PathError) as e:
                rep.errors.append(str(e))
                h.outcome(f"throttle:{o.tenant}", False, str(e))
                continue
            self.owned.pop(key)
            h.jot("throttle", phase="done", action="lift", cgroup=cg, dev=dev, tenant=o.tenant)
            rep.applied.append(f"lifted {cg} {dev}")
            h.outcome(f"throttle:{o.tenant}", True)
        renewed: dict[tuple[str, str], OwnedCap] = {}
        for key, w in sorted(wanted.items()):
            cg, dev = key
            cur = actual.get(cg)
            if cur is None:
                msg = f"cgroup {cg!r} of tenant {w.tenant} does not exist"
                rep.errors.append(msg)
                h.outcome(f"throttle:{w.tenant}", False, msg)
                continue
            have = self.owned.get(key)
            if cur.get(dev, Caps()) == w.caps:
                changed = have is None or have.expires_at != w.expires_at or have.caps != w.caps
                if changed and not rep.dry_run:  # already in place: only the bookkeeping (expiry) changes
                    renewed[key] = w
                continue
            rep.ops.append(f"set cap {w.caps} on {cg} {dev} for {w.tenant} until {w.expires_at:.0f}")
            if rep.dry_run:
                continue
            fields = cap_fields(cg, dev, w)
            try:
                h.journal.append("throttle", phase="intent", action="set", **fields)
            except JournalError as e:
                msg = f"not applied: {e}"  # no new throttle without a journal entry
                rep.errors.append(msg)
                h.outcome(f"throttle:{w.tenant}", False, msg)
                continue
            self.owned[key] = w  # owned from the intent on: recovery lifts it if we die now
            try:
                cg_io.write(cg, dev, w.caps)
            except (CgroupError, PathError) as e:
                rep.errors.append(str(e))
                h.jot("throttle", phase="failed", action="set", error=str(e), **fields)
                h.outcome(f"throttle:{w.tenant}", False, str(e))
                if isinstance(e, CgroupGone):
                    self.owned.pop(key, None)
                continue
            h.jot("throttle", phase="done", action="set", **fields)
            rep.applied.append(f"capped {cg} {dev} {w.caps}")
            h.outcome(f"throttle:{w.tenant}", True)
        if renewed:
            # Caps in place whose expiry moved on (every tick while a guard holds): one fsync'd record
            # for all of them, not one each. Unjournaled, recovery would only lift them sooner.
            try:
                h.journal.append("throttle", phase="renew", action="set",
                                 caps=[cap_fields(cg, dev, w) for (cg, dev), w in renewed.items()])  # fmt: skip
                self.owned.update(renewed)
            except JournalError as e:
                rep.errors.append(str(e))

    def recover(self, now: float, summary: dict[str, Any]) -> None:
        """After the journal was read: lift the caps past their expiry, re-assert the others."""
        if self.h.dry_run:
            return
        for key, o in sorted(self.owned.items()):
            cg, dev = key
            try:
                if o.expires_at <= now:
                    self.h.cg.lift(cg, dev)
                    self.owned.pop(key)
                    summary["lifted"].append(f"{cg} {dev}")
                else:
                    self.h.cg.write(cg, dev, o.caps)
                    summary["reasserted"].append(f"{cg} {dev} {o.caps}")
            except CgroupGone:
                self.owned.pop(key)
                summary["lifted"].append(f"{cg} {dev} (group gone)")
            except (CgroupError, PathError) as e:
                summary["errors"].append(str(e))
