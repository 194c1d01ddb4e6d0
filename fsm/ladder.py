"""The escalation ladder per sensitive tenant, and the host-wide arbitration between tenants.

steady -> guarded -> placed -> resized, escalating one lever at a time after Y violating windows
(outside cooldown and backoff, with nothing in flight), the diagnosis picking the entry lever;
stepping back one level at a time, in reverse order, after Z good windows and the dwell time.
Host-wide: one MIG change per GPU at a time, a reconfiguration budget per rolling hour, never two
victims sent to one instance, never a cap on a protected or sensitive tenant.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from fsm.desired import DecisionEvent, MpsLimit, Throttle
from fsm.diagnosis import Aggressor, Cause, Diagnosis, Traffic, diagnose, victim_anchor
from fsm.evidence import EvidenceParams, as_evidence, evidence_params
from fsm.evidence import update as update_evidence
from fsm.guardbudget import binds, charge_guards
from fsm.levercost import LeverCost, estimate
from fsm.mig import Slot
from fsm.observation import InstanceRef, Observation
from fsm.outage import MoveKind
from fsm.placement import occupied, rank_candidates, score, slices_of
from fsm.quantiles import Verdict
from fsm.resize import plan_resize, plan_restore
from fsm.spec import LEVEL_ORDER, HostSpec, Level, Role, TenantSpec
from fsm.state import ControllerState, Pending, Step, TenantCtl

HOUR_S = 3600.0
GUARD, PLACE, RESIZE = "guard", "place", "resize"
_LEVEL_OF = {GUARD: 1, PLACE: 2, RESIZE: 3}  # rank of the level each lever leads to
EPISODES_KEPT = 8  # episode lengths the cost model learns from


def level_of(ctl: TenantCtl) -> Level:
    return ctl.level


def level_rank(level: Level) -> int:
    return LEVEL_ORDER.index(level)


@dataclass(slots=True)
class Tick:
    """Working copy of the controller state for one tick (mutable inside decide() only)."""

    spec: HostSpec
    obs: Observation
    tenants: dict[str, TenantCtl]
    layouts: dict[str, tuple[Slot, ...]]
    reconfigs: list[float]
    seq: int
    events: list[DecisionEvent] = field(default_factory=list)
    reserved: set[InstanceRef] = field(default_factory=set)
    busy_gpus: set[str] = field(default_factory=set)
    evidence_params: EvidenceParams = field(default_factory=EvidenceParams)
    guard_cost: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    _traffic: Traffic | None = None

    @property
    def traffic(self) -> Traffic:
        if self._traffic is None:
            self._traffic = Traffic.build(self.spec, self.obs)
        return self._traffic

    @staticmethod
    def start(state: ControllerState, obs: Observation, spec: HostSpec) -> Tick:
        now = obs.t
        tick = Tick(
            spec=spec,
            obs=obs,
            tenants={t.name: state.tenant(t.name) for t in spec.sensitive()},
            layouts=dict(state.layouts),
            reconfigs=[r for r in state.reconfigs if r > now - HOUR_S],
            seq=state.seq,
            evidence_params=evidence_params(spec.policy),
            guard_cost=charge_guards(state, obs, spec),
        )
        for ctl in tick.tenants.values():
            if ctl.target is not None:
                tick.reserved.add(ctl.target)
            if ctl.pending is not None:
                tick.busy_gpus.update(s.gpu for s in ctl.stack[-1:] if s.gpu is not None and s.lever == RESIZE)
        # A GPU whose managed layout is not yet the actual one has a change under way.
        for gpu, layout in tick.layouts.items():
            g = obs.gpus.get(gpu)
            if g is not None and g.layout is not None and tuple(g.layout) != layout:
                tick.busy_gpus.add(gpu)
        return tick

    # -- events --------------------------------------------------------------------------------
    def emit(
        self, tenant: str, kind: str, before: Level, after: Level, lever: str, reason: str, evidence: dict[str, Any]
    ) -> None:
        self.seq += 1
        self.events.append(
            DecisionEvent(
                seq=self.seq,
                t=self.obs.t,
                tenant=tenant,
                kind=kind,
                level_from=before.value,
                level_to=after.value,
                lever=lever,
                reason=reason,
                evidence=evidence,
                applied=self.spec.policy.enforce,
            )
        )

    def budget_left(self) -> int:
        return self.spec.policy.max_reconfigs_per_hour - len(self.reconfigs)

    # -- one tenant ----------------------------------------------------------------------------
    def step(self, t: TenantSpec) -> None:
        policy = self.spec.policy
        now = self.obs.t
        ctl = self.tenants[t.name]
        ts = self.obs.tenants.get(t.name)
        slo = t.slo_s if t.slo_s is not None else float("inf")
        ev, w = update_evidence(ctl.evidence, ts.latency if ts else None, t.quantile, slo, self.evidence_params, now)
        # One new TenantCtl for the whole update: replace() rebuilds every field, and three of them
        # in a row were a third of a calm tick (issue 10's decide() budget; same values as before).
        upd: dict[str, Any] = {"evidence": ev}
        if ts is not None and ts.outage_s is not None:
            upd["measured_outage_s"] = ts.outage_s
        last = w.value if w.value is not None else ctl.last_value
        if w.verdict is Verdict.VIOLATING:
            start = ctl.episode_start if ctl.episode_start is not None else now
            upd.update(bad=ctl.bad + 1, good=0, last_value=last, episode_start=start)
        elif w.verdict is Verdict.GOOD:
            upd.update(good=ctl.good + 1, bad=0, last_value=last)
        elif w.verdict is Verdict.BETWEEN:
            upd.update(good=0, bad=0, last_value=last)
        if w.value is not None and w.count >= policy.min_window_count:
            upd["recent"] = (*ctl.recent, w.value)[-policy.release_horizon_windows :]
        ctl = replace(ctl, **upd)
        self.tenants[t.name] = ctl
        self._check_pending(t)
        ctl = self.tenants[t.name]
        if ctl.pending is not None:
            return
        level = level_of(ctl)
        free = (ctl.cooldown_until is None or now >= ctl.cooldown_until) and (
            ctl.backoff_until is None or now >= ctl.backoff_until
        )
        early = ev.up >= self.evidence_params.h / policy.y_windows  # one full tick of evidence
        if ctl.bad >= 1 and free:
            self._escalate(t, w.value, slo)
        elif policy.early_guard and early and level is Level.STEADY and free:
            self._early_guard(t, w.value, slo)
        elif level is Level.GUARDED and free and self._guard_useless(t):
            self._lift_useless_guard(t)  # do not wait for the next trigger: it costs the capped now
        elif level is Level.GUARDED and free and self._relief_due(t):
            self._relieve(t, w.value, slo)
        elif ctl.good >= 1 and level is not Level.STEADY and free and (ctl.dwell_until or 0.0) <= now:
            self._release(t)
        elif ctl.good >= 1 and level is Level.STEADY and (ctl.failures or ctl.episode_start is not None):
            # A calm stretch ends the episode: failed levers may be tried again next time, and its
            # length teaches the cost model how long this tenant's episodes last.
            episodes = ctl.episodes
            if ctl.episode_start is not None:
                episodes = (*episodes, now - ctl.episode_start)[-EPISODES_KEPT:]
            self.tenants[t.name] = replace(
                ctl, failures=0, failed_levers=(), episode_start=None, last_reason="", episodes=episodes
            )
        elif (
            level is Level.STEADY
            and ctl.flaps
            and ctl.released_at is not None
            and now - ctl.released_at > 4 * _dwell(policy.dwell_s, ctl.flaps)
        ):
            self.tenants[t.name] = replace(ctl, flaps=0)  # calm for long enough: forget the flapping

    # -- in-flight operations ------------------------------------------------------------------
    def _check_pending(self, t: TenantSpec) -> None:
        ctl = self.tenants[t.name]
        p = ctl.pending
        if p is None:
            return
        now = self.obs.t
        act = self.obs.actuation
        failed = [o for o in act.outcomes if not o.ok and o.target in (p.target, *self._aux_targets(ctl))]
        if failed:
            self._fail(t, p, "fail", failed[0].error or "operation failed", {"target": failed[0].target})
            return
        if now - p.since > self.spec.policy.in_flight_timeout_s:
            self._fail(t, p, "timeout", f"no completion within {self.spec.policy.in_flight_timeout_s:g}s", {})
            return
        if p.target in act.in_flight or any(x in act.in_flight for x in self._aux_targets(ctl)):
            return
        ts = self.obs.tenants.get(t.name)
        actual = ts.instance if ts is not None else None
        want = ctl.target
        layout_ok = True
        top = ctl.stack[-1] if ctl.stack and not p.releasing else None
        gpu = top.gpu if top is not None and top.lever == RESIZE else None
        if gpu is not None and gpu in self.layouts:
            g = self.obs.gpus.get(gpu)
            layout_ok = g is not None and g.layout is not None and tuple(g.layout) == self.layouts[gpu]
        if (want is None or actual == want) and layout_ok:
            lvl = level_of(ctl)
            if p.then_layout is not None and p.gpu is not None:
                self.layouts[p.gpu] = p.then_layout  # second phase: give the slice back
                self.busy_gpus.add(p.gpu)
            evidence: dict[str, Any] = {"target": p.target}
            stack = ctl.stack
            if actual is not None and p.lever in (PLACE, RESIZE):
                stack, lifted = self._drop_stale_guards(stack, actual.gpu)
                if lifted:
                    evidence["caps_lifted"] = lifted  # the victim left their path: the caps have no purpose
            self.tenants[t.name] = replace(ctl, pending=None, stack=stack)
            self.emit(t.name, "complete", lvl, level_of(self.tenants[t.name]), p.lever, "operation finished", evidence)

    def _drop_stale_guards(self, stack: tuple[Step, ...], anchor: str) -> tuple[tuple[Step, ...], list[str]]:
        """After the victim moved to `anchor`'s GPU, keep only the caps on devices that still share
        its path (or whose place is unknown); a guard step left with nothing to hold is removed,
        so the guard can be tried afresh if interference finds the victim at its new place."""
        lifted: list[str] = []
        out: list[Step] = []
        for st in stack:
            if st.lever != GUARD:
                out.append(st)
                continue
            caps = []
            for c in st.caps:
                if self._off_path(anchor, (c.device,)):
                    lifted.append(f"{c.tenant}:{c.device}")
                else:
                    caps.append(c)
            mps = [m for m in st.mps if m.gpu == anchor]
            lifted += [f"{m.tenant}:mps@{m.gpu}" for m in st.mps if m.gpu != anchor]
            if caps or mps:
                out.append(replace(st, caps=tuple(caps), mps=tuple(mps)))
        return tuple(out), lifted

    @staticmethod
    def _aux_targets(ctl: TenantCtl) -> tuple[str, ...]:
        top = ctl.stack[-1] if ctl.stack else None
        return (f"gpu:{top.gpu}",) if top is not None and top.gpu is not None and top.lever == RESIZE else ()

    def _fail(self, t: TenantSpec, p: Pending, kind: str, reason: str, evidence: dict[str, Any]) -> None:
        policy = self.spec.policy
        ctl = self.tenants[t.name]
        before = level_of(ctl)
        failures = ctl.failures + 1
        backoff = min(policy.backoff_max_s, policy.backoff_s * (2 ** (failures - 1)))
        stack = ctl.stack
        target = ctl.target
        if not p.releasing and stack:
            # Undo the step that failed; the next trigger tries the next lever.
            step = stack[-1]
            stack = stack[:-1]
            target = step.from_instance if step.lever in (PLACE, RESIZE) else target
            if step.lever == RESIZE and step.gpu is not None and step.prev_layout is not None:
                self.layouts[step.gpu] = step.prev_layout
        failed_levers = ctl.failed_levers if p.releasing else tuple(sorted({*ctl.failed_levers, p.lever}))
        ctl = replace(
            ctl,
            stack=stack,
            pending=None,
            failures=failures,
            failed_levers=failed_levers,
            backoff_until=self.obs.t + backoff,
            target=target,
            last_reason=reason,
        )
        self.tenants[t.name] = ctl
        self.emit(
            t.name,
            kind,
            before,
            level_of(ctl),
            p.lever,
            reason,
            {**evidence, "backoff_s": backoff, "failures": failures},
        )

    # -- escalation ----------------------------------------------------------------------------
    def _early_guard(self, t: TenantSpec, value: float | None, slo: float) -> None:
        """Anticipation: the first violating window with a high-bandwidth aggressor on the path
        is enough for the cheap, reversible lever; the heavy ones still wait for Y windows."""
        if not (self.spec.policy.guards or self.spec.policy.mps) or GUARD in self.tenants[t.name].failed_levers:
            return
        diag = diagnose(self.spec, self.obs, t, self.traffic)
        if diag.cause is not Cause.IO or not diag.aggressors:
            return
        window = self._window(t, value, slo)
        self._guard(t, diag, window)

    def _escalate(self, t: TenantSpec, value: float | None, slo: float) -> None:
        policy = self.spec.policy
        if self._guard_useless(t):
            self._lift_useless_guard(t)  # a release like any other: the next lever after the cooldown
            return
        ctl = self.tenants[t.name]
        level = level_of(ctl)
        diag = diagnose(self.spec, self.obs, t, self.traffic)
        done = {st.lever for st in ctl.stack}
        # I/O (or unknown) cause: the cheap guard first; compute or memory: skip to placement.
        first = [GUARD, PLACE, RESIZE] if diag.cause in (Cause.IO, Cause.UNKNOWN) else [PLACE, RESIZE]
        order = [lv for lv in first if lv not in done and _LEVEL_OF[lv] > level_rank(level)]
        enabled = {GUARD: policy.guards or policy.mps, PLACE: policy.placement, RESIZE: policy.mig}
        window = self._window(t, value, slo)
        why_not: dict[str, str] = {}
        for lever in order:
            if not enabled[lever]:
                why_not[lever] = "disabled by policy"
                continue
            if lever in ctl.failed_levers:
                why_not[lever] = "failed in this episode"
                continue
            ok, reason = self._try(lever, t, diag, window)
            if ok:
                return
            why_not[lever] = reason
        reason = "; ".join(f"{k}: {v}" for k, v in why_not.items()) or "no lever left"
        # Re-announce a hold only when its gist changes (not on every new penalty figure).
        gist = "; ".join(f"{k}: {v.split(' (')[0]}" for k, v in why_not.items()) or "no lever left"
        if gist != ctl.last_reason:
            self.emit(
                t.name,
                "hold",
                level,
                level,
                "",
                reason,
                {"window": window, "diagnosis": {"cause": diag.cause.value, **diag.evidence}},
            )
        # Re-arm: the next attempt comes after Y more violating windows, not on every tick.
        cur = self.tenants[t.name]
        self.tenants[t.name] = replace(cur, last_reason=gist, bad=0, evidence=cur.evidence.reset())

    def _window(self, t: TenantSpec, value: float | None, slo: float) -> dict[str, Any]:
        """The SLO evidence an escalation shows (fsm.evidence)."""
        ctl = self.tenants[t.name]
        return {
            "value_s": value,
            "slo_s": slo,
            "quantile": t.quantile,
            "bad_ticks": ctl.bad,
            **as_evidence(ctl.evidence, t.quantile, self.evidence_params),
        }

    def _try(self, lever: str, t: TenantSpec, diag: Diagnosis, window: dict[str, Any]) -> tuple[bool, str]:
        if lever == GUARD:
            return self._guard(t, diag, window)
        if lever == PLACE:
            return self._place(t, diag, window)
        return self._resize(t, diag, window)

    def _acted(
        self, t: TenantSpec, step: Step, pending: Pending | None, kind: str, reason: str, evidence: dict[str, Any]
    ) -> None:
        policy = self.spec.policy
        now = self.obs.t
        ctl = self.tenants[t.name]
        before = level_of(ctl)
        step = replace(step, bad_share=ctl.evidence.bad_share())
        target = step.to_instance if step.to_instance is not None else ctl.target
        if not policy.enforce:
            pending = None  # dry-run: nothing will happen, so nothing is waited for
        flaps = ctl.flaps
        if ctl.released_at is not None and now - ctl.released_at < 2 * _dwell(policy.dwell_s, flaps):
            flaps += 1  # re-escalated soon after stepping back: hold the next level longer
        ctl = replace(
            ctl,
            stack=(*ctl.stack, step),
            pending=pending,
            bad=0,
            good=0,
            evidence=ctl.evidence.reset(),
            cooldown_until=now + policy.cooldown_s,
            dwell_until=now + _dwell(policy.dwell_s, flaps),
            target=target,
            last_reason="",
            flaps=flaps,
        )
        self.tenants[t.name] = ctl
        self.emit(t.name, kind, before, step.level, step.lever, reason, evidence)

    def _guard(self, t: TenantSpec, diag: Diagnosis, window: dict[str, Any]) -> tuple[bool, str]:
        policy = self.spec.policy
        now = self.obs.t
        caps: list[Throttle] = []
        names: list[str] = []
        if policy.guards:
            for a in diag.aggressors:
                spec_a = self.spec.tenants[a.tenant]
                if not a.throttleable or spec_a.role in (Role.PROTECTED, Role.SENSITIVE):
                    continue
                if self.guard_budget_spent(a.tenant):
                    continue  # its caps have cost it its share of throughput: other levers now
                new = self._caps_for(spec_a, a, t.name, now)
                if new:
                    caps.extend(new)
                    names.append(a.tenant)
        mps: list[MpsLimit] = []
        if policy.mps:
            gpu = victim_anchor(self.spec, self.obs, t)
            for o in sorted(self.spec.tenants.values(), key=lambda x: x.name):
                if o.role is Role.COMPUTE and o.mps and o.gpu == gpu and gpu is not None:
                    mps.append(MpsLimit(o.name, gpu, policy.mps_guard_percent, now + policy.throttle_expiry_s))
                    names.append(o.name)
        if not caps and not mps:
            spent = [a.tenant for a in diag.aggressors if self.guard_budget_spent(a.tenant)]
            if spent:
                return False, f"the throughput budget of {', '.join(spent)} is spent (guard_cost_share)"
            return False, "no throttleable aggressor on the victim's path"
        step = Step(
            level=Level.GUARDED,
            lever=GUARD,
            t=now,
            aggressors=tuple(sorted(set(names))),
            caps=tuple(sorted(caps)),
            mps=tuple(sorted(mps)),
        )
        self._acted(
            t,
            step,
            None,
            "escalate",
            f"{diag.cause.value} cause: cap {len(caps)} device(s) of {', '.join(sorted(set(names)))}",
            {
                "window": window,
                "diagnosis": {"cause": diag.cause.value, **diag.evidence},
                "caps": [
                    {"tenant": c.tenant, "device": c.device, "read_bps": c.read_bps, "write_bps": c.write_bps}
                    for c in caps
                ],
                "mps": [{"tenant": m.tenant, "percent": m.percent} for m in mps],
            },
        )
        return True, ""

    def _caps_for(self, who: TenantSpec, a: Aggressor, victim: str, now: float) -> list[Throttle]:
        policy = self.spec.policy
        ts = self.obs.tenants.get(who.name)
        expires = now + policy.throttle_expiry_s
        out = []
        for dev, _bps in a.devices:
            if dev.startswith("pcie:"):
                continue
            rate = ts.io.get(dev) if ts is not None and ts.io else None
            rd = rate.read_bps if rate is not None else None
            wr = rate.write_bps if rate is not None else None
            out.append(
                Throttle(
                    tenant=who.name,
                    device=dev,
                    cgroup=who.cgroup,
                    read_bps=max(policy.throttle_floor_bps, policy.throttle_factor * rd) if rd else None,
                    write_bps=max(policy.throttle_floor_bps, policy.throttle_factor * wr) if wr else None,
                    expires_at=expires,
                    victim=victim,
                )
            )
        if not out and who.devices:
            # Only its GPU traffic is seen: cap the block devices it is configured to read.
            bps = sum(b for _, b in a.devices)
            cap = max(policy.throttle_floor_bps, policy.throttle_factor * bps)
            out = [Throttle(who.name, d, who.cgroup, cap, cap, expires, victim) for d in who.devices]
        return out

    # -- a guard that does not help costs the capped tenants for nothing -----------------------------
    def _guard_useless(self, t: TenantSpec) -> bool:
        if not self.spec.policy.enforce:
            return False  # dry-run: nothing was capped, so nothing can be learned of the caps
        ctl = self.tenants[t.name]
        top = ctl.stack[-1] if ctl.stack else None
        if top is None or top.lever != GUARD or top.bad_share is None:
            return False
        if self.obs.t - top.t < 2 * self.spec.policy.rate_tau_s:
            return False  # the recent share still holds requests from before the guard
        now = ctl.evidence.bad_share()
        return now is not None and now >= (1.0 - self.spec.policy.guard_min_cut) * top.bad_share

    def _lift_useless_guard(self, t: TenantSpec) -> None:
        ctl = self.tenants[t.name]
        top = ctl.stack[-1]
        before = level_of(ctl)
        now = ctl.evidence.bad_share()
        self.tenants[t.name] = replace(
            ctl,
            stack=ctl.stack[:-1],
            failed_levers=tuple(sorted({*ctl.failed_levers, GUARD})),
            cooldown_until=self.obs.t + self.spec.policy.cooldown_s,
        )
        self.emit(
            t.name,
            "release",
            before,
            level_of(self.tenants[t.name]),
            GUARD,
            f"lift caps on {', '.join(top.aggressors)}: they did not cut the tail",
            {
                "bad_share_at_guard": round(top.bad_share or 0.0, 4),
                "bad_share_now": round(now or 0.0, 4),
                "guard_min_cut": self.spec.policy.guard_min_cut,
            },
        )

    # -- guard relief: a binding guard costs the aggressor throughput for as long as it holds ------
    def _relief_due(self, t: TenantSpec) -> bool:
        """The guard on top has held for guard_relief_s and still binds (the aggressor runs at its
        cap), and placement may be tried: moving the victim off the path lets the caps go."""
        policy = self.spec.policy
        ctl = self.tenants[t.name]
        top = ctl.stack[-1]
        if (
            policy.guard_relief_s is None
            or not policy.placement
            or PLACE in ctl.failed_levers
            or top.lever != GUARD
            or not top.caps
            or self.obs.t - top.t < policy.guard_relief_s
            or ctl.evidence.up > 0
        ):
            return False
        return any(binds(c, self.obs) for c in top.caps)

    def _relieve(self, t: TenantSpec, value: float | None, slo: float) -> None:
        ctl = self.tenants[t.name]
        devices = tuple(sorted({c.device for c in ctl.stack[-1].caps}))
        diag = diagnose(self.spec, self.obs, t, self.traffic)
        window = {**self._window(t, value, slo), "relief": True}
        ok, _ = self._place(t, diag, window, avoid=devices)
        if not ok:
            # Nowhere quieter off the path: keep the guard; look again after another relief period.
            top = ctl.stack[-1]
            self.tenants[t.name] = replace(ctl, stack=(*ctl.stack[:-1], replace(top, t=self.obs.t)))

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

    def _place(
        self, t: TenantSpec, diag: Diagnosis, window: dict[str, Any], avoid: tuple[str, ...] = ()
    ) -> tuple[bool, str]:
        policy = self.spec.policy
        outage, source = self._move_outage(t, MoveKind.EXISTING)
        short = self._outage_short(t, outage)
        if short:
            return False, short  # before the ranking: no move can happen, whatever it would find
        cost: LeverCost | None = None
        if not avoid:  # a relief move serves the capped aggressor, not the tail: budget only
            efficacy = 1.0 if diag.cause is not Cause.UNKNOWN or diag.aggressors else policy.unknown_cause_efficacy
            cost, why = self._pays(t, PLACE, outage, source, efficacy)
            if why:
                return False, why
        here, ranked = rank_candidates(
            self.spec,
            self.obs,
            t,
            diag.cause,
            self.reserved,
            self.traffic,
            allow_gpu=lambda g: g not in self.busy_gpus and (not avoid or self._off_path(g, avoid)),
            limit=5,  # the best one is taken; five are kept as evidence
        )
        if here is None:
            return False, "the victim's current MIG instance is unknown"
        if not ranked:
            return False, "no free MIG instance at least as large"
        best = ranked[0]
        if best.penalty >= here.penalty - policy.placement_margin:
            return False, (
                f"no quieter instance (best {best.instance} penalty {best.penalty:.3f} vs {here.penalty:.3f} here)"
            )
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
                "window": window,
                "diagnosis": {"cause": diag.cause.value, **diag.evidence},
                "current": here.as_evidence(),
                "candidates": [s.as_evidence() for s in ranked[:5]],
                "outage_s": outage,
                **({"cost": cost.as_evidence()} if cost is not None else {}),
            },
        )
        self._spend(t.name, outage)
        return True, ""

    def _resize(self, t: TenantSpec, diag: Diagnosis, window: dict[str, Any]) -> tuple[bool, str]:
        if self.budget_left() <= 0:
            return False, f"reconfiguration budget spent ({self.spec.policy.max_reconfigs_per_hour}/hour)"
        ts = self.obs.tenants.get(t.name)
        current = ts.instance if ts is not None and ts.instance is not None else t.instance
        if current is None:
            return False, "the victim's current MIG instance is unknown"
        # Before planning (the costly part): if not even the cheapest kind of resize fits the
        # outage budget and pays, no plan can.
        _, why = self._affordable(t, *min(self._move_outage(t, k) for k in MoveKind))
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
        cost, why = self._affordable(t, outage, source)
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
                "window": window,
                "diagnosis": {"cause": diag.cause.value, **diag.evidence},
                "plan": plan.as_evidence(),
                "reconfigs_last_hour": len(self.reconfigs),
                "outage_s": outage,
                "move": kind.value,
                **({"cost": cost.as_evidence()} if cost is not None else {}),
            },
        )
        self._spend(t.name, outage)
        return True, ""

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
            here = self.obs.tenants.get(t.name)
            cur = here.instance if here is not None else None
            if back is None or not self._free_now(back):
                reason = "stay (the old instance is taken); release the level only"
            elif cur is not None and not self._quiet(t, back):
                # Moving back into the interference that made us leave would only flap.
                reason = f"stay on {cur} (the old instance {back} is still noisier); release the level only"
            elif self._outage_short(t, t.outage_s(MoveKind.EXISTING)):
                reason = f"stay on {cur} (moving back would exceed the outage budget); release the level only"
            else:
                target = back
                self.reserved.add(back)
                pending = Pending(f"tenant:{t.name}", PLACE, now, releasing=True)
                reason = f"move back to {back}"
                outage = t.outage_s(MoveKind.EXISTING)
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
                    msg = "keep the larger slice: the tail would come back on the smaller one"
                    if ctl.last_reason != msg:
                        self.emit(t.name, "hold", before, before, RESIZE, msg, why)
                    self.tenants[t.name] = replace(ctl, last_reason=msg, good=0, evidence=ctl.evidence.reset())
                    return
            if self.budget_left() <= 0:
                msg = "release waits for the reconfiguration budget"
                if ctl.last_reason != msg:
                    self.emit(t.name, "hold", before, before, RESIZE, msg, {})
                    self.tenants[t.name] = replace(ctl, last_reason=msg)
                return
            assert step.gpu is not None and step.prev_layout is not None and step.to_instance is not None
            home = step.from_instance
            restored = None
            occ = (occupied(self.spec, self.obs) | self.reserved) - {step.to_instance}
            if home is not None and home not in occ:  # somebody else may have taken it meanwhile
                restored = plan_restore(self.spec, self.obs, step.gpu, step.prev_layout, step.to_instance, home, occ)
            if home is not None and self._free_now(home):
                cost = t.outage_s(MoveKind.EXISTING)  # home first, the slice given back after
            elif restored is not None and step.to_instance.slot in restored:
                cost = t.outage_s(MoveKind.BESIDE)
            else:
                cost = t.outage_s(MoveKind.IN_PLACE)  # the grown instance it runs on is destroyed
            if restored is not None and home is not None and self._outage_short(t, cost):
                msg = "release waits for the outage budget"
                if ctl.last_reason != msg:
                    self.emit(t.name, "hold", before, before, RESIZE, msg, {"outage_s": cost})
                    self.tenants[t.name] = replace(ctl, last_reason=msg)
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
        self.tenants[t.name] = replace(
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
            self._spend(t.name, outage)
        self.emit(t.name, "release", before, after, step.lever, reason, evidence)

    # -- what a lever costs ------------------------------------------------------------------------
    def _move_outage(self, t: TenantSpec, kind: MoveKind) -> tuple[float, str]:
        """A move's outage (fsm.outage): with the relaunch (restart) or switch-over gap (warm) the
        actuators last measured for this tenant, else as configured."""
        measured = self.tenants[t.name].measured_outage_s
        if measured is None:
            return t.outage_s(kind), "configured"
        spec = replace(t, handover_gap_s=measured) if t.handover == "warm" else replace(t, relaunch_s=measured)
        return spec.outage_s(kind), "measured"

    def _affordable(self, t: TenantSpec, outage: float, source: str) -> tuple[LeverCost | None, str]:
        """A resize's outage within the budget, and worth it: a bigger slice serves faster whatever
        the cause, and a queue's tail falls faster than its load, so expect the cure (efficacy 1)."""
        short = self._outage_short(t, outage)
        if short:
            return None, short
        return self._pays(t, RESIZE, outage, source, 1.0)

    def _pays(
        self, t: TenantSpec, lever: str, outage: float, source: str, efficacy: float
    ) -> tuple[LeverCost | None, str]:
        """The lever's cost and benefit (fsm.levercost), and why it does not pay ("" when it does)."""
        policy = self.spec.policy
        if policy.cost_margin is None or t.slo_s is None:
            return None, ""
        ctl = self.tenants[t.name]
        p = self.evidence_params
        c = estimate(
            lever,
            outage_s=outage,
            outage_source=source,
            rate_rps=ctl.evidence.rate(p),
            rho=self._sm_now(t),  # the victim's server utilisation: its instance's SM activity
            slo_s=t.slo_s,
            bad_share=ctl.evidence.bad_share(),
            budget_share=1.0 - t.quantile,
            episodes=ctl.episodes,
            prior_s=policy.episode_prior_s,
            efficacy=efficacy,
            elapsed_s=self.obs.t - ctl.episode_start if ctl.episode_start is not None else 0.0,
        )
        if c.pays(policy.cost_margin):
            return c, ""
        return c, (
            f"its outage would cost more than it saves ({c.cost:.0f} requests over the SLO"
            f" vs {c.benefit:.0f} kept under it)"
        )

    def _lift_guard_below(self, t: TenantSpec, evidence: dict[str, Any]) -> bool:
        """The tail is good and the step on top stays: lift a guard beneath it, which costs its
        capped tenants throughput and is not what holds the tail now (evidence re-guards if it is)."""
        ctl = self.tenants[t.name]
        idx = next((i for i in range(len(ctl.stack) - 2, -1, -1) if ctl.stack[i].lever == GUARD), None)
        if idx is None:
            return False
        guard = ctl.stack[idx]
        stack = ctl.stack[:idx] + ctl.stack[idx + 1 :]
        self.tenants[t.name] = replace(
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

    # -- the outage budget ----------------------------------------------------------------------
    def _outage_short(self, t: TenantSpec, seconds: float) -> str:
        """Why an outage of `seconds` cannot be afforded now ("" when it can)."""
        share = self.spec.policy.outage_budget_share
        if share is None or seconds <= 0:
            return ""
        window = self.spec.policy.outage_budget_window_s
        budget = share * (1.0 - t.quantile) * window
        spent = sum(s for ts, s in self.tenants[t.name].outages if self.obs.t - ts < window)
        if spent + seconds <= budget + 1e-9:
            return ""
        return f"outage budget spent ({spent:g} s of {budget:g} s per {window:g} s; this needs {seconds:g} s)"

    def _spend(self, name: str, seconds: float) -> None:
        ctl = self.tenants[name]
        now = self.obs.t
        kept = tuple(o for o in ctl.outages if now - o[0] < self.spec.policy.outage_budget_window_s)
        self.tenants[name] = replace(ctl, outages=(*kept, (now, seconds)))

    def _shrink_ratio(self, t: TenantSpec, step: Step) -> float | None:
        """Slices of the victim's current instance over those of the one it would return to."""
        ts = self.obs.tenants.get(t.name)
        cur = ts.instance if ts is not None else None
        home = step.from_instance
        if cur is None or home is None:
            return None
        big, small = slices_of(self.spec, cur), slices_of(self.spec, home)
        return big / small if big and small else None

    def _sm_now(self, t: TenantSpec) -> float | None:
        ts = self.obs.tenants.get(t.name)
        cur = ts.instance if ts is not None else None
        g = self.obs.gpus.get(cur.gpu) if cur is not None else None
        m = g.instances.get(f"{cur.profile}@{cur.start}") if g is not None and cur is not None else None
        return m.sm_active if m is not None else None

    def _free_now(self, inst: InstanceRef) -> bool:
        """The instance exists now, nobody runs on it or is headed for it, and its GPU is idle."""
        g = self.obs.gpus.get(inst.gpu)
        return (
            g is not None
            and g.layout is not None
            and inst.slot in g.layout
            and inst not in occupied(self.spec, self.obs)
            and inst not in self.reserved
            and inst.gpu not in self.busy_gpus
        )

    def _quiet(self, t: TenantSpec, home: InstanceRef) -> bool:
        """No longer any high-bandwidth traffic on the home instance's root complex."""
        there = score(self.spec, self.obs, t, None, home, Cause.IO, self.traffic, {})
        return there.root_complex < 0.5

    def guard_budget_spent(self, tenant: str) -> bool:
        p = self.spec.policy
        if p.guard_cost_share is None:
            return False
        held, ran, _ = self.guard_cost.get(tenant, (0.0, 0.0, 0.0))
        # At least the time it takes to see whether the guard helps (a new aggressor has run little).
        return held > 0.0 and held >= max(p.guard_cost_share * ran, 2 * p.rate_tau_s)

    # -- output --------------------------------------------------------------------------------
    def throttles(self) -> tuple[tuple[Throttle, ...], tuple[MpsLimit, ...]]:
        """Caps of every guard on every stack, renewed to expire `throttle_expiry_s` from now;
        one cap per (tenant, device): the tightest wins when two victims ask."""
        now = self.obs.t
        expiry = now + self.spec.policy.throttle_expiry_s
        caps: dict[tuple[str, str], Throttle] = {}
        mps: dict[tuple[str, str], MpsLimit] = {}
        for name in sorted(self.tenants):
            for step in self.tenants[name].stack:
                for c in step.caps:
                    if self.guard_budget_spent(c.tenant):
                        continue  # lifted: the capped tenant's throughput budget is spent
                    c = replace(c, expires_at=expiry)
                    key = (c.tenant, c.device)
                    old = caps.get(key)
                    caps[key] = (
                        c
                        if old is None
                        else replace(
                            old, read_bps=_min(old.read_bps, c.read_bps), write_bps=_min(old.write_bps, c.write_bps)
                        )
                    )
                for m in step.mps:
                    key = (m.tenant, m.gpu)
                    old_m = mps.get(key)
                    mps[key] = replace(m, expires_at=expiry) if old_m is None or m.percent < old_m.percent else old_m
        return tuple(caps[k] for k in sorted(caps)), tuple(mps[k] for k in sorted(mps))


def _dwell(dwell_s: float, flaps: int) -> float:
    """Dwell doubles with every flap (escalating again soon after a release), up to 8x."""
    return dwell_s * (1 << min(flaps, 3))


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
