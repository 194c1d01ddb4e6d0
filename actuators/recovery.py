"""Crash recovery: read the journal from its latest snapshot on and hand each lever what it owned
(caps, MPS limits, open MIG changes, open warm moves, where tenants run); then each lever puts the
host right: expired caps lifted and the others re-asserted, MIG changes finished or rolled back
(several GPUs at once, bounded), warm moves left with exactly one copy.

Recovery never raises on a record: one that does not have the shape its kind needs (valid JSON of
the wrong shape: a snapshot whose state is null, renewed caps that are not objects, a bad MIG slot)
is counted, logged with its file and line, and skipped; the records around it still count.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from actuators.cgroup import Caps
from actuators.hands import Hands, OwnedCap
from actuators.journal import JournalError, file_bytes
from actuators.miglayouts import MigLayouts
from actuators.moves import Moves
from actuators.mpslimits import MpsLimits
from actuators.paths import PathError, check_rel
from actuators.throttles import Throttles
from fsm.mig import Slot
from fsm.observation import InstanceRef
from schema.jsontext import finite_float, loads_json, shown

log = logging.getLogger("tailguard.actuators")

MAX_LISTED = 20  # skipped records named in the summary and the log (all are counted)
_DEV = re.compile(r"^\d{1,4}:\d{1,7}$")
_INT_EXP = 2**53  # an int expiry the fast path takes (float() of a larger one may overflow: the checked path)


class BadRecord(ValueError):
    pass


def _obj(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise BadRecord(f"{what} is {type(v).__name__}, not an object")
    return v


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise BadRecord(f"{what} is {type(v).__name__}, not a list")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v:
        raise BadRecord(f"{what} is {v!r}, not a non-empty string")
    return v


def _num(v: Any, what: str) -> float:
    f = finite_float(v)  # also None for an int past a double's range (float() would raise OverflowError)
    if f is None:
        raise BadRecord(f"{what} is {shown(v)}, not a finite number")
    return f


def _rate(v: Any, what: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise BadRecord(f"{what} is {v!r}, not a positive whole number of bytes/s")
    return v


def _pid(v: Any, what: str) -> int:
    # Linux's pid_max is at most 2^22 (PID_MAX_LIMIT): a larger number is no process of this host
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 1 << 22:
        raise BadRecord(f"{what} is {shown(v)}, not a PID")
    return v


def _slots(v: Any, what: str) -> list[str]:
    out = []
    for i, s in enumerate(_list(v, what)):
        try:
            Slot.parse(_str(s, f"{what}[{i}]"))
        except ValueError as e:
            raise BadRecord(f"{what}[{i}]: {e}") from None
        out.append(s)
    return out


def _ref(v: Any, what: str, optional: bool = True) -> InstanceRef | None:
    if v is None and optional:
        return None
    try:
        return InstanceRef.parse(_str(v, what))
    except ValueError as e:
        raise BadRecord(f"{what}: {e}") from None


_GOOD_PAIRS: set[tuple[str, str]] = set()  # (cgroup, MAJ:MIN) pairs found well formed


def _good_pair(key: tuple[str, str]) -> bool:
    if _group_dev(*key):
        return False
    if len(_GOOD_PAIRS) < 4096:
        _GOOD_PAIRS.add(key)
    return True


@functools.lru_cache(maxsize=4096)
def _group_dev(cg: str, dev: str) -> str:
    """'' when a (cgroup, MAJ:MIN) pair is well formed, else why not. Cached: a journal names the
    same few groups in every renewal (10,000 records of 10 caps: 100,000 checks, a dozen pairs)."""
    try:
        check_rel(cg)
    except PathError as e:
        return f"cgroup: {e}"
    return "" if _DEV.match(dev) else f"dev is {dev!r}, not MAJ:MIN"


def _owned_cap(t: Any, what: str, i: int | None = None) -> tuple[tuple[str, str], OwnedCap]:
    # Fast path for the well-formed cap (a journal holds thousands; few calls, as the replay before
    # the shape checks made); anything else is checked field by field below, which names what is wrong.
    try:
        cg, dev, exp = t["cgroup"], t["dev"], t["expires_at"]
        tenant, rb, wb = t.get("tenant", ""), t.get("rbps"), t.get("wbps")
    except (KeyError, TypeError, AttributeError):
        pass
    else:
        key = (cg, dev)
        if (
            type(cg) is str and type(dev) is str and (key in _GOOD_PAIRS or _good_pair(key))
            and type(tenant) is str and (rb is None or (type(rb) is int and rb > 0))
            and (wb is None or (type(wb) is int and wb > 0))
            and ((type(exp) is float and exp - exp == 0)  # finite: inf - inf is nan
                 or (type(exp) is int and -_INT_EXP < exp < _INT_EXP))
        ):  # fmt: skip
            return key, OwnedCap(tenant, Caps(rb, wb), exp if type(exp) is float else float(exp))
    return _owned_cap_checked(t, what if i is None else f"{what}[{i}]")


def _owned_cap_checked(t: Any, what: str) -> tuple[tuple[str, str], OwnedCap]:
    t = _obj(t, what)
    cg = _str(t.get("cgroup"), f"{what}.cgroup")
    dev = _str(t.get("dev"), f"{what}.dev")
    why = _group_dev(cg, dev)
    if why:
        raise BadRecord(f"{what}.{why}")
    tenant = t.get("tenant", "")
    if not isinstance(tenant, str):
        raise BadRecord(f"{what}.tenant is {tenant!r}, not a string")
    caps = Caps(_rate(t.get("rbps"), f"{what}.rbps"), _rate(t.get("wbps"), f"{what}.wbps"))
    return (cg, dev), OwnedCap(tenant, caps, _num(t.get("expires_at"), f"{what}.expires_at"))


def _mig_intent(r: Any, what: str) -> dict[str, Any]:
    r = dict(_obj(r, what))
    _str(r.get("gpu"), f"{what}.gpu")
    _slots(r.get("before", []), f"{what}.before")
    _slots(r.get("after", []), f"{what}.after")
    return r


def _warm(r: Any, what: str) -> dict[str, Any]:
    r = dict(_obj(r, what))
    _str(r.get("tenant"), f"{what}.tenant")
    _ref(r.get("frm"), f"{what}.frm")
    _ref(r.get("to"), f"{what}.to", optional=False)
    _str(r.get("new"), f"{what}.new")
    if r.get("old") is not None:
        _str(r.get("old"), f"{what}.old")
    return r


# What the journal writes: kind -> (phases, actions; empty: no action field). Anything else is a
# damaged record, skipped and reported (Recovery.replay).
WRITTEN: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "throttle": (frozenset({"intent", "done", "failed", "renew"}), frozenset({"set", "lift"})),
    "mps": (frozenset({"intent", "done"}), frozenset({"set", "lift"})),
    "mig": (frozenset({"intent", "step", "done", "failed"}), frozenset()),
    "move": (frozenset({"intent", "switched", "done", "failed"}), frozenset()),
    "snapshot": (frozenset(), frozenset()),
    "recovery": (frozenset(), frozenset()),
}
# A snapshot's books (Reconciler.snapshot): any other key is a damaged one, whose books are unknown.
SNAPSHOT_KEYS = frozenset({"throttles", "placements", "mps", "warm_moves", "mig_open", "outages"})


def _snapshot(rec: dict[str, Any]) -> tuple[dict[tuple[str, str], OwnedCap], dict[str, InstanceRef | None],
                                          dict[str, tuple[int, float]], dict[str, dict[str, Any]],
                                          dict[str, dict[str, Any]]]:  # fmt: skip
    """A snapshot record's books (caps, placements, MPS limits, warm moves, open MIG changes)."""
    st = _obj(rec.get("state"), "state")
    odd = sorted(set(st) - SNAPSHOT_KEYS)
    if odd:  # "throttlds" for "throttles": its caps would read as none owned
        raise BadRecord(f"state has unknown key(s) {', '.join(map(repr, odd))}")
    owned = dict(_owned_cap(t, "state.throttles", i) for i, t in
                 enumerate(_list(st.get("throttles", []), "state.throttles")))  # fmt: skip
    places = {t: _ref(r, f"state.placements.{t}")
              for t, r in _obj(st.get("placements", {}), "state.placements").items()}  # fmt: skip
    owned_mps = {}
    for t, v in _obj(st.get("mps", {}), "state.mps").items():
        pair = _list(v, f"state.mps.{t}")
        if len(pair) != 2:
            raise BadRecord(f"state.mps.{t} is {pair!r}, not [pid, expires_at]")
        owned_mps[t] = (_pid(pair[0], f"state.mps.{t}[0]"), _num(pair[1], f"state.mps.{t}[1]"))
    warm = {t: _warm(r, f"state.warm_moves.{t}")
            for t, r in _obj(st.get("warm_moves", {}), "state.warm_moves").items()}  # fmt: skip
    mig_open = {g: _mig_intent(r, f"state.mig_open.{g}")
                for g, r in _obj(st.get("mig_open", {}), "state.mig_open").items()}  # fmt: skip
    return owned, places, owned_mps, warm, mig_open


def _valid_snapshot(rec: dict[str, Any]) -> bool:
    try:
        _snapshot(rec)
    except (BadRecord, KeyError, TypeError, ValueError, AttributeError):
        return False
    return True


class Recovery:
    def __init__(self, h: Hands, throttles: Throttles, mps: MpsLimits, layouts: MigLayouts, moves: Moves,
                 concurrency: int = 4) -> None:  # fmt: skip
        self.h = h
        self.throttles = throttles
        self.mps = mps
        self.layouts = layouts
        self.moves = moves
        self.concurrency = max(1, concurrency)
        self._places: dict[str, str] | None = None  # canonical JSON of a record -> "file:line"

    def replay(self, rec: dict[str, Any]) -> None:
        """Apply one journal record to the levers' books; BadRecord (nothing applied) when its
        shape is wrong, or its kind, phase or action is none the journal writes: a bit flipped in
        "intent" or "throttle" read as a record of nothing, and the cap or limit it carried was no
        longer owned, never lifted, and not reported either."""
        h, th, mps, mig, mv = self.h, self.throttles, self.mps, self.layouts, self.moves
        kind, phase = rec.get("kind"), rec.get("phase")
        known = WRITTEN.get(kind) if isinstance(kind, str) else None
        if known is None:
            raise BadRecord(f"unknown kind {kind!r}")
        phases, actions = known
        if phases:  # (a snapshot or a recovery summary has no phase)
            if phase not in phases:
                raise BadRecord(f"unknown phase {phase!r} of a {kind} record")
            if actions and phase != "renew" and rec.get("action") not in actions:  # (a renewal's is not read)
                raise BadRecord(f"unknown action {rec.get('action')!r} of a {kind} record")
        if kind == "snapshot":
            owned, places, owned_mps, warm, mig_open = _snapshot(rec)
            th.owned = owned
            for t, ref in places.items():
                if t in h.placement:
                    h.placement[t] = ref
            mps.owned = owned_mps
            mv.warm_open = {t: r for t, r in warm.items() if t in h.placement}
            mig.open = mig_open
        elif kind == "throttle" and phase == "renew":
            caps = [_owned_cap(t, "caps", i) for i, t in enumerate(_list(rec.get("caps"), "caps"))]
            th.owned.update(caps)
        elif kind == "throttle":
            key, cap = _owned_cap(rec, "record") if rec.get("action") == "set" else ((
                _str(rec.get("cgroup"), "cgroup"), _str(rec.get("dev"), "dev")), None)  # fmt: skip
            if cap is not None and phase in ("intent", "done", "failed"):
                th.owned[key] = cap
            elif rec.get("action") == "lift" and phase == "done":
                th.owned.pop(key, None)
        elif kind == "mps":
            tenant = _str(rec.get("tenant"), "tenant")
            if rec.get("action") == "set" and phase in ("intent", "done"):
                mps.owned[tenant] = (_pid(rec.get("pid"), "pid"), _num(rec.get("expires_at"), "expires_at"))
            elif rec.get("action") == "lift" and phase == "done":
                mps.owned.pop(tenant, None)
        elif kind == "mig":
            gpu = _str(rec.get("gpu"), "gpu")
            if phase == "intent":
                mig.open[gpu] = _mig_intent(rec, "record")
            elif phase in ("done", "failed"):
                mig.open.pop(gpu, None)
        elif kind == "move":
            t = _str(rec.get("tenant"), "tenant")
            if t in h.placement:
                if rec.get("handover") == "warm" and phase in ("intent", "switched"):
                    mv.warm_open[t] = _warm(rec, "record")  # recover() decides which copy stays
                elif phase == "intent":
                    h.placement[t] = None  # unknown until the move finishes
                elif phase in ("done", "failed"):
                    at = _ref(rec.get("at"), "at")
                    mv.warm_open.pop(t, None)
                    h.placement[t] = at

    def _records(self) -> list[dict[str, Any]]:
        """The records from the latest snapshot on; when that snapshot is of the wrong shape, from
        the latest one that is not (all files are read then, only in that case)."""
        tail = self.h.journal.tail_from_snapshot()
        if not tail or tail[0].get("kind") != "snapshot" or _valid_snapshot(tail[0]):
            return tail
        recs = list(self.h.journal.records())
        for i in range(len(recs) - 1, -1, -1):
            if recs[i].get("kind") == "snapshot" and _valid_snapshot(recs[i]):
                return recs[i:]
        return recs

    def _where(self, rec: dict[str, Any]) -> str:
        """file:line of a record. The index of every line is built once, and only when a record is
        skipped (a journal of thousands of bad records costs one pass, not one per record)."""
        if self._places is None:
            self._places = {}
            for f in self.h.journal.files():
                try:
                    lines = file_bytes(f).split(b"\n")
                except OSError:
                    continue  # said once already, by the journal's read
                for i, raw in enumerate(lines, 1):
                    try:
                        key = json.dumps(loads_json(raw), sort_keys=True)
                    except ValueError:
                        continue
                    self._places[key] = f"{f}:{i}"  # the newest occurrence wins
        return self._places.get(json.dumps(rec, sort_keys=True), f"{self.h.journal.path}:?")

    async def run(self, snapshot: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        h = self.h
        now = h.clock()
        summary: dict[str, Any] = {"lifted": [], "reasserted": [], "mig": {}, "moves": [], "errors": [],
                                   "skipped": 0, "skipped_records": []}  # fmt: skip
        try:
            records = self._records()
        except Exception as e:  # an unreadable journal: recover from nothing, say so
            log.exception("recovery: cannot read the journal")
            summary["errors"].append(f"journal {h.journal.path}: cannot read: {e}")
            records = []
        summary["errors"] += h.journal.unreadable  # a file that could not be read, the rest recovered
        for rec in records:
            try:
                self.replay(rec)
            except (BadRecord, KeyError, TypeError, ValueError, AttributeError) as e:
                where = self._where(rec)
                summary["skipped"] += 1
                if len(summary["skipped_records"]) < MAX_LISTED:
                    summary["skipped_records"].append(f"{where}: {rec.get('kind')} record skipped: {e}")
                    log.warning("recovery: %s: %s record skipped: %s", where, rec.get("kind"), e)
        self._places = None
        if summary["skipped"] > MAX_LISTED:
            log.warning("recovery: %d journal records skipped in all (the first %d are listed above)",
                        summary["skipped"], MAX_LISTED)  # fmt: skip
        self.moves.load_outages(records)  # measured outages survive a restart
        dry = h.dry_run
        if not dry:
            self.moves.forget_lost_dropins(summary)  # runtime drop-ins do not survive a reboot
        # Caps first: plain file writes, done before anything waits on a tool.
        await self._guard(summary, "throttles", self._throttles(now, summary))
        await self._guard(summary, "mps", self.mps.recover(now, summary))
        sem = asyncio.Semaphore(self.concurrency)

        async def mig(gpu: str, rec: dict[str, Any]) -> None:
            async with sem:
                summary["mig"][gpu] = await self.layouts.recover(gpu, rec) if not dry else "dry-run: left as is"

        async def move(tenant: str, rec: dict[str, Any]) -> None:
            async with sem:
                summary["moves"].append(await self.moves.recover(tenant, rec, dry))

        # Each GPU's open change on its own (a hung nvidia-smi costs one timeout, not one per GPU).
        opened = sorted(self.layouts.open.items())
        await asyncio.gather(*(self._guard(summary, f"gpu:{g}", mig(g, r)) for g, r in opened))
        warm = sorted(self.moves.warm_open.items())
        await asyncio.gather(*(self._guard(summary, f"tenant:{t}", move(t, r)) for t, r in warm))
        if not dry:
            try:
                h.journal.append("recovery", summary=summary)
                h.journal.append("snapshot", state=snapshot())
            except JournalError as e:
                summary["errors"].append(str(e))
        log.info("recovery: %s", summary)
        return summary

    async def _throttles(self, now: float, summary: dict[str, Any]) -> None:
        self.throttles.recover(now, summary)

    async def _guard(self, summary: dict[str, Any], what: str, work: Awaitable[None]) -> None:
        """A bug in one lever's recovery is reported, never fatal to the start."""
        try:
            await work
        except Exception as e:
            log.exception("recovery: %s", what)
            summary["errors"].append(f"recovery of {what}: {type(e).__name__}: {e}")
