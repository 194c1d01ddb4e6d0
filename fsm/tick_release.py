"""Stepping back down the ladder once the tail is good: one level at a time, in reverse order."""

from __future__ import annotations

from typing import Any

from fsm.evolve import evolve
from fsm.outage import MoveKind
from fsm.placement import occupied
from fsm.resize import plan_restore
from fsm.spec import Level, TenantSpec
from fsm.state import Pending, Step
from fsm.tick_base import (
    GUARD,
    PLACE,
    RESIZE,
    _dwell,
    level_of,
)
from fsm.tick_guards import GuardTick


class ReleaseTick(GuardTick):
    __slots__ = ()

    # -- release -------------------------------------------------------------------------------
    def _release(self, t: TenantSpec) -> None:
        policy = self.spec.policy
        now = self.obs.t
        ctl = self.tenants[t.name]
        step = ctl.stack[-1]
        before = level_of(ctl)
        after = ctl.stack[-2].level if len(ctl.stack) > 1 else Level.STEADY
        pending: Pending | None = None
        target = ctl.target
        evidence: dict[str, Any] = {
            "good_windows": ctl.good,
            "value_s": ctl.last_value,
            "release_below_s": (t.slo_s or 0) * policy.release_ratio,
        }
        reason = ""
        outage = 0.0
        if step.lever == GUARD:
            reason = f"lift caps on {', '.join(step.aggressors)}"
        elif step.lever == PLACE:
            back = step.from_instance
            cur = self._instance_now(t)
            if back is None or not self._free_now(back):
                reason = "stay (the old instance is taken); release the level only"
            elif cur is not None and not self._quiet(t, back):
                # Moving back into the interference that made us leave would only flap.
                reason = f"stay on {cur} (the old instance {back} is still noisier); release the level only"
            elif self._outage_short(t, self._move_outage(t, MoveKind.EXISTING)[0]):
                reason = f"stay on {cur} (moving back would exceed the outage budget); release the level only"
            elif self._back_costs(t):
                # The tail is as good here as it would be at home: an outage to go back buys nothing.
                reason = f"stay on {cur} (moving back would cost requests for nothing); release the level only"
            else:
                target = back
                self.reserved.add(back)
                pending = Pending(f"tenant:{t.name}", PLACE, now, releasing=True)
                reason = f"move back to {back}"
                outage = self._move_outage(t, MoveKind.EXISTING)[0]
        elif where := self._moved_off(t, step):
            # A move off the path followed the resize and stayed: the grown slice is not the
            # tenant's any more (a free instance like any other); nothing to give back.
            reason = f"stay on {where} (moved off the grown slice); release the level only"
        else:  # RESIZE
            if step.gpu in self.busy_gpus:
                return  # another change on that GPU first
            ratio = self._shrink_ratio(t, step)
            if ratio is not None:
                # Is the calm the bigger slice's doing? Scale what it sees to the smaller slice
                # (linearly in slices: an upper bound for the compute part, which scales sublinearly).
                load = self._sm_now(t)
                # The worst window of the horizon, not just the good streak: a bursty tenant has
                # calm minutes on the big slice that say nothing about the small one.
                seen = max(ctl.recent) if ctl.recent else ctl.last_value
                tail = seen * ratio if seen is not None else None
                why = {}
                if load is not None and load * ratio >= policy.sm_busy:
                    why["predicted_sm_active"] = round(load * ratio, 3)
                if tail is not None and t.slo_s is not None and tail >= policy.release_ratio * t.slo_s:
                    why["predicted_tail_s"] = round(tail, 4)
                if why:
                    if self._lift_guard_below(t, evidence):
                        return  # the slice stays; caps beneath it go first (they cost others)
                    self._keep_held(t, "keep the larger slice: the tail would come back on the smaller one", why)
                    return
            keep = self._keep_slice(t)
            if keep:
                self._keep_held(t, keep, {"last_bad_t": ctl.last_bad_t})
                return
            if self.budget_left() <= 0:
                msg = "release waits for the reconfiguration budget"
                if ctl.last_reason != msg:
                    self.emit(t.name, "hold", before, before, RESIZE, msg, {})
                    self.tenants[t.name] = evolve(ctl, last_reason=msg)
                return
            assert step.gpu is not None and step.prev_layout is not None and step.to_instance is not None
            home = step.from_instance
            restored = None
            occ = (occupied(self.spec, self.obs) | self.reserved) - {step.to_instance}
            if home is not None and home not in occ:  # somebody else may have taken it meanwhile
                restored = plan_restore(self.spec, self.obs, step.gpu, step.prev_layout, step.to_instance, home, occ)
            if home is not None and self._free_now(home):
                cost = self._move_outage(t, MoveKind.EXISTING)[0]  # home first, the slice given back after
            elif restored is not None and step.to_instance.slot in restored:
                cost = self._move_outage(t, MoveKind.BESIDE)[0]
            else:
                cost = self._move_outage(t, MoveKind.IN_PLACE)[0]  # the grown instance it runs on is destroyed
            if restored is not None and home is not None and self._outage_short(t, cost):
                msg = "release waits for the outage budget"
                if ctl.last_reason != msg:
                    self.emit(t.name, "hold", before, before, RESIZE, msg, {"outage_s": cost})
                    self.tenants[t.name] = evolve(ctl, last_reason=msg)
                return
            if restored is not None and home is not None:
                outage = cost
                self.reconfigs.append(now)
                self.busy_gpus.add(step.gpu)
                target = home
                self.reserved.add(home)
                evidence["to_layout"] = [str(s) for s in restored]
                if self._free_now(home):
                    # Make-before-break: move home first, give the slice back once it is there.
                    pending = Pending(
                        f"tenant:{t.name}", RESIZE, now, releasing=True, gpu=step.gpu, then_layout=restored
                    )
                    reason = f"return to {home}, then give back {step.to_instance.profile}"
                else:
                    self.layouts[step.gpu] = restored
                    pending = Pending(f"tenant:{t.name}", RESIZE, now, releasing=True)
                    reason = f"give back {step.to_instance.profile}: return to {home} (re-created)"
            else:
                reason = "keep the larger slice (the old layout cannot come back); release the level only"
        if not policy.enforce:
            pending = None
        self.tenants[t.name] = evolve(
            ctl,
            stack=ctl.stack[:-1],
            pending=pending,
            good=0,
            bad=0,
            evidence=ctl.evidence.reset(),
            target=target,
            cooldown_until=now + policy.cooldown_s,
            dwell_until=now + _dwell(policy.dwell_s, ctl.flaps),
            last_reason="",
            released_at=now,
        )
        if outage:
            evidence["outage_s"] = outage
            self._spend(t, outage)
        self.emit(t.name, "release", before, after, step.lever, reason, evidence)

    def _moved_off(self, t: TenantSpec, step: Step) -> str:
        """Where a tenant runs that left its resize step's grown instance ("" when it runs there, or
        the step is no resize, or it cannot be told)."""
        if step.lever != RESIZE or step.to_instance is None:
            return ""
        cur = self._instance_now(t)
        return str(cur) if cur is not None and cur != step.to_instance else ""

    def _outage_hurts(self, t: TenantSpec, outage: float) -> bool:
        """An outage pushes requests over the SLO (fsm.levercost: it is longer than the SLO); only a
        warm hand-over whose gap fits inside the SLO is free. Without the cost check: never said
        (the reference ladder steps back regardless)."""
        return self.spec.policy.cost_margin is not None and t.slo_s is not None and outage > t.slo_s

    def _back_costs(self, t: TenantSpec) -> bool:
        """Moving back home pushes requests over the SLO."""
        return self._outage_hurts(t, self._move_outage(t, MoveKind.EXISTING)[0])

    def _keep_held(self, t: TenantSpec, reason: str, evidence: dict[str, Any]) -> None:
        """The larger slice stays: say why once per reason, and look again after Z more good windows."""
        ctl = self.tenants[t.name]
        if ctl.last_reason != reason:
            level = level_of(ctl)
            self.emit(t.name, "hold", level, level, RESIZE, reason, evidence)
        self.tenants[t.name] = evolve(ctl, last_reason=reason, good=0, evidence=ctl.evidence.reset())

    def _keep_slice(self, t: TenantSpec) -> str:
        """Why a larger slice stays although the tail is good now ("": it may go). Giving it back
        costs an outage that pushes requests over the SLO, and if the tail comes back, growing it
        again costs another: it goes only once the tail has been calm for a whole outage budget
        window (the span its SLO is judged over), and when the budget holds both outages."""
        policy = self.spec.policy
        outage = min(self._move_outage(t, k)[0] for k in MoveKind)  # the cheapest way back
        if not self._outage_hurts(t, outage):
            return ""
        last = self.tenants[t.name].last_bad_t
        window = policy.outage_budget_window_s
        if last is not None and self.obs.t - last < window:
            return f"keep the larger slice until the tail has been calm for {window:g} s (going back costs an outage)"
        if self._outage_short(t, 2 * outage):
            return "keep the larger slice: the outage budget cannot pay for giving it back and growing it again"
        return ""

    def _lift_guard_below(self, t: TenantSpec, evidence: dict[str, Any]) -> bool:
        """The tail is good and the step on top stays: lift a guard beneath it, which costs its
        capped tenants throughput and is not what holds the tail now (evidence re-guards if it is)."""
        ctl = self.tenants[t.name]
        idx = next((i for i in range(len(ctl.stack) - 2, -1, -1) if ctl.stack[i].lever == GUARD), None)
        if idx is None:
            return False
        guard = ctl.stack[idx]
        stack = ctl.stack[:idx] + ctl.stack[idx + 1 :]
        self.tenants[t.name] = evolve(
            ctl,
            stack=stack,
            good=0,
            evidence=ctl.evidence.reset(),
            cooldown_until=self.obs.t + self.spec.policy.cooldown_s,
        )
        level = level_of(ctl)
        self.emit(
            t.name,
            "release",
            level,
            level,
            GUARD,
            f"lift caps on {', '.join(guard.aggressors)} (the larger slice stays)",
            evidence,
        )
        return True
