"""The ladder's guards: caps on the aggressors on the victim's path, lifted when they do not help
or have cost the capped tenants their budget, relieved by a move; and the caps every guard asks for."""

from __future__ import annotations

from typing import Any

from fsm.desired import MpsLimit, Throttle
from fsm.diagnosis import Aggressor, Cause, Diagnosis, diagnose, victim_anchor
from fsm.evolve import evolve
from fsm.guardbudget import holds
from fsm.spec import HostSpec, Level, Policy, Role, TenantSpec
from fsm.state import Step, TenantCtl
from fsm.tick_base import (
    GUARD,
    GUARD_HELPS_LLR,
    GUARD_USELESS_LLR,
    PLACE,
    RELIEF_HELD,
    WindowFn,
    _min,
    halving_llr,
    level_of,
)
from fsm.tick_moves import MoveTick


class GuardTick(MoveTick):
    __slots__ = ()

    def _guard(self, t: TenantSpec, diag: Diagnosis, window: WindowFn) -> tuple[bool, str]:
        policy = self.spec.policy
        now = self.obs.t
        if diag.cause is Cause.IO:
            clear = self._path_lesson(t)
            if clear:
                return False, clear  # capping the path's aggressors promises at most what clearing it did
        caps: list[Throttle] = []
        names: list[str] = []
        spent: list[str] = []  # the aggressors whose caps have cost them their share of throughput
        young: list[str] = []  # those that came after the tail and have not run long enough for a trial
        before = diag.cause is Cause.IO and self._tail_before_path(t)
        for a in diag.aggressors:
            if not self.guard_trial_fits(a.tenant):
                spent.append(a.tenant)
                continue  # other levers now
            if not policy.guards:
                continue
            spec_a = self.spec.tenants[a.tenant]
            if not a.throttleable or spec_a.role in (Role.PROTECTED, Role.SENSITIVE):
                continue
            wait = self.guard_trial_wait_s(a.tenant) if before else 0.0
            if wait > 0.0:
                young.append(f"{a.tenant} ({wait:.0f} s more)")
                continue
            new = self._caps_for(spec_a, a, t.name, now)
            if new:
                caps.extend(new)
                names.append(a.tenant)
        mps: list[MpsLimit] = []
        gpu = victim_anchor(self.spec, self.obs, t) if policy.mps else None
        if gpu is not None:
            for o in self.spec.derived("guards.mps-by-gpu", _mps_by_gpu).get(gpu, ()):
                mps.append(MpsLimit(o.name, gpu, policy.mps_guard_percent, now + policy.throttle_expiry_s))
                names.append(o.name)
        if not caps and not mps:
            if spent or young:
                why = [f"the throughput budget of {', '.join(spent)} is spent"] if spent else []
                if young:
                    why.append(
                        f"the tail was there before {', '.join(young)}: a trial waits for it to have run"
                        " long enough to be its share of twice the run"
                    )
                return False, f"{'; '.join(why)} (guard_cost_share)"
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
                "window": window(),
                "diagnosis": diag.as_event(),
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
    def _guard_verdict(self, t: TenantSpec) -> bool | None:
        """Did the guard on top fail to cut the tail? None while it is still being judged (or there
        is no guard on top to judge).

        First a sequential test on the requests served since it went on (_guard_test). Undecided,
        and where the source counts requests, a futility stop from the test's first look (one
        rate_tau_s, or cooldown_s / guard_relief_s if later): the requests served since the caps
        went on are not cut by guard_min_cut. Their share is as noisy as the recent share, but it
        holds none from before the caps; a guard that shows no cut there is lifted a minute in,
        not two: every second a useless cap holds costs the capped tenant work that doing nothing
        would have kept, and where the test has not decided in a minute, its second minute seldom
        decides it. A guard that shows a cut goes on being judged. Undecided after 2 x rate_tau_s
        (or without counts), the recent share decides (guard_min_cut), which by then holds little
        from before the guard, tick by tick as before."""
        policy = self.spec.policy
        ctl = self.tenants[t.name]
        top = ctl.stack[-1] if ctl.stack else None
        if top is None or top.lever != GUARD or top.bad_share is None or not policy.enforce:
            return None  # dry-run: nothing was capped, so nothing can be learned of the caps
        if top.helped:
            return False  # shown to cut the tail: the tail coming back after is the budget's doing
        test = self._guard_test(ctl, top)
        if test is not None:
            return test
        if self._futile(ctl, top):
            return True
        if self.obs.t - top.t < 2 * policy.rate_tau_s:
            return None  # the recent share still holds requests from before the guard
        now = ctl.evidence.bad_share()
        return now is not None and now >= (1.0 - policy.guard_min_cut) * top.bad_share

    def _futile(self, ctl: TenantCtl, top: Step) -> bool:
        """The futility stop: from the test's first look, the requests served since the caps went
        on are counted and not cut by guard_min_cut."""
        p = self.spec.policy
        if not ctl.evidence.counted or ctl.acted_n <= 0 or top.bad_share is None:
            return False
        if self.obs.t - top.t < max(p.rate_tau_s, _first_look_s(p)):
            return False
        return ctl.acted_bad >= (1.0 - p.guard_min_cut) * top.bad_share * ctl.acted_n

    def _guard_test(self, ctl: TenantCtl, top: Step) -> bool | None:
        """Wald's sequential test on the requests served since the guard went on: the share over
        the SLO is what it was when the guard went on, against half of it. True: useless (odds 0.1
        that the guard halves the tail), from cooldown_s (the caps have settled); False: it helps
        (odds 0.01 that it does not cut the tail: that verdict is final), from guard_relief_s if
        longer (a guard that helps and binds is relieved by a move first; a useless one relieves
        nobody, and each second of it costs the capped tenant); None: not yet. With 10% of the
        requests over the SLO at 2 a second, about a minute either way; at 100 a second, the
        useless verdict at the first settled look."""
        policy = self.spec.policy
        assert top.bad_share is not None
        if not ctl.evidence.counted or top.bad_share <= 0:
            return None
        age = self.obs.t - top.t
        if age < policy.cooldown_s:
            return None
        llr = halving_llr(top.bad_share, ctl.acted_n, ctl.acted_bad)
        if llr <= GUARD_USELESS_LLR:
            return True
        if age >= _first_look_s(policy) and llr >= GUARD_HELPS_LLR:
            return False
        return None

    def _guard_useless(self, t: TenantSpec) -> bool:
        return self._guard_verdict(t) is True

    def _note_guard_helped(self, t: TenantSpec) -> None:
        """Keep the test's verdict that the guard cut the tail: its counts run on after it, and caps
        lifted for their budget let the tail back, which says nothing of what they did."""
        ctl = self.tenants[t.name]
        top = ctl.stack[-1] if ctl.stack else None
        if (
            top is not None
            and top.lever == GUARD
            and top.bad_share is not None
            and not top.helped
            and self.spec.policy.enforce
            and self._guard_test(ctl, top) is False
        ):
            # The rent paid before the caps (the episode's counts, the window's overspend) was paid
            # under a tail the caps have since cut: it no longer says what waiting costs, and an
            # outage lever is priced against what the tenant pays with the caps on.
            self.tenants[t.name] = evolve(
                ctl, stack=(*ctl.stack[:-1], evolve(top, helped=True)), **self._rent_restarted(ctl)
            )

    def _guard_judging(self, t: TenantSpec) -> str:
        """Why an outage lever waits ("" when it need not): the guard on top is still being judged.
        Whether capping the path cuts the tail says whether the path holds it, which is what a move
        promises to escape; and caps that cut it make the outage needless. So the cheap lever's
        verdict (_guard_verdict) comes before the dear ones."""
        ctl = self.tenants[t.name]
        top = ctl.stack[-1] if ctl.stack else None
        if top is None or top.lever != GUARD or top.bad_share is None or self._guard_verdict(t) is not None:
            return ""
        if not self.spec.policy.enforce:
            return ""  # dry-run: nothing was capped, nothing to wait for
        age, judged = self.obs.t - top.t, 2 * self.spec.policy.rate_tau_s
        return f"the caps on {', '.join(top.aggressors)} are still being judged ({age:.0f} of {judged:.0f} s)"

    def _lift_useless_guard(self, t: TenantSpec) -> None:
        ctl = self.tenants[t.name]
        top = ctl.stack[-1]
        before = level_of(ctl)
        now = ctl.evidence.bad_share()
        if self._guard_test(ctl, top) is True:
            test = "sequential"
        elif self._futile(ctl, top):
            test, now = "share since the caps", ctl.acted_bad / ctl.acted_n
        else:
            test = "recent share"
        self.tenants[t.name] = evolve(
            ctl,
            stack=ctl.stack[:-1],
            failed_levers=tuple(sorted({*ctl.failed_levers, GUARD})),
            cooldown_until=self.obs.t + self.spec.policy.cooldown_s,
            io_doubt_until=self.obs.t + self.spec.policy.guard_lesson_s,
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
                "bad_share_now": round(now or 0.0, 4),  # the share the verdict read
                "guard_min_cut": self.spec.policy.guard_min_cut,
                "verdict": test,  # the sequential test, the futility stop, or the recent share
                "requests_since_guard": round(ctl.acted_n, 1),
                "over_slo_since_guard": round(ctl.acted_bad, 1),
                "judged_after_s": round(self.obs.t - top.t, 1),
            },
        )

    # -- guard relief: a binding guard costs the aggressor throughput for as long as it holds ------
    def _relief_due(self, t: TenantSpec) -> bool:
        """The guard on top has held for guard_relief_s and still binds (the aggressor runs at its
        cap, which is in force: not lifted for its budget), and placement may be tried: moving the
        victim off the path lets the caps go."""
        policy = self.spec.policy
        ctl = self.tenants[t.name]
        top = ctl.stack[-1]
        if (
            policy.guard_relief_s is None
            or not policy.placement
            or self._barred(ctl, PLACE)
            or top.lever != GUARD
            or not top.caps
            or self.obs.t - (top.t if top.relief_t is None else top.relief_t) < policy.guard_relief_s
            or ctl.evidence.up > 0
            or not self._guard_holds(t, ctl)
        ):
            return False
        return any(holds(c, self.obs, self.capped) for c in top.caps)

    @staticmethod
    def _guard_holds(t: TenantSpec, ctl: TenantCtl) -> bool:
        """Only a guard that holds the tail inside its SLO is worth an outage to relieve, and a
        minute that looks fine is not evidence of that: since the guard went on, at least three
        budgets' worth of requests (300 for a p99), no more of them over the SLO than the budget.
        Sources without counts: the last minute's estimate from quantiles."""
        eps = 1.0 - t.quantile
        if not ctl.evidence.counted:
            return (ctl.evidence.burn_rate(eps) or 0.0) <= 1.0
        return ctl.acted_n * eps >= 3.0 and ctl.acted_bad <= eps * ctl.acted_n

    def _relieve(self, t: TenantSpec, value: float | None, slo: float) -> None:
        ctl = self.tenants[t.name]
        devices = tuple(sorted({c.device for c in ctl.stack[-1].caps}))
        diag = diagnose(self.spec, self.obs, t, self.traffic)

        def window() -> dict[str, Any]:
            return {**self._window(t, value, slo), "relief": True}

        ok, why = self._place(t, diag, window, avoid=devices)
        if not ok:
            # Nowhere quieter off the path, or not worth its risk: keep the guard; look again after
            # another relief period. (Its own age stays: the guard is judged from when it went on.)
            top = ctl.stack[-1]
            if top.relief_t is None and why.startswith(RELIEF_HELD):  # said once per guard
                level = level_of(ctl)
                self.emit(t.name, "hold", level, level, PLACE, why, {"window": window()})
            self.tenants[t.name] = evolve(ctl, stack=(*ctl.stack[:-1], evolve(top, relief_t=self.obs.t)))

    # -- output --------------------------------------------------------------------------------
    def throttles(self) -> tuple[tuple[Throttle, ...], tuple[MpsLimit, ...]]:
        """Caps of every guard on every stack, renewed to expire `throttle_expiry_s` from now;
        one cap per (tenant, device): the tightest wins when two victims ask."""
        now = self.obs.t
        expiry = now + self.spec.policy.throttle_expiry_s
        # Per (tenant, device): the first cap found, and the tightest read and write caps of all.
        # One copy per key at the end (the first cap with those figures and the new expiry) rather
        # than one per cap and merge: the same caps.
        tight: dict[tuple[str, str], tuple[Throttle, float | None, float | None]] = {}
        spent: dict[tuple[str, bool], bool] = {}
        mps: dict[tuple[str, str], MpsLimit] = {}
        for name in sorted(self.tenants):
            stack = self.tenants[name].stack
            for step in stack:
                # The guard on top, while it is judged, may hold its tenants for the trial; any other
                # (judged, or under a move) only for their share of the time they ran.
                trial = bool(step.caps) and step is stack[-1] and self._guard_verdict(self.spec.tenants[name]) is None
                for c in step.caps:
                    lifted = spent.get((c.tenant, trial))
                    if lifted is None:
                        lifted = spent[(c.tenant, trial)] = self.guard_budget_spent(c.tenant, trial)
                    if lifted:
                        continue  # lifted: the capped tenant's throughput budget is spent
                    key = (c.tenant, c.device)
                    old = tight.get(key)
                    tight[key] = (
                        (c, c.read_bps, c.write_bps)
                        if old is None
                        else (old[0], _min(old[1], c.read_bps), _min(old[2], c.write_bps))
                    )
                for m in step.mps:
                    key = (m.tenant, m.gpu)
                    old_m = mps.get(key)
                    mps[key] = evolve(m, expires_at=expiry) if old_m is None or m.percent < old_m.percent else old_m
        caps = tuple(
            evolve(first, read_bps=r, write_bps=w, expires_at=expiry)
            for first, r, w in (tight[k] for k in sorted(tight))
        )
        return caps, tuple(mps[k] for k in sorted(mps))


def _first_look_s(policy: Policy) -> float:
    """The first look of the guard's "helps" verdict and of its futility stop: from cooldown_s on,
    or guard_relief_s if longer (a guard that helps and binds is relieved by a move first). The
    "useless" verdict may come from cooldown_s (_guard_test)."""
    return max(policy.cooldown_s, policy.guard_relief_s or 0.0)


def _mps_by_gpu(spec: HostSpec) -> dict[str, tuple[TenantSpec, ...]]:
    """GPU -> the compute tenants an MPS limit can hold there, by name."""
    out: dict[str, tuple[TenantSpec, ...]] = {}
    for o in spec.by_role(Role.COMPUTE):
        if o.mps and o.gpu is not None:
            out[o.gpu] = (*out.get(o.gpu, ()), o)
    return out
