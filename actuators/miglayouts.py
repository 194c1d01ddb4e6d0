"""The MIG lever: GPU instance layouts, their drift, and interrupted changes.

A change runs as a background task per GPU (`gpu:<name>`): journal the intent (before, after),
destroy then create (actuators/migplan.py), read back, journal the outcome. A change that fails
half-way is rolled back to its start, so a GPU is never left in between on purpose.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from actuators.hands import Check, Hands, ReconcileReport, fmt_layout, layout_strs
from actuators.journal import JournalError
from actuators.migplan import MigPlan, PlanError, plan
from actuators.nvsmi import GiRow, NvsmiError
from fsm.desired import DesiredState
from fsm.mig import GpuModel, Layout, Slot, normalise

log = logging.getLogger("tailguard.actuators")


class MigLayouts:
    def __init__(self, h: Hands, recheck_s: float) -> None:
        self.h = h
        self.open: dict[str, dict[str, Any]] = {}  # gpu -> MIG intent not closed in the journal yet
        self._locks: dict[str, asyncio.Lock] = {}
        # A GPU whose layout was read back equal to the desired one is not read again (one
        # `nvidia-smi mig -lgi` each, ~0.1 s or more) for recheck_s while the desired layout
        # stays the same: drift is still found, within that time, not on every tick.
        self.recheck_s = recheck_s
        self.converged: dict[str, tuple[Layout, float]] = {}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return dict(sorted(self.open.items()))

    def _lock(self, gpu: str) -> asyncio.Lock:
        return self._locks.setdefault(gpu, asyncio.Lock())

    def occupied(self, gpu: str, exclude: set[str] = frozenset()) -> dict[Slot, str]:  # type: ignore[assignment]
        """Instances tailguard knows a tenant runs on (never destroyed under it)."""
        occ: dict[Slot, str] = {}
        for t, ref in self.h.placement.items():
            if ref is not None and ref.gpu == gpu and t not in exclude:
                occ[ref.slot] = t
        for name, spec in self.h.tenants.items():
            if name not in self.h.placement and spec.home is not None and spec.home.gpu == gpu:
                occ[spec.home.slot] = name
        return occ

    async def reconcile(self, desired: DesiredState, rep: ReconcileReport) -> list[Check]:
        """Start a check (then, when needed, a change) per GPU whose layout is due: each in its own
        task `gpu:<name>`, so a hung nvidia-smi holds that GPU only. Returns the checks; each one's
        report is complete once its `planned` future is done (the change may still be running)."""
        h = self.h
        checks: list[Check] = []
        loop = asyncio.get_running_loop()
        for gpu, want in sorted(desired.layouts.items()):
            target = f"gpu:{gpu}"
            if gpu not in h.gpus:
                rep.errors.append(f"{target}: unknown GPU (not in [[gpus]])")
                continue
            if h.in_flight(target):
                rep.busy.append(target)
                continue
            want_l = normalise(want)
            seen = self.converged.get(gpu)
            now = h.clock()
            if seen is not None and seen[0] == want_l and 0 <= now - seen[1] < self.recheck_s:
                continue
            wait = h.backoff.wait_s(target, now, want_l)
            if wait > 0:
                f = h.backoff.failing[target]
                rep.deferred.append(f"{target}: retry in {wait:.0f} s ({f.failures} failures; last: {f.error})")
                continue
            sub = ReconcileReport(rep.t, rep.dry_run, hands_off=rep.hands_off)
            planned: asyncio.Future[None] = loop.create_future()
            h.tasks[target] = asyncio.create_task(self._check(gpu, want_l, set(desired.placements), sub, planned),
                                                  name=target)  # fmt: skip
            checks.append(Check(target, sub, planned))
        return checks

    def _failed(self, target: str, want: Layout, err: str) -> None:
        self.h.outcome(target, False, err, outage_s=0.0)
        delay = self.h.backoff.failed(target, self.h.clock(), want, err)
        if delay > 0:
            log.warning("%s: next attempt in %.0f s (backoff)", target, delay)

    async def _check(self, gpu: str, want: Layout, moving: set[str], rep: ReconcileReport,
                     planned: asyncio.Future[None]) -> None:  # fmt: skip
        target = f"gpu:{gpu}"
        try:
            try:
                work = await self._plan(gpu, want, moving, rep)
            finally:
                for op in rep.ops:
                    log.info("%s%s", "[dry-run] would " if rep.dry_run else "", op)
                if not planned.done():
                    planned.set_result(None)
            if work is not None:
                await self.run_change(*work)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not kill the loop; report it
            log.exception("%s: unexpected error", target)
            self.h.outcome(target, False, f"unexpected error: {e}", outage_s=0.0)

    async def _plan(self, gpu: str, want: Layout, moving: set[str], rep: ReconcileReport
                    ) -> tuple[MigPlan, GpuModel, tuple[Slot, ...]] | None:  # fmt: skip
        """Read the GPU (GPU instances and compute instances) and plan; None: nothing to start."""
        h = self.h
        target = f"gpu:{gpu}"
        now = h.clock()
        try:
            g = h.gpus[gpu]
            model = await h.gpu_model(g)
            rows = await h.gi_rows(g)
            actual = normalise(Slot(r.start, model.profile(r.profile_id).name) for r in rows)
            # A GPU instance without its compute instance runs nothing: drift as much as a missing GI.
            half = await self.half_made(gpu, model, rows)
            p = plan(gpu, model, actual, want)
        except (NvsmiError, PlanError, KeyError) as e:
            self.converged.pop(gpu, None)
            rep.errors.append(str(e))
            h.outcome(target, False, str(e), outage_s=0.0)  # read again next tick: a read changes nothing, no backoff
            return None
        if p.empty and not half:
            self.converged[gpu] = (want, now)
            h.backoff.ok(target)
            return None
        self.converged.pop(gpu, None)
        occ = self.occupied(gpu, exclude=moving)
        blocked = [f"{s} (tenant {occ[s]})" for s in p.destroy if s in occ]
        if blocked:
            msg = f"{target}: will not destroy instances in use: {', '.join(blocked)}"
            rep.errors.append(msg)
            h.outcome(target, False, msg, outage_s=0.0)
            return None
        rep.ops.extend(f"{gpu}: repair {s} (GPU instance without its compute instance)" for s in half)
        rep.ops.extend(p.ops())
        if rep.dry_run:
            return None
        rep.started.append(target)
        return p, model, half

    async def half_made(self, gpu: str, model: GpuModel, rows: list[GiRow]) -> tuple[Slot, ...]:
        """The instances whose GPU instance has no compute instance (`nvidia-smi mig -lci`)."""
        if not rows:
            return ()
        g = self.h.gpus[gpu]
        cis = {c.gi for c in await self.h.nvsmi.lci(g.index) if c.gpu == g.index}
        return normalise(Slot(r.start, model.profile(r.profile_id).name) for r in rows if r.gi not in cis)

    async def run_change(self, p: MigPlan, model: GpuModel, half: tuple[Slot, ...] = ()) -> None:
        h = self.h
        target = f"gpu:{p.gpu}"
        try:
            async with self._lock(p.gpu):
                try:
                    intent = h.journal.append("mig", phase="intent", gpu=p.gpu, before=[str(s) for s in p.before],
                                              after=[str(s) for s in p.after])  # fmt: skip
                except JournalError as e:
                    h.outcome(target, False, f"not applied: {e}", outage_s=0.0)
                    return
                # Open until its done/failed record: a rotation in between (its step records can
                # trigger one) carries it in the new file's snapshot, or recovery would miss it.
                self.open[p.gpu] = intent
                err = await self.converge(p.gpu, model, p.after) if half else await self.apply_plan(p, model)
                if err:
                    # Roll back to the layout we started from, so it is never left in between.
                    rb_err = await self.converge(p.gpu, model, p.before)
                    now = await h.safe_layout(p.gpu)
                    note = "rolled back" if not rb_err else f"rollback failed ({rb_err}); layout now {fmt_layout(now)}"
                    h.jot("mig", phase="failed", gpu=p.gpu, error=err, layout=layout_strs(now))
                    self.open.pop(p.gpu, None)
                    self._failed(target, p.after, f"{err}; {note}")
                    return
                now = await h.safe_layout(p.gpu)
                ok = now == p.after
                h.jot("mig", phase="done" if ok else "failed", gpu=p.gpu, layout=layout_strs(now))
                self.open.pop(p.gpu, None)
                if ok:
                    h.backoff.ok(target)
                    h.outcome(target, True)
                else:
                    self._failed(target, p.after, f"read back {fmt_layout(now)}, expected {fmt_layout(p.after)}")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not kill the loop; report it
            log.exception("%s: unexpected error", target)
            h.outcome(target, False, f"unexpected error: {e}", outage_s=0.0)

    async def apply_plan(self, p: MigPlan, model: GpuModel) -> str:
        """Run the steps; '' on success, else the first error (the caller rolls back)."""
        h = self.h
        g = h.gpus[p.gpu]
        try:
            rows = await h.gi_rows(g)
        except NvsmiError as e:
            return str(e)
        by_slot = {Slot(r.start, model.profile(r.profile_id).name): r.gi for r in rows}
        for s in p.destroy:
            gi = by_slot.get(s)
            if gi is None:
                continue  # already gone: idempotent
            try:
                await h.nvsmi.destroy_ci(g.index, gi)
                await h.nvsmi.destroy_gi(g.index, gi)
            except NvsmiError as e:
                # "In use by another client" is reported, never retried blindly.
                return str(e)
            h.jot("mig", phase="step", gpu=p.gpu, op=f"destroy {s}", gi=gi)
        for s in p.create:
            prof = model.profile(s.profile)
            try:
                gi, _ = await h.nvsmi.create_gi(g.index, prof.lgip_id, s.start, model.mem_slots)
            except NvsmiError as e:
                return str(e)
            h.jot("mig", phase="step", gpu=p.gpu, op=f"create {s}", gi=gi)
        return ""

    async def converge(self, gpu: str, model: GpuModel, want: Layout) -> str:
        """Bring a GPU to `want` from wherever it is now ('' on success)."""
        try:
            # A GI without its compute instance (a create or destroy cut short) is destroyed first
            # (the plan recreates it), then the layout is read: the plan starts from what is left.
            await self.repair_cis(gpu)
            cur = await self.h.read_layout(gpu)
            p = plan(gpu, model, cur, want)
        except (NvsmiError, PlanError, KeyError) as e:
            return str(e)
        return await self.apply_plan(p, model) if not p.empty else ""

    async def repair_cis(self, gpu: str) -> None:
        h = self.h
        g = h.gpus[gpu]
        gis = {r.gi for r in await h.gi_rows(g)}
        if not gis:
            return
        cis = {c.gi for c in await h.nvsmi.lci(g.index) if c.gpu == g.index}
        for gi in sorted(gis - cis):
            await h.nvsmi.destroy_gi(g.index, gi)  # half-made: destroy, the plan recreates it
            h.jot("mig", phase="step", gpu=gpu, op="destroy a GPU instance without compute instance", gi=gi)

    async def recover(self, gpu: str, rec: dict[str, Any]) -> str:
        """Finish or roll back a change the journal left open."""
        h = self.h
        if gpu not in h.gpus:
            return "unknown GPU, left as is"
        before = tuple(sorted(Slot.parse(s) for s in rec.get("before", [])))
        after = tuple(sorted(Slot.parse(s) for s in rec.get("after", [])))
        try:
            model = await h.gpu_model(h.gpus[gpu])
            await self.repair_cis(gpu)
            cur = await h.read_layout(gpu)
        except (NvsmiError, KeyError) as e:
            return f"cannot read: {e}"
        if cur in (before, after):
            res = "was complete" if cur == after else "had not started"
        else:
            err = await self.converge(gpu, model, after)
            if not err:
                res = "finished"
            else:
                err2 = await self.converge(gpu, model, before)
                res = "rolled back" if not err2 else f"FAILED: {err}; rollback: {err2}"
        now = await h.safe_layout(gpu)
        ok = now in (before, after)
        h.jot("mig", phase="done" if ok else "failed", gpu=gpu, layout=layout_strs(now), note=f"recovery: {res}")
        self.open.pop(gpu, None)
        return res
