"""The ladder's guards: caps on the aggressors on the victim's path, lifted when they do not help
or have cost the capped tenants their budget, relieved by a move; and the caps every guard asks for."""

from __future__ import annotations

from fsm.desired import MpsLimit, Throttle
from fsm.diagnosis import Aggressor, Diagnosis, diagnose, victim_anchor
from fsm.evolve import evolve
from fsm.guardbudget import binds
from fsm.spec import HostSpec, Level, Role, TenantSpec
from fsm.state import Step, TenantCtl
from fsm.tick_base import (
    GUARD,
    PLACE,
    WindowFn,
    _min,
    level_of,
)
from fsm.tick_moves import MoveTick


class GuardTick(MoveTick):
    __slots__ = ()

    def _guard(self, t: TenantSpec, diag: Diagnosis, window: WindowFn) -> tuple[bool, str]:
        policy = self.spec.policy
        now = self.obs.t
        caps: list[Throttle] = []
        names: list[str] = []
        spent: list[str] = []  # the aggressors whose caps have cost them their share of throughput
        for a in diag.aggressors:
            if self.guard_budget_spent(a.tenant):
                spent.append(a.tenant)
                continue  # other levers now
            if not policy.guards:
                continue
            spec_a = self.spec.tenants[a.tenant]
            if not a.throttleable or spec_a.role in (Role.PROTECTED, Role.SENSITIVE):
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

    def _guard_judging(self, t: TenantSpec) -> str:
        """Why an outage lever waits ("" when it need not): the guard on top is still being judged.
        Whether capping the path cuts the tail says whether the path holds it, which is what a move
        promises to escape; and caps that cut it make the outage needless. So the cheap lever's
        verdict (_guard_useless, after 2 x rate_tau_s) comes before the dear ones."""
        if not self.spec.policy.enforce:
            return ""  # dry-run: nothing was capped, nothing to wait for
        ctl = self.tenants[t.name]
        top = ctl.stack[-1] if ctl.stack else None
        if top is None or top.lever != GUARD or top.bad_share is None:
            return ""
        age, judged = self.obs.t - top.t, 2 * self.spec.policy.rate_tau_s
        if age >= judged:
            return ""
        return f"the caps on {', '.join(top.aggressors)} are still being judged ({age:.0f} of {judged:.0f} s)"

    def _lift_useless_guard(self, t: TenantSpec) -> None:
        ctl = self.tenants[t.name]
        top = ctl.stack[-1]
        before = level_of(ctl)
        now = ctl.evidence.bad_share()
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
            or not self._guard_holds(t, ctl)
        ):
            return False
        return any(binds(c, self.obs) for c in top.caps)

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
        ok, _ = self._place(t, diag, lambda: {**self._window(t, value, slo), "relief": True}, avoid=devices)
        if not ok:
            # Nowhere quieter off the path: keep the guard; look again after another relief period.
            top = ctl.stack[-1]
            self.tenants[t.name] = evolve(ctl, stack=(*ctl.stack[:-1], evolve(top, t=self.obs.t)))

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
        spent: dict[str, bool] = {}
        mps: dict[tuple[str, str], MpsLimit] = {}
        for name in sorted(self.tenants):
            for step in self.tenants[name].stack:
                for c in step.caps:
                    lifted = spent.get(c.tenant)
                    if lifted is None:
                        lifted = spent[c.tenant] = self.guard_budget_spent(c.tenant)
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


def _mps_by_gpu(spec: HostSpec) -> dict[str, tuple[TenantSpec, ...]]:
    """GPU -> the compute tenants an MPS limit can hold there, by name."""
    out: dict[str, tuple[TenantSpec, ...]] = {}
    for o in spec.by_role(Role.COMPUTE):
        if o.mps and o.gpu is not None:
            out[o.gpu] = (*out.get(o.gpu, ()), o)
    return out
