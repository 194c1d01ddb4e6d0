"""The ladder's moves: placement onto a quieter free instance, and a resize onto a bigger slice."""

from __future__ import annotations

from fsm.diagnosis import Cause, Diagnosis
from fsm.levercost import LeverCost
from fsm.outage import MoveKind
from fsm.placement import Score, occupied, rank_candidates, slices_of
from fsm.resize import plan_resize
from fsm.spec import Level, TenantSpec
from fsm.state import Pending, Step, TenantCtl
from fsm.tick_base import GUARD, PLACE, RESIZE, TickBase, WindowFn


class MoveTick(TickBase):
    __slots__ = ()

    def _off_path(self, gpu: str, devices: tuple[str, ...]) -> bool:
        topo = self.spec.topology
        limit = self.spec.policy.io_share_tier
        for d in devices:
            tier = topo.distance(gpu, d)
            if tier is None and not (topo.has(gpu) and topo.has(d)):
                return False  # unknown place: cannot be ruled out
            if tier is not None and tier <= limit:
                return False
        return True

    def place_efficacy(self, t: TenantSpec, diag: Diagnosis) -> float:
        """The share of the tail's excess a same-sized move is expected to cure."""
        policy = self.spec.policy
        efficacy = 1.0 if diag.cause is not Cause.UNKNOWN or diag.aggressors else policy.unknown_cause_efficacy
        if diag.cause is not Cause.IO:
            return efficacy
        ctl = self.tenants[t.name]
        doubt = GUARD in ctl.failed_levers or (ctl.io_doubt_until is not None and self.obs.t < ctl.io_doubt_until)
        if doubt and self._move_after_resize(ctl, diag):
            # A bigger slice on the same path did not cure the tail either: of what the ladder can
            # change, the path is what is left (caps that cut part of an aggressor's bytes may
            # leave its tail as it was; escaping the path takes all of them away).
            doubt = False
        if doubt or self._path_lesson(t):
            # Capping the I/O aggressors did not cut the tail (in this episode or one not long
            # before), or this episode's tail was as high while the path was clear: the path they
            # share is not what holds it, and escaping that path is all a same-sized move promises.
            return min(efficacy, policy.unknown_cause_efficacy)
        # What this episode says clearing the path cuts of the excess (1: it cannot say).
        return min(efficacy, max(policy.unknown_cause_efficacy, self._path_cut(t)))

    @staticmethod
    def _move_after_resize(ctl: TenantCtl, diag: Diagnosis | None) -> bool:
        """Is a move off the path the lever left after a resize that did not cure the tail? The
        ladder climbs (a move ranks below a resize), but a bigger slice on a path an I/O aggressor
        shares leaves that cause in place: without this, such a resize is final while the tail
        still violates (docs/decisions.md, "A move after a resize")."""
        return (
            diag is not None
            and diag.cause is Cause.IO
            and bool(diag.aggressors)
            and bool(ctl.stack)
            and ctl.stack[-1].lever == RESIZE
            and all(st.lever != PLACE for st in ctl.stack)
        )

    def _rank_places(
        self, t: TenantSpec, diag: Diagnosis, limit: int, avoid: tuple[str, ...] = ()
    ) -> tuple[Score | None, list[Score]]:
        """The victim's instance scored, and the best `limit` free ones a move may go to."""
        return rank_candidates(
            self.spec,
            self.obs,
            t,
            diag.cause,
            self.reserved,
            self.traffic,
            allow_gpu=lambda g: g not in self.busy_gpus and (not avoid or self._off_path(g, avoid)),
            limit=limit,
        )

    def _nowhere_lately(self, t: TenantSpec, diag: Diagnosis) -> str:
        """Why a search for this cause found nowhere to go less than `cooldown_s` ago ("": none
        did): nothing changed enough in a few ticks to rank every instance again."""
        seen = self.tenants[t.name].place_none
        if seen is not None and seen[1] == diag.cause and self.obs.t - seen[0] < self.spec.policy.cooldown_s:
            return seen[2]
        return ""

    def place_grows(self, t: TenantSpec, diag: Diagnosis) -> bool:
        """Would a move now go to a larger instance than the victim's (the best the ranking finds)?"""
        if self._nowhere_lately(t, diag):
            return False
        here, ranked = self._rank_places(t, diag, 1)
        return (
            here is not None
            and bool(ranked)
            and slices_of(self.spec, ranked[0].instance) > slices_of(self.spec, here.instance)
        )

    def _place(self, t: TenantSpec, diag: Diagnosis, window: WindowFn, avoid: tuple[str, ...] = ()) -> tuple[bool, str]:
        policy = self.spec.policy
        outage, source = self._move_outage(t, MoveKind.EXISTING)
        short = (
            self._outage_short(t, outage)
            or self._burst_now(t, PLACE, outage)
            or (self._relief_short(t, outage) if avoid else "")
        )
        if short:
            return False, short  # before the ranking: no move can happen, whatever it would find
        cost: LeverCost | None = None
        if not avoid:  # a relief move serves the capped aggressor, not the tail: budget only
            cost, why = self._pays(t, PLACE, outage, source, self.place_efficacy(t, diag), MoveKind.EXISTING)
            if why:
                return False, why
        lately = self._nowhere_lately(t, diag) if not avoid else ""
        if lately:
            return False, lately

        def rank(limit: int) -> tuple[Score | None, list[Score]]:
            return self._rank_places(t, diag, limit, avoid)

        here, ranked = rank(1)  # the best one decides; most searches end here, in a hold
        nowhere = ""
        if here is None:
            nowhere = "the victim's current MIG instance is unknown"
        elif not ranked:
            nowhere = "no free MIG instance at least as large"
        elif ranked[0].penalty >= here.penalty - policy.placement_margin:
            b = ranked[0]
            nowhere = f"no quieter instance (best {b.instance} penalty {b.penalty:.3f} vs {here.penalty:.3f} here)"
        if nowhere:
            if not avoid:
                self._update(t.name, place_none=(self.obs.t, diag.cause, nowhere))
            return False, nowhere
        assert here is not None
        best = ranked[0]
        ranked = rank(5)[1]  # five kept as evidence (the same order: the first is `best`)
        step = Step(
            level=Level.PLACED, lever=PLACE, t=self.obs.t, from_instance=here.instance, to_instance=best.instance
        )
        self.reserved.add(best.instance)
        self._acted(
            t,
            step,
            Pending(f"tenant:{t.name}", PLACE, self.obs.t),
            "escalate",
            f"{'relieve the guard: ' if avoid else ''}move to {best.instance}"
            f" (penalty {best.penalty:.3f} < {here.penalty:.3f})",
            {
                "window": window(),
                "diagnosis": diag.as_event(),
                "current": here.as_evidence(),
                "candidates": [s.as_evidence() for s in ranked[:5]],
                "outage_s": outage,
                **({"cost": cost.as_evidence()} if cost is not None else {}),
                **self._clear_path_evidence(t),
            },
        )
        self._spend(t, outage)
        return True, ""

    def _resize(self, t: TenantSpec, diag: Diagnosis, window: WindowFn) -> tuple[bool, str]:
        if self.budget_left() <= 0:
            return False, f"reconfiguration budget spent ({self.spec.policy.max_reconfigs_per_hour}/hour)"
        ts = self.obs.tenants.get(t.name)
        current = ts.instance if ts is not None and ts.instance is not None else t.instance
        if current is None:
            return False, "the victim's current MIG instance is unknown"
        # Before planning (the costly part): if not even the cheapest kind of resize fits the
        # outage budget and pays, no plan can.
        _, why = self._affordable(t, *min((*self._move_outage(t, k), k) for k in MoveKind))
        if why:
            return False, why
        occ = occupied(self.spec, self.obs) | self.reserved
        plan = plan_resize(self.spec, self.obs, current, self.busy_gpus, occ)
        if plan is None:
            return False, "no larger profile fits the placement rules beside the instances in use"
        if plan.target.slot in plan.prev_layout:
            kind = MoveKind.EXISTING  # a free bigger instance exists: a plain move
        elif current.gpu == plan.gpu and current.slot not in plan.new_layout:
            kind = MoveKind.IN_PLACE  # its own instance goes: stop, reconfigure, relaunch
        else:
            kind = MoveKind.BESIDE  # make-before-break: it serves while the new slice is made
        outage, source = self._move_outage(t, kind)
        cost, why = self._affordable(t, outage, source, kind)
        if why:
            return False, why
        now = self.obs.t
        self.layouts[plan.gpu] = plan.new_layout
        self.reconfigs.append(now)
        self.busy_gpus.add(plan.gpu)
        self.reserved.add(plan.target)
        step = Step(
            level=Level.RESIZED,
            lever=RESIZE,
            t=now,
            from_instance=current,
            to_instance=plan.target,
            gpu=plan.gpu,
            prev_layout=plan.prev_layout,
            new_layout=plan.new_layout,
        )
        self._acted(
            t,
            step,
            Pending(f"tenant:{t.name}", RESIZE, now),
            "escalate",
            f"resize {current.profile} -> {plan.target.profile} on {plan.gpu}",
            {
                "window": window(),
                "diagnosis": diag.as_event(),
                "plan": plan.as_evidence(),
                "reconfigs_last_hour": len(self.reconfigs),
                "outage_s": outage,
                "move": kind.value,
                **({"cost": cost.as_evidence()} if cost is not None else {}),
            },
        )
        self._spend(t, outage)
        return True, ""
