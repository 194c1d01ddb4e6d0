"""The placement lever: tenant moves between MIG instances, cold (stop, start) or warm (start the
new copy, wait for it to be ready, then stop the old one).

Each move runs as a background task per tenant (`tenant:<name>`) and waits for a layout change
on its target GPU. The journal says which copy to keep after a crash: intent -> switched ->
done / failed (see `recover`).

Each finished move records the tenant's measured outage (`outage_s` in its done record, and
`recent_outages()` for the shell): restart, from the relaunch to the new copy's readiness; resize
(a restart move that waited for a layout change on its own GPU), from the start of that wait,
since the change may take the old instance away; warm, the time no copy was ready (0 when the old
one is stopped after the new one is ready, which is how a warm move ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from actuators.hands import Hands, ReconcileReport, TenantActuation, ref_str
from actuators.journal import JournalError
from actuators.launcher import Launcher, LaunchError, SystemdLauncher
from actuators.nvsmi import NvsmiError
from fsm.desired import DesiredState
from fsm.observation import InstanceRef
from fsm.outage import EXIT_CHECK_S
from schema.jsontext import finite_float, shown

log = logging.getLogger("tailguard.actuators")

OUTAGES_KEPT = 10  # recent measured outages kept per tenant


def _outage(r: dict[str, Any]) -> dict[str, Any]:
    out = {"kind": str(r["kind"]), "seconds": _seconds(r["seconds"]), "wall": _seconds(r["wall"])}
    if r.get("relaunch_s") is not None:  # a resize's relaunch alone (its seconds include the MIG change)
        out["relaunch_s"] = _seconds(r["relaunch_s"])
    return out


def relaunch_of(rec: Any) -> float | None:
    """A measured outage record's relaunch, as the cost model prices it: a restart move's seconds
    (a warm one's: its switch-over gap), a resize's `relaunch_s` (its seconds include the MIG
    change); None for any other record."""
    if not isinstance(rec, dict):
        return None
    kind = rec.get("kind")
    v = rec.get("relaunch_s") if kind == "resize" else rec.get("seconds") if kind in ("move", "warm_move") else None
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _seconds(v: Any) -> float:
    """A measured outage or a wall time from the journal: a finite number >= 0 (ValueError else).
    NaN or -5 s went to the outage metrics and the decision core's measured outage; a 401-digit
    integer made recovery raise."""
    f = finite_float(v)
    if f is None or f < 0.0:
        raise ValueError(f"{shown(v)} is not a number of seconds")
    return f


EXITED = " exited on "  # in Moves.ready's reason: the copy it waited for exited (else: not ready in time)


def _starting(slow: str) -> str:
    """What a wait for readiness that failed (`slow`, from Moves.ready) left: a copy still starting
    (the wait ran out) or none (it exited)."""
    if not slow:
        return ""
    return f", not running ({slow})" if EXITED in slow else f", still starting ({slow})"


class Exits:
    """Waits for a copy's readiness, and checks it every EXIT_CHECK_S meanwhile: one that exited
    (out of memory on its slice, say) will not get ready, and waiting out readiness_timeout_s for
    it kept the tenant down for nothing (restart) or the lever busy (warm)."""

    def __init__(self, launcher: Launcher, tenant: str, ref: InstanceRef, uuid: str) -> None:
        self.launcher, self.tenant, self.ref, self.uuid = launcher, tenant, ref, uuid
        self.next_at = time.monotonic() + EXIT_CHECK_S

    async def exited(self) -> str:
        if time.monotonic() < self.next_at:
            return ""
        self.next_at = time.monotonic() + EXIT_CHECK_S
        try:
            return await self.launcher.exited(self.tenant, self.ref, self.uuid)
        except Exception:  # a launcher that cannot tell: wait for readiness as before
            return ""

    async def until_ready(self, probe: Callable[[], Awaitable[bool]], timeout_s: float) -> str | None:
        """Ask `probe` every 0.5 s for up to `timeout_s` (a probe that raises says not yet): None
        once it says ready, else why not: what exited, or "" when the wait ran out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if await probe():
                    return None
            if why := await self.exited():
                return why
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        return ""


class Moves:
    def __init__(self, h: Hands) -> None:
        self.h = h
        self.retire: dict[str, tuple[InstanceRef | None, str]] = {}  # warm: the copy still to stop ("": all others)
        self.warm_open: dict[str, dict[str, Any]] = {}  # warm moves not closed in the journal yet
        self._keys: dict[str, InstanceRef] = {}  # target -> the instance a running move goes to
        self.outages: dict[str, deque[dict[str, Any]]] = {}  # tenant -> recent measured outages
        self._launched: dict[str, float] = {}  # tenant -> monotonic time of its last relaunch
        self._uuids: dict[str, str] = {}  # tenant -> the MIG device it was last launched on

    def record_outage(self, tenant: str, kind: str, seconds: float, relaunch_s: float | None = None) -> float:
        """One measured outage; a resize's also carries its relaunch alone (from the launch to
        readiness), which is what the decision core prices every move's relaunch with."""
        s = round(max(0.0, seconds), 3)
        rec: dict[str, Any] = {"kind": kind, "seconds": s, "wall": time.time()}
        if relaunch_s is not None:
            rec["relaunch_s"] = round(max(0.0, relaunch_s), 3)
        self.outages.setdefault(tenant, deque(maxlen=OUTAGES_KEPT)).append(rec)
        log.info("tenant:%s: %s outage %.3f s", tenant, kind, s)
        return s

    def recent_outages(self) -> dict[str, list[dict[str, Any]]]:
        """tenant -> its last OUTAGES_KEPT measured outages ({kind, seconds, wall}), oldest first."""
        return {t: [dict(r) for r in q] for t, q in sorted(self.outages.items())}

    def load_outages(self, records: list[dict[str, Any]]) -> None:
        """Recovery: the recent outages from the journal (the snapshot's, then later done records),
        so a restart does not forget them; a record of another shape is passed over."""
        for rec in records:
            try:
                if rec.get("kind") == "snapshot":
                    saved = (rec.get("state") or {}).get("outages") or {}
                    self.outages = {str(t): deque(map(_outage, recs), maxlen=OUTAGES_KEPT) for t, recs in saved.items()}
                elif rec.get("kind") == "move" and rec.get("phase") == "done" and "outage_s" in rec:
                    q = self.outages.setdefault(str(rec["tenant"]), deque(maxlen=OUTAGES_KEPT))
                    q.append(_outage({"kind": rec.get("outage_kind", "move"), "seconds": rec["outage_s"],
                                      "wall": rec["t"], "relaunch_s": rec.get("relaunch_s")}))  # fmt: skip
            except (KeyError, TypeError, ValueError, AttributeError):
                continue

    def forget_lost_dropins(self, summary: dict[str, Any]) -> None:
        """Recovery after a reboot: the systemd launcher's runtime drop-ins are gone, so a tenant
        the journal places away from its home runs wherever its unit alone says. Its placement
        becomes unknown and the next reconcile relaunches it (writing the drop-in again)."""
        for tenant, spec in sorted(self.h.tenants.items()):
            where = self.h.placement.get(tenant)
            launcher = spec.launcher
            if where is None or where == spec.home or not isinstance(launcher, SystemdLauncher):
                continue
            if launcher.handover == "warm":
                continue  # its copies are instance units named by MIG uuid: see docs/actuators.md
            if not launcher.has_dropins():
                self.h.placement[tenant] = None
                summary.setdefault("moves", []).append(
                    f"{tenant}: drop-in under {launcher.dropin_root} gone (reboot?): relaunched by the next reconcile"
                )

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return dict(sorted(self.warm_open.items()))

    def _outcome(self, target: str, ok: bool, error: str = "", outage_s: float | None = None) -> None:
        """A move's outcome; a failed one holds further tries at the same target back (backoff), and
        says how long its tenant served nothing for it (0: never stopped; None: not known)."""
        self.h.outcome(target, ok, error, outage_s)
        key = self._keys.pop(target, None)
        if ok:
            self.h.backoff.ok(target)
        elif key is not None:
            self.h.backoff.failed(target, self.h.clock(), key, error)

    async def reconcile(self, desired: DesiredState, rep: ReconcileReport) -> None:
        for tenant, spec in sorted(self.h.tenants.items()):
            if spec.launcher is None:
                if tenant in desired.placements:
                    rep.errors.append(f"tenant:{tenant}: no launcher configured, cannot move it")
                continue
            want = desired.placements.get(tenant, spec.home)
            target = f"tenant:{tenant}"
            if tenant in self.retire and not self.h.in_flight(target) and not rep.dry_run:
                # A warm move left two copies running: stop the old one again (in the background:
                # a hung systemctl must not stall the tick); moves wait for it.
                rep.ops.append(f"stop the old copy of {tenant}")
                rep.started.append(target)
                self.h.tasks[target] = asyncio.create_task(self.retire_old(tenant, spec), name=target)
                continue
            if want is None or self.h.placement.get(tenant) == want:
                continue
            if self.h.in_flight(target):
                rep.busy.append(target)
                continue
            if want.gpu not in self.h.gpus:
                rep.errors.append(f"{target}: instance {want} is on an unknown GPU")
                continue
            wait = self.h.backoff.wait_s(target, self.h.clock(), want)
            if wait > 0:
                f = self.h.backoff.failing[target]
                rep.deferred.append(f"{target}: retry in {wait:.0f} s ({f.failures} failures; last: {f.error})")
                continue
            self._keys[target] = want
            rep.ops.append(f"move {tenant} from {self.h.placement.get(tenant)} to {want}")
            if rep.dry_run:
                continue
            rep.started.append(target)
            self.h.tasks[target] = asyncio.create_task(self.run_move(tenant, spec, want), name=target)

    async def mig_uuid(self, ref: InstanceRef) -> str:
        """The MIG device UUID of the instance at `ref`. nvidia-smi -L lists a GPU's MIG devices in
        ascending (GI id, CI id) order (every capture in fixtures/ agrees); legacy UUIDs carry the ids."""
        g = self.h.gpus[ref.gpu]
        model = await self.h.gpu_model(g)
        rows = await self.h.gi_rows(g)
        gi = next((r.gi for r in rows if r.start == ref.start and model.profile(r.profile_id).name ==
                   model.profile(ref.profile).name), None)  # fmt: skip
        if gi is None:
            raise NvsmiError(f"no MIG instance {ref} on GPU {g.index}")
        cis = sorted((c.gi, c.ci) for c in await self.h.nvsmi.lci(g.index) if c.gpu == g.index)
        entry = next((e for e in await self.h.nvsmi.list_gpus() if e.index == g.index), None)
        if entry is None:
            raise NvsmiError(f"nvidia-smi -L lists no GPU {g.index}")
        for dev in entry.mig:
            if dev.uuid.startswith("MIG-GPU-"):
                parts = dev.uuid.split("/")
                if len(parts) == 3 and parts[1] == str(gi):
                    return dev.uuid
        if len(cis) != len(entry.mig):
            raise NvsmiError(f"GPU {g.index}: -L shows {len(entry.mig)} MIG devices but -lci {len(cis)}")
        for (cgi, _), dev in zip(cis, entry.mig, strict=True):
            if cgi == gi:
                return dev.uuid
        raise NvsmiError(f"MIG instance {ref} (GI {gi}) has no compute instance")

    async def run_move(self, tenant: str, spec: TenantActuation, to: InstanceRef) -> None:
        target = f"tenant:{tenant}"
        frm = self.h.placement.get(tenant)
        assert spec.launcher is not None
        try:
            # A layout change on the target GPU may be creating the instance: wait for it.
            lt = self.h.tasks.get(f"gpu:{to.gpu}")
            waited_from: float | None = None  # a resize: the change may take the old instance away
            if lt is not None and not lt.done():
                if frm is not None and frm.gpu == to.gpu:
                    waited_from = time.monotonic()
                await asyncio.wait([lt])
            if spec.launcher.handover == "warm":
                await self.run_warm_move(tenant, spec, frm, to)
                return
            try:
                self.h.journal.append("move", phase="intent", tenant=tenant, frm=ref_str(frm), to=str(to))
            except JournalError as e:
                self._outcome(target, False, f"not applied: {e}", 0.0)
                return
            before = self._launched.get(tenant)
            launch_err = await self.launch(tenant, spec, to)
            err = launch_err or await self.ready(tenant, spec, to)
            stopped_at = self._launched.get(tenant)
            if stopped_at == before:  # never launched (no such instance: a MIG change refused): it still serves
                self.h.jot("move", phase="failed", tenant=tenant, error=err, at=ref_str(frm))
                self._outcome(target, False, err + "; not stopped", 0.0)
                return
            if not err:
                self.h.placement[tenant] = to
                kind = "move" if waited_from is None else "resize"
                now = time.monotonic()
                launched = self._launched.get(tenant, now)
                since = waited_from if waited_from is not None else launched
                relaunch = now - launched if waited_from is not None else None
                out = self.record_outage(tenant, kind, now - since, relaunch)
                extra = {"relaunch_s": round(relaunch, 3)} if relaunch is not None else {}
                self.h.jot("move", phase="done", tenant=tenant, at=str(to), outage_s=out, outage_kind=kind, **extra)
                self._outcome(target, True)
                return
            # Move back where it was and report the failure.
            back = ""
            outage: float | None = None
            if frm is not None:
                back_err = await self.launch(tenant, spec, frm)
                if (
                    back_err
                    and not launch_err
                    and EXITED not in err
                    and stopped_at is not None
                    and self._launched.get(tenant) == stopped_at
                ):
                    # Nothing launched back (its old instance is gone: a resize's MIG change took
                    # it): the new copy still starts on the target, so it is left to finish there.
                    slow = await self.ready(tenant, spec, to)
                    back = f"; not moved back ({back_err}): left on {to}{_starting(slow)}"
                    self.h.placement[tenant] = None if EXITED in slow else to
                    if not slow:
                        outage = time.monotonic() - (waited_from if waited_from is not None else stopped_at)
                elif back_err:  # where it runs is unknown: the next reconcile relaunches it
                    back = f"; moving back failed too: {back_err}"
                    self.h.placement[tenant] = None
                else:
                    # Relaunched there: a start slower than the readiness wait is left to finish, since
                    # relaunching it again (the next reconcile, were its place unknown) restarts it
                    # from scratch, and so on after every backoff.
                    slow = await self.ready(tenant, spec, frm)
                    back = f"; moved back{_starting(slow)}"
                    # one that exited there too runs nowhere: the next reconcile relaunches it
                    self.h.placement[tenant] = None if EXITED in slow else frm
                    if not slow and stopped_at is not None:
                        outage = time.monotonic() - stopped_at
            at = ref_str(self.h.placement.get(tenant))
            self.h.jot("move", phase="failed", tenant=tenant, error=err + back, at=at)
            self._outcome(target, False, err + back, outage)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("%s: unexpected error", target)
            self._outcome(target, False, f"unexpected error: {e}")

    async def run_warm_move(self, tenant: str, spec: TenantActuation, frm: InstanceRef | None, to: InstanceRef) -> None:
        """Make before break: start a copy on `to` while the old one serves, wait for the new copy's
        readiness, then stop the old one; a copy that never gets ready is stopped, the old kept.
        Journal: intent (new copy may be starting) -> switched (new serves; old may be stopping) ->
        done / failed, so recovery knows which of the two copies to keep (see recover())."""
        target = f"tenant:{tenant}"
        launcher = spec.launcher
        assert launcher is not None
        try:
            new = await self.mig_uuid(to)
            old = await self.mig_uuid(frm) if frm is not None else None
        except (NvsmiError, KeyError) as e:
            self._outcome(target, False, str(e), 0.0)
            return
        rec: dict[str, Any] = {"handover": "warm", "tenant": tenant, "frm": ref_str(frm), "to": str(to), "new": new,
                               "old": old}  # fmt: skip
        try:
            self.h.journal.append("move", phase="intent", **rec)
        except JournalError as e:
            self._outcome(target, False, f"not applied: {e}", 0.0)
            return
        self.warm_open[tenant] = {**rec, "phase": "intent"}
        started = time.monotonic()
        err = await self.copy_ready(tenant, spec, to, new)
        ready_at = time.monotonic()
        if not err:
            # The new copy serves from here on: journal that before the old one is touched (recovery
            # keeps the new copy from this record on, the old one before it).
            try:
                self.h.journal.append("move", phase="switched", **rec)
            except JournalError as e:
                err = f"cannot journal the switch: {e}"
        if err:
            self.h.placement[tenant] = frm
            self.retire[tenant] = (to, new)
            stop_err = await self.stop_old(tenant, spec)
            note = "; new copy stopped, old copy kept" if not stop_err else f"; {stop_err} (the new copy)"
            self.retire_done(tenant, stop_err, "failed", err + note)
            self._outcome(target, False, err + note, 0.0)  # the old copy served throughout
            return
        self.warm_open[tenant] = {**rec, "phase": "switched"}
        self.h.placement[tenant] = to
        self.retire[tenant] = (frm, old or "")
        stop_from = time.monotonic()
        stop_err = await self.stop_old(tenant, spec)
        # No copy ready only if the old one stopped before the new one was ready: never, here.
        out = self.record_outage(tenant, "warm_move", max(0.0, ready_at - stop_from))
        self.retire_done(tenant, stop_err, outage_s=out, handover_s=round(time.monotonic() - started, 3))
        self._outcome(target, True)

    async def stop_old(self, tenant: str, spec: TenantActuation) -> str:
        """Stop the copies a warm move left behind ('' when none is left)."""
        launcher = spec.launcher
        assert launcher is not None
        frm, old = self.retire[tenant]
        new = self.h.placement.get(tenant)
        try:
            if old:
                await launcher.stop_copy(tenant, frm, old)
                return ""
            # Where it ran before is unknown: stop every copy but the new one, when they can be listed.
            keep = await self.mig_uuid(new) if new is not None else ""
            others = await launcher.other_copies(tenant, keep) if keep else None
            if others is None:
                return "the old copy is unknown and this launcher cannot list copies: not stopped"
            for u in others:
                await launcher.stop_copy(tenant, None, u)
            return ""
        except (LaunchError, NvsmiError, KeyError) as e:
            return f"stopping the old copy failed: {e}"

    def retire_done(self, tenant: str, err: str, phase: str = "done", note: str = "", **measured: float) -> None:
        """Close a warm move in the journal once only the kept copy runs."""
        if err:  # two copies run: retried at the next reconcile, and by recovery after a restart
            log.warning("tenant:%s: %s", tenant, err)
            return
        self.retire.pop(tenant, None)
        self.warm_open.pop(tenant, None)
        extra: dict[str, Any] = {"note": note} if note else {}
        extra.update(measured)
        self.h.jot("move", phase=phase, tenant=tenant, at=ref_str(self.h.placement.get(tenant)), **extra)

    async def retire_old(self, tenant: str, spec: TenantActuation) -> None:
        try:
            self.retire_done(tenant, await self.stop_old(tenant, spec), note="old copy stopped on retry")
        except Exception:
            log.exception("tenant:%s: unexpected error", tenant)

    async def copy_ready(self, tenant: str, spec: TenantActuation, ref: InstanceRef, uuid: str) -> str:
        """Start a copy on `ref` and wait for that copy's readiness: the launcher's per-copy check
        (systemd is-active, ready_command), else the tenant's latency source (which the old copy
        may answer too: docs/actuators.md)."""
        launcher = spec.launcher
        assert launcher is not None
        try:
            await launcher.start_copy(tenant, ref, uuid)
        except LaunchError as e:
            return str(e)

        async def probe() -> bool:
            ok = await launcher.copy_ready(tenant, ref, uuid)
            if ok is None:
                ok = self.h.readiness is None or await self.h.readiness(tenant)
            return ok

        why = await Exits(launcher, tenant, ref, uuid).until_ready(probe, spec.readiness_timeout_s)
        if why is None:
            return ""
        if why:
            return f"new copy of {tenant}{EXITED}{ref} before it was ready ({why})"
        return f"new copy of {tenant} not ready on {ref} within {spec.readiness_timeout_s:g} s"

    async def launch(self, tenant: str, spec: TenantActuation, ref: InstanceRef) -> str:
        """(Re)start the tenant on `ref` (restart hand-over); an error says it was not launched."""
        assert spec.launcher is not None
        try:
            uuid = await self.mig_uuid(ref)
            self._launched[tenant] = time.monotonic()  # the old copy stops from here on (restart)
            self._uuids[tenant] = uuid
            await spec.launcher.launch(tenant, ref, uuid)
        except (NvsmiError, LaunchError, KeyError) as e:
            return str(e)
        return ""

    async def ready(self, tenant: str, spec: TenantActuation, ref: InstanceRef) -> str:
        """Wait for the launched tenant's readiness, up to its readiness_timeout_s."""
        if self.h.readiness is None:
            return ""
        assert spec.launcher is not None
        readiness = self.h.readiness
        watch = Exits(spec.launcher, tenant, ref, self._uuids.get(tenant, ""))
        why = await watch.until_ready(lambda: readiness(tenant), spec.readiness_timeout_s)
        if why is None:
            return ""
        if why:
            return f"{tenant}{EXITED}{ref} before it was ready ({why})"
        return f"{tenant} not ready on {ref} within {spec.readiness_timeout_s:g} s"

    async def recover(self, tenant: str, rec: dict[str, Any], dry: bool) -> str:
        """An interrupted warm move: before its "switched" record the old copy is kept and the new
        one stopped (it may be starting, or ready but never switched to); from it on the new copy is
        kept and the old one stopped. Stops are idempotent, so exactly one copy is left running."""
        frm = InstanceRef.parse(rec["frm"]) if rec.get("frm") else None
        to = InstanceRef.parse(rec["to"])
        spec = self.h.tenants[tenant]
        keep: InstanceRef | None
        if rec.get("phase") == "switched":
            keep, stop, res = to, (frm, rec.get("old") or ""), "kept the new copy"
        else:
            keep, stop, res = frm, (to, str(rec["new"])), "kept the old copy"
        self.h.placement[tenant] = keep
        if dry:
            return f"{tenant}: dry-run: left as is ({res} in the books)"
        if spec.launcher is None or spec.launcher.handover != "warm":
            self.h.placement[tenant] = None  # relaunched where the desired state says by the next reconcile
            return f"{tenant}: launcher no longer warm: placement unknown"
        self.retire[tenant] = stop
        err = await self.stop_old(tenant, spec)
        self.retire_done(tenant, err, "done" if keep == to else "failed", f"recovery: {res}")
        return f"{tenant}: {res}" + (f"; {err} (retried at the next reconcile)" if err else "")
