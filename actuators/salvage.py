"""Lift expired caps from the journal alone, whatever else is wrong: the degraded-mode safety net.

When recovery fails (or raises), tailguard keeps running degraded, and this pass runs before every
reconcile until recovery succeeds: it reads the throttle records the way recovery does, but record
by record, skipping any it cannot use, and lifts every cap whose expiry has passed. It only touches
(cgroup, device) pairs the journal says tailguard set, so caps set by others stay; each lift is
journaled like the reconciler's (a `lift` `done` record), so the next read of the journal agrees.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from actuators.cgroup import CgroupError, CgroupGone, CgroupIO
from actuators.journal import Journal, JournalError
from actuators.paths import PathError

log = logging.getLogger("tailguard.actuators")


@dataclass(slots=True)
class SalvageReport:
    lifted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped_records: int = 0  # records whose throttle fields could not be used


def owned_caps(records: Iterable[dict[str, Any]]) -> tuple[dict[tuple[str, str], tuple[str, float]], int]:
    """((cgroup, dev) -> (tenant, expires_at), records skipped) from throttle and snapshot records,
    tolerant of any shape: a record that does not fit is skipped, never raised on."""
    owned: dict[tuple[str, str], tuple[str, float]] = {}
    skipped = 0
    # OverflowError: float() of an expiry written as an integer past a double's range
    unusable = (KeyError, TypeError, ValueError, AttributeError, OverflowError)

    def put(t: Any) -> None:
        key = (t["cgroup"], t["dev"])
        if not all(isinstance(k, str) for k in key):
            raise TypeError("cgroup and dev must be strings")
        owned[key] = (str(t.get("tenant", "")), float(t["expires_at"]))

    for rec in records:
        try:
            kind, phase = rec.get("kind"), rec.get("phase")
            if kind == "snapshot":
                state = rec.get("state")
                if isinstance(state, dict) and isinstance(state.get("throttles"), list):
                    owned = {}
                    for t in state["throttles"]:
                        try:
                            put(t)
                        except unusable:
                            skipped += 1
            elif kind == "throttle" and phase == "renew":
                for t in rec.get("caps") or []:
                    try:
                        put(t)
                    except unusable:
                        skipped += 1
            elif kind == "throttle" and rec.get("action") == "set" and phase in ("intent", "done", "failed"):
                put(rec)
            elif kind == "throttle" and rec.get("action") == "lift" and phase == "done":
                owned.pop((rec["cgroup"], rec["dev"]), None)
        except unusable:
            skipped += 1
    return owned, skipped


def lift_expired(journal: Journal, cg: CgroupIO, now: float) -> SalvageReport:
    """Lift every journaled cap whose expiry passed; never raises."""
    rep = SalvageReport()
    owned, rep.skipped_records = owned_caps(journal.tail_from_snapshot())
    for (group, dev), (tenant, expires_at) in sorted(owned.items()):
        if expires_at > now:
            continue
        try:
            cg.lift(group, dev)
        except CgroupGone:
            pass
        except (CgroupError, PathError, OSError) as e:
            rep.errors.append(f"lift {group} {dev}: {e}")
            continue
        rep.lifted.append(f"{group} {dev}")
        try:
            journal.append("throttle", phase="done", action="lift", cgroup=group, dev=dev, tenant=tenant,
                           note="degraded: expired cap lifted by the salvage pass")  # fmt: skip
        except JournalError as e:
            rep.errors.append(str(e))  # lifted anyway: the safe direction
    if rep.lifted:
        log.warning("degraded: lifted %d expired caps from the journal: %s", len(rep.lifted), ", ".join(rep.lifted))
    return rep
