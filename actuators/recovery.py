"""Crash recovery: read the journal from its latest snapshot on and hand each lever what it owned
(caps, MPS limits, open MIG changes, open warm moves, where tenants run); then each lever puts the
host right: expired caps lifted and the others re-asserted, MIG changes finished or rolled back,
warm moves left with exactly one copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from actuators.cgroup import Caps
from actuators.hands import Hands, OwnedCap
from actuators.journal import JournalError
from actuators.miglayouts import MigLayouts
from actuators.moves import Moves
from actuators.mpslimits import MpsLimits
from actuators.throttles import Throttles
from fsm.observation import InstanceRef

log = logging.getLogger("tailguard.actuators")


class Recovery:
    def __init__(self, h: Hands, throttles: Throttles, mps: MpsLimits, layouts: MigLayouts, moves: Moves) -> None:
        self.h = h
        self.throttles = throttles
        self.mps = mps
        self.layouts = layouts
        self.moves = moves

    def replay(self, rec: dict[str, Any], summary: dict[str, Any]) -> None:
        """Apply one journal record to the levers' books."""
        h, th, mps, mig, mv = self.h, self.throttles, self.mps, self.layouts, self.moves
        kind, phase = rec.get("kind"), rec.get("phase")
        try:
            if kind == "snapshot":
                st = rec.get("state", {})
                th.owned = {
                    (t["cgroup"], t["dev"]): OwnedCap(t["tenant"], Caps(t["rbps"], t["wbps"]), float(t["expires_at"]))
                    for t in st.get("throttles", [])
                }
                for t, r in st.get("placements", {}).items():
                    if t in h.placement:
                        h.placement[t] = InstanceRef.parse(r) if r else None
                mps.owned = {t: (int(v[0]), float(v[1])) for t, v in st.get("mps", {}).items()}
                mv.warm_open = {t: dict(r) for t, r in st.get("warm_moves", {}).items() if t in h.placement}
                mig.open = {g: dict(r) for g, r in st.get("mig_open", {}).items()}
            elif kind == "throttle" and phase == "renew":
                for t in rec["caps"]:
                    caps = Caps(t.get("rbps"), t.get("wbps"))
                    th.owned[(t["cgroup"], t["dev"])] = OwnedCap(t.get("tenant", ""), caps, float(t["expires_at"]))
            elif kind == "throttle":
                key = (rec["cgroup"], rec["dev"])
                if rec.get("action") == "set" and phase in ("intent", "done", "failed"):
                    caps = Caps(rec.get("rbps"), rec.get("wbps"))
                    th.owned[key] = OwnedCap(rec.get("tenant", ""), caps, float(rec["expires_at"]))
                elif rec.get("action") == "lift" and phase == "done":
                    th.owned.pop(key, None)
            elif kind == "mps":
                if rec.get("action") == "set" and phase in ("intent", "done"):
                    mps.owned[rec["tenant"]] = (int(rec["pid"]), float(rec["expires_at"]))
                elif rec.get("action") == "lift" and phase == "done":
                    mps.owned.pop(rec["tenant"], None)
            elif kind == "mig":
                if phase == "intent":
                    mig.open[rec["gpu"]] = rec
                elif phase in ("done", "failed"):
                    mig.open.pop(rec["gpu"], None)
            elif kind == "move":
                t = rec["tenant"]
                if t in h.placement:
                    if rec.get("handover") == "warm" and phase in ("intent", "switched"):
                        mv.warm_open[t] = dict(rec)  # recover() decides which copy stays
                    elif phase == "intent":
                        h.placement[t] = None  # unknown until the move finishes
                    elif phase in ("done", "failed"):
                        mv.warm_open.pop(t, None)
                        h.placement[t] = InstanceRef.parse(rec["at"]) if rec.get("at") else None
        except (KeyError, TypeError, ValueError) as e:
            summary["errors"].append(f"journal record {rec.get('seq')}: {e}")

    async def run(self, snapshot: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        h = self.h
        now = h.clock()
        summary: dict[str, Any] = {"lifted": [], "reasserted": [], "mig": {}, "moves": [], "errors": []}
        for rec in h.journal.tail_from_snapshot():
            self.replay(rec, summary)
        dry = h.dry_run
        if not dry:
            self.moves.forget_lost_dropins(summary)  # runtime drop-ins do not survive a reboot
        self.throttles.recover(now, summary)
        await self.mps.recover(now, summary)
        for gpu, rec in sorted(self.layouts.open.items()):  # a copy: recover() closes them
            summary["mig"][gpu] = await self.layouts.recover(gpu, rec) if not dry else "dry-run: left as is"
        for tenant, rec in sorted(self.moves.warm_open.items()):
            summary["moves"].append(await self.moves.recover(tenant, rec, dry))
        if not dry:
            try:
                h.journal.append("recovery", summary=summary)
                h.journal.append("snapshot", state=snapshot())
            except JournalError as e:
                summary["errors"].append(str(e))
        log.info("recovery: %s", summary)
        return summary
