"""The working state of one tick of the ladder and what every lever needs of it: events, the
outage budget, a lever's cost, the victim's current instance. fsm.ladder builds the ladder on it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fsm.desired import DecisionEvent
from fsm.diagnosis import Cause, Traffic
from fsm.evidence import EvidenceParams, window_evidence
from fsm.evolve import assign_fresh, evolve, field_setters
from fsm.guardbudget import trial_run_s, trial_s
from fsm.levercost import UNKNOWN_RHO, LeverCost, Rent, episode_share, fail_risk, outage_cost, price, rent_of
from fsm.mig import Slot
from fsm.observation import InstanceRef, Observation
from fsm.outage import MoveKind, priced_relaunch
from fsm.placement import occupied, score, slices_of
from fsm.spec import LEVEL_ORDER, HostSpec, Level, TenantSpec
from fsm.state import Pending, Step, TenantCtl
from fsm.usual_rate import at_least_usual, usual_rate

HOUR_S = 3600.0
GUARD, PLACE, RESIZE = "guard", "place", "resize"

# Wald's sequential test of a guard (tick_guards) and of the path (TickBase._path_not_the_cause):
# useless when the log likelihood ratio falls to ln(0.1 / (1 - 0.01)), odds 0.1 of calling useless
# what halves the tail; helps when it rises to ln((1 - 0.1) / 0.01), odds 0.01 of keeping for good
# a guard that does not cut it (a verdict that it helps is final, and it makes a move off the I/O
# path look like a cure).
GUARD_USELESS_LLR = math.log(0.1 / 0.99)
GUARD_HELPS_LLR = math.log(0.9 / 0.01)
_LN2 = math.log(2.0)


def halving_llr(reference_share: float, n: float, bad: float) -> float:
    """Log likelihood ratio of `bad` of `n` requests over the SLO (Poisson counts) at half of
    `reference_share` against at `reference_share` itself."""
    return 0.5 * reference_share * n - _LN2 * bad


_LEVEL_OF = {GUARD: 1, PLACE: 2, RESIZE: 3}  # rank of the level each lever leads to
EPISODES_KEPT = 8  # episode lengths the cost model learns from
WindowFn = Callable[[], dict[str, Any]]  # a lever's SLO evidence for its event, read only if one is emitted


_LEVEL_VALUE = {lv: lv.value for lv in Level}  # Level.value runs enum's Python code; events are rare, so cold
_EVENT_SET = field_setters(DecisionEvent)
_new = object.__new__


def level_of(ctl: TenantCtl) -> Level:
    return ctl.level


def level_rank(level: Level) -> int:
    return LEVEL_ORDER.index(level)


@dataclass(slots=True)
class TickBase:
    """One tick's working copy of the controller state (mutable inside decide() only): its fields,
    events, and what a lever costs. The ladder's parts build on it: tick_moves, tick_guards,
    tick_release and fsm.ladder.Tick."""

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
    capped: tuple[str, ...] = ()  # tenants whose caps were in force after the last decision
    fresh: dict[str, TenantCtl] = field(default_factory=dict)  # tenant -> the record this tick copied for it
    rents: dict[str, Rent] = field(default_factory=dict)  # tenant -> what its levers are priced against
    # tenant -> (requests, seconds) of this tick's window: an outage taken now holds the arrivals of now
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    # (tenant, lever) priced this tick and found not to pay yet (its price): the rent may grow to it
    unpaid: dict[tuple[str, str], LeverCost] = field(default_factory=dict)
    # (tenant, lever) held this tick for a burst its outage would meet: tried again next tick
    burst_held: set[tuple[str, str]] = field(default_factory=set)
    # Retry slots of this tick (hold_retries_per_tick): the tenants queued for a cooldown hold one
    # each, the rest go to the first that ask (Tick._retry_turn)
    retry_first: set[str] = field(default_factory=set)
    retry_slots: int = -1  # -1: no limit
    _traffic: Traffic | None = None

    @property
    def traffic(self) -> Traffic:
        if self._traffic is None:
            self._traffic = Traffic.build(self.spec, self.obs)
        return self._traffic

    # -- events --------------------------------------------------------------------------------
    def emit(
        self, tenant: str, kind: str, before: Level, after: Level, lever: str, reason: str, evidence: dict[str, Any]
    ) -> None:
        self.seq += 1
        # DecisionEvent(seq, t, ...) through its slots' setters (fsm.evolve.field_setters): an event
        # is built on the rare, cold tick that sets decide()'s p99, and its __init__ took 2 us.
        e: DecisionEvent = _new(DecisionEvent)
        s_seq, s_t, s_tenant, s_kind, s_from, s_to, s_lever, s_reason, s_evidence, s_applied = _EVENT_SET
        s_seq(e, self.seq)
        s_t(e, self.obs.t)
        s_tenant(e, tenant)
        s_kind(e, kind)
        s_from(e, _LEVEL_VALUE[before])
        s_to(e, _LEVEL_VALUE[after])
        s_lever(e, lever)
        s_reason(e, reason)
        s_evidence(e, evidence)
        s_applied(e, self.spec.policy.enforce)
        self.events.append(e)

    def budget_left(self) -> int:
        return self.spec.policy.max_reconfigs_per_hour - len(self.reconfigs)

    def _window(self, t: TenantSpec, value: float | None, slo: float) -> dict[str, Any]:
        """The SLO evidence an escalation shows (fsm.evidence)."""
        ctl = self.tenants[t.name]
        return window_evidence(ctl.evidence, t.quantile, self.evidence_params, value, slo, ctl.bad)

    def _acted(
        self, t: TenantSpec, step: Step, pending: Pending | None, kind: str, reason: str, evidence: dict[str, Any]
    ) -> None:
        policy = self.spec.policy
        now = self.obs.t
        ctl = self.tenants[t.name]
        before = level_of(ctl)
        share = ctl.evidence.bad_share()
        if step.lever == GUARD and share is not None:
            share = _guard_baseline(share, ctl, 1.0 - t.quantile, now, policy.rate_tau_s)
        step = evolve(step, bad_share=share)
        target = step.to_instance if step.to_instance is not None else ctl.target
        if not policy.enforce:
            pending = None  # dry-run: nothing will happen, so nothing is waited for
        flaps = ctl.flaps
        if ctl.released_at is not None and now - ctl.released_at < 2 * _dwell(policy.dwell_s, flaps):
            flaps += 1  # re-escalated soon after stepping back: hold the next level longer
        ctl = evolve(
            ctl,
            stack=(*ctl.stack, step),
            pending=pending,
            bad=0,
            good=0,
            evidence=ctl.evidence.reset(),
            acted_n=0.0,
            acted_bad=0.0,
            cooldown_until=now + policy.cooldown_s,
            dwell_until=now + _dwell(policy.dwell_s, flaps),
            target=target,
            last_reason="",
            flaps=flaps,
            burst_held_at=None,
        )
        self.tenants[t.name] = ctl
        self.emit(t.name, kind, before, step.level, step.lever, reason, evidence)

    # -- what a lever costs ------------------------------------------------------------------------
    def _move_outage(self, t: TenantSpec, kind: MoveKind) -> tuple[float, str]:
        """A move's outage (fsm.outage): with the relaunch (restart) or switch-over gap (warm) the
        actuators last measured for this tenant, else as configured, with a restart tenant's
        relaunch no shorter than its own restarts have shown (fsm.outage.priced_relaunch)."""
        ctl = self.tenants[t.name]
        measured = ctl.measured_outage_s
        if measured is None:
            relaunch, source = priced_relaunch(t, ctl.own_restart_s)
            if source == "configured":
                return t.outage_s(kind), source
            return evolve(t, relaunch_s=relaunch).outage_s(kind), source
        spec = evolve(t, handover_gap_s=measured) if t.handover == "warm" else evolve(t, relaunch_s=measured)
        return spec.outage_s(kind), "measured"

    def _failed_outage(self, t: TenantSpec, outage: float, kind: MoveKind = MoveKind.EXISTING) -> float:
        """Seconds a move whose new copy never gets ready holds the tenant: the launcher's readiness
        wait and a relaunch back where it was, at least the move's own outage. A warm hand-over's old
        copy serves on (none), unless the move destroys its instance."""
        if t.handover == "warm" and kind is not MoveKind.IN_PLACE:
            return 0.0
        ctl = self.tenants[t.name]
        measured = ctl.measured_outage_s
        relaunch = measured if measured is not None else priced_relaunch(t, ctl.own_restart_s)[0]
        return max(outage, t.readiness_timeout_s + relaunch)

    def _affordable(self, t: TenantSpec, outage: float, source: str, kind: MoveKind) -> tuple[LeverCost | None, str]:
        """A resize's outage within the budget, and worth it: a bigger slice serves faster whatever
        the cause, and a queue's tail falls faster than its load, so expect the cure (efficacy 1)."""
        short = self._outage_short(t, outage) or self._burst_now(t, RESIZE, outage)
        if short:
            return None, short
        return self._pays(t, RESIZE, outage, source, 1.0, kind)

    def _pays(
        self, t: TenantSpec, lever: str, outage: float, source: str, efficacy: float, kind: MoveKind = MoveKind.EXISTING
    ) -> tuple[LeverCost | None, str]:
        """The lever's cost and benefit (fsm.levercost), and why it does not pay ("" when it does)."""
        policy = self.spec.policy
        if policy.cost_margin is None or t.slo_s is None:
            return None, ""
        # The rent is the same for every lever the tenant's escalation prices on this tick (a hold
        # prices them all): computed once. Nothing it reads changes before the tenant acts.
        ctl = self.tenants[t.name]
        rent = self.rents.get(t.name)
        if rent is None:
            rent = self.rents[t.name] = rent_of(
                rate_rps=ctl.evidence.rate(self.evidence_params),
                rho=self._utilisation(t),  # the victim's server utilisation
                bad_share=ctl.evidence.bad_share(),
                budget_share=1.0 - t.quantile,
                episodes=ctl.episodes,
                prior_s=policy.episode_prior_s,
                elapsed_s=self.obs.t - ctl.episode_start if ctl.episode_start is not None else 0.0,
                episode_requests=ctl.episode_n,
                episode_bad=ctl.episode_bad,
                window_rent=self._overspent(ctl, 0.0),
            )
        risk = fail_risk(policy.relaunch_fail_prior, ctl.relaunches, ctl.relaunch_fails)
        fail = (risk, self._failed_outage(t, outage, kind))
        meets = self._rate_now(t, rent.rate_rps)
        c = price(rent, lever, outage, source, t.slo_s, efficacy, ctl.cost_scale or 1.0, meets, fail)
        if c.pays(policy.cost_margin):
            return c, self._tail_short(t, c)
        self.unpaid[(t.name, lever)] = c
        return c, (
            f"its outage would cost more than it saves ({c.cost:.0f} requests over the SLO"
            f" vs {c.benefit:.0f} kept under it)"
        )

    def _tail_short(self, t: TenantSpec, c: LeverCost) -> str:
        """Why the lever's outage would lift the tenant's p99 over its window ("" when it would not).
        The requests the outage holds past the tail the tenant has now (longer than its headroom,
        _headroom) land in the window's top 1% (outage_tail); a cure takes out of that only
        efficacy x 1% of the requests left in the window, counted at the rate ahead (_rate_ahead;
        with `outage_tail_prior_s`, times watched / (watched + it): a rate read off minutes).
        Bought late in the window, a lever that pays on the requests over the SLO still lifts the
        quantile; `outage_tail_margin` allows for a cure that comes short or a rate that falls
        (docs/decisions.md, "The tail an outage adds"). The window is the outage budget's, counted
        from `outage_window_anchor_s`, or else from the tenant's first request: the span its p99 is
        judged over. The held requests come at the rate the lever was priced at, or the tenant's
        usual rate where that is higher (_rate_held)."""
        policy = self.spec.policy
        margin = policy.outage_tail_margin
        ctl = self.tenants[t.name]
        since = ctl.watched_since
        if not margin or t.slo_s is None or since is None or c.cost <= 0:
            return ""
        left = self._window_left(since)
        tail = self._tail_now(t, t.slo_s)
        headroom = self._headroom(t, t.slo_s, tail)
        meets = self._rate_held(t, c)
        held = outage_cost(meets, c.outage_s, headroom, c.rho) * c.scale
        share = outage_tail(t.quantile)
        ahead = self._rate_ahead(ctl, c.rate_rps)
        prior = policy.outage_tail_prior_s
        watched = self.obs.t - since + ctl.history[1]  # a history's seconds were watched by its source
        if prior > 0:  # a prior of quiet: a rate read off minutes is weighed against it
            ahead *= watched / (watched + prior)
        freed = c.efficacy * share * ahead * left
        if held * margin <= freed:
            return ""
        quiet = f", {watched:.0f} s watched against outage_tail_prior_s {prior:g}" if prior > 0 else ""
        return (
            f"its outage would hold {held:.0f} requests ({meets:.3g} req/s) past the tail ({tail:.3g} s,"
            f" headroom {headroom:.3g} s)"
            f" where a cure frees {freed:.0f} of the top {share:.0%} in the {left:.0f} s left of the window"
            f" (outage_tail_margin {margin:g}{quiet}): the tail's quantile would rise"
        )

    def _rate_held(self, t: TenantSpec, c: LeverCost) -> float:
        """The rate the tail check counts an outage's held requests at: the one the lever was priced
        at (the recent rate, or a burst's that began), or the tenant's usual one where that is
        higher (and a burst's above it). A lull's rate is no bound on what the next seconds bring:
        on the Azure code trace, silent for minutes between bursts, resizes priced in a lull at
        0.2-0.6 requests/s met 1.5-5.8 (docs/results.md, "A real trace held out"). The cost stays
        the recent rate's: it is an expectation, this check a bound on the window's p99."""
        base = at_least_usual(self.tenants[t.name], c.rate_rps)
        return c.outage_rate_rps if base <= c.rate_rps else max(c.outage_rate_rps, self._rate_now(t, base))

    @staticmethod
    def _rate_ahead(ctl: TenantCtl, recent: float) -> float:
        """The rate the rest of the window's requests come at: the tenant's usual one (usual_rate)
        where its recent rate is above that. A lever is asked for when the tail is bad, and on a
        trace that is when the load is up: the recent rate then overstates the hours to come. (An
        outage holds the requests of the seconds after it is taken: _rate_held.)"""
        usual = usual_rate(ctl)
        return recent if usual is None else min(recent, usual)

    def _median_now(self, t: TenantSpec) -> float | None:
        """This tick's median latency of the tenant (None: no window, or no median in it)."""
        ts = self.obs.tenants.get(t.name)
        w = ts.latency if ts is not None else None
        return w.median if w is not None and w.count > 0 else None

    def _tail_now(self, t: TenantSpec, slo: float) -> float:
        """The tail the tenant has now: the median of its recent windows' quantiles, at least the SLO."""
        recent = sorted(self.tenants[t.name].recent)
        return max(slo, recent[len(recent) // 2]) if recent else slo

    def _headroom(self, t: TenantSpec, slo: float, tail: float | None = None) -> float:
        """How long an outage may hold a request before it waits longer than the tenant's tail does
        now: that tail over this tick's median latency (a request held D s waits D s on top of its
        usual wait). A median over the SLO is a queue, not a tail: an outage delays every queued
        request and every one behind them on top of the wait they already have, and past it they
        are the new tail: none. No median this tick (no window, or a source without one): a queue
        cannot be ruled out, none either (docs/decisions.md, "The headroom of a long tail").
        `tail`: _tail_now's, where the caller has it."""
        median = self._median_now(t)
        if median is None or median > slo:
            return 0.0
        return (self._tail_now(t, slo) if tail is None else tail) - median

    def _window_left(self, since: float) -> float:
        """Seconds left of the window the tenant's tail is judged over: the outage budget's,
        counted from `outage_window_anchor_s`, or else from the tenant's first request (`since`)."""
        policy = self.spec.policy
        window = policy.outage_budget_window_s
        start = policy.outage_window_anchor_s if policy.outage_window_anchor_s is not None else since
        return window - (self.obs.t - start) % window

    def _relief_short(self, t: TenantSpec, outage: float) -> str:
        """Why a guard's relief move is not worth its risk ("" when it is). The move cures nothing
        of the tail (the guard holds it); it serves the capped aggressor. A new copy that never gets
        ready holds the tenant for the launcher's readiness wait and a relaunch back where it was
        (a warm hand-over keeps the old copy serving): taken, the move must leave the tail inside
        its quantile even then. The requests that failure holds past the SLO must fit in what the
        window has left of the budget: its requests to come at the share over the SLO the guard
        holds the tenant to, and the window's credit so far (less its overspend) (docs/decisions.md,
        "A relief move's risk")."""
        ctl = self.tenants[t.name]
        since = ctl.watched_since
        if not self.spec.policy.relief_worst_case or t.slo_s is None or since is None:
            return ""
        worst = max(outage, self._failed_outage(t, outage))
        rate = ctl.evidence.rate(self.evidence_params)
        rho = self._utilisation(t)
        held = outage_cost(rate, worst, t.slo_s, UNKNOWN_RHO if rho is None else rho)
        share = outage_tail(t.quantile)
        held_share = ctl.acted_bad / ctl.acted_n if ctl.acted_n > 0 else (ctl.evidence.bad_share() or 0.0)
        left = self._window_left(since)
        room = max(0.0, share - held_share) * self._rate_ahead(ctl, rate) * left
        spent = self._overspent(ctl, 0.0)  # the window's requests over the SLO beyond its budget so far
        if spent > 0.0 or 1.0 - t.quantile <= share + 1e-12:  # a credit is room where it counts the same 1%
            room -= spent
        if held <= room:
            return ""
        return (
            f"{RELIEF_HELD}: a move whose new copy never got ready would hold {held:.0f} requests past the"
            f" SLO ({worst:g} s down) where the {left:.0f} s left of the window have room for {max(room, 0.0):.0f}"
        )

    # -- the outage budget ----------------------------------------------------------------------
    def _charged_s(self, t: TenantSpec, seconds: float) -> tuple[float, float]:
        """What an outage taken now spends of the outage budget, and the room it must find there.
        Spent: the seconds of the tenant's usual rate that the requests it holds stand for. The
        budget's seconds stand for the requests an outage holds at the usual rate; one taken in a
        burst holds more (the arrival rate it meets now, over the usual one). Room: that, and what a
        burst that begins after it may add: as many requests as the tenant's counts spread above
        their mean (outage_spread_sigmas standard deviations beyond Poisson's, from the index of
        dispersion of its per-tick counts). An outage taken is recorded at what it spends: what the
        burst did, if one came, is measured (ladder, _watch_outage) and the record scaled by it."""
        ctl = self.tenants[t.name]
        usual = usual_rate(ctl)
        if usual is None:
            return seconds, seconds
        n, s = ctl.served
        charged = seconds * max(1.0, self._rate_now(t, usual) / usual)
        dt = self.windows.get(t.name, (0.0, 0.0))[1]
        sigmas = self.spec.policy.outage_spread_sigmas
        if dt <= 0 or sigmas <= 0 or s <= 0 or n <= 0:
            return charged, charged
        # counts over dt: variance / mean = dt x the seconds-weighted variance of the rate / its mean,
        # over the windows watched (a history has a count, not a spread)
        watched = n / s
        dispersion = dt * max(0.0, ctl.served_sq / s - watched * watched) / watched
        expected = usual * seconds
        spread = sigmas * math.sqrt(max(0.0, dispersion - 1.0) * expected)
        return charged, max(charged, (expected + spread) / usual)

    def _outage_short(self, t: TenantSpec, seconds: float) -> str:
        """Why an outage of `seconds` cannot be afforded now ("" when it can)."""
        policy = self.spec.policy
        if seconds <= 0:
            return ""
        since = self.tenants[t.name].watched_since
        watched = self.obs.t - since if since is not None else 0.0
        if watched < policy.outage_warmup_s:
            return (
                f"its requests watched for {watched:.0f} s of the {policy.outage_warmup_s:g} s"
                " an outage is priced on (outage_warmup_s)"
            )
        share = policy.outage_budget_share
        if share is None:
            return ""
        past = ""
        if policy.outage_budget_headroom and t.slo_s is not None:
            # Only the seconds past the headroom lift the tail the budget keeps
            headroom = self._headroom(t, t.slo_s)
            seconds = max(0.0, seconds - headroom)
            if seconds <= 0.0:
                return ""
            if round(headroom, 1) > 0.0:  # (a healthy tail's few ms change no figure the hold shows)
                past = f" past {headroom:.3g} s of headroom"
        window = policy.outage_budget_window_s
        spent = sum(s for ts, s in self.tenants[t.name].outages if self.obs.t - ts < window)
        budget = share * outage_tail(t.quantile) * window
        held, with_margin = self._charged_s(t, seconds)
        if spent + held > budget + 1e-9:
            return (
                f"outage budget spent ({round(spent, 1):g} s of {budget:g} s per {window:g} s;"
                f" this needs {round(held, 1):g} s{past})"
            )
        # A burst's requests wait the whole outage too: beyond the p99 whatever the SLO's quantile,
        # so its margin must fit a p99's budget (a p999 tenant's own is a tenth of it, and a 2
        # sigma margin on it barred every relaunch, however far over its SLO the tenant was).
        room = share * OUTAGE_TAIL_MAX * window
        if spent + with_margin <= room + 1e-9:
            return ""
        return (
            f"outage budget spent ({round(spent, 1):g} s of {room:g} s per {window:g} s;"
            f" this needs {round(with_margin, 1):g} s{past} with a burst's margin)"
        )

    def _burst_now(self, t: TenantSpec, lever: str, seconds: float) -> str:
        """Why an outage of `seconds` waits for a burst to pass ("" when it need not): this tick's
        arrivals are above the tenant's rate by more than Poisson noise (_rate_now), and an outage
        taken now holds the burst's requests, where one taken when it has passed holds the usual
        rate's. The lever is tried again on every tick (ladder, burst_held_at) and taken on the
        first that is no burst; a rate that stays up is no burst for long (the recent rate follows).
        A relief move waits too: its outage is the victim's."""
        if not self.spec.policy.outage_burst_wait or t.slo_s is None or seconds <= t.slo_s:
            return ""  # (a hand-over shorter than the SLO holds nobody past it)
        ts = self.obs.tenants.get(t.name)
        if ts is None or ts.latency is None:
            self.burst_held.add((t.name, lever))
            return "no latency window came this tick: the outage waits for one to judge a burst by"
        ctl = self.tenants[t.name]
        # The recent rate, or the usual one where that is higher: the recent estimate starts from
        # nothing (it would see a burst in every tick of a tenant's first minutes), the usual one
        # does not (a ratio), and a burst is above both.
        base = at_least_usual(ctl, ctl.evidence.rate(self.evidence_params))
        now = self._rate_now(t, base)
        if now > base:
            self.burst_held.add((t.name, lever))
            return f"a burst began ({now:.1f} req/s against {base:.1f} usually): the outage waits for it to pass"
        return self._backlog_now(t, lever, seconds)

    def _backlog_now(self, t: TenantSpec, lever: str, seconds: float) -> str:
        """Why an outage waits for the tenant's own backlog to drain ("" when it need not). A server
        past its capacity completes at that capacity: the burst test sees no burst in its counts,
        yet most of its requests are late (the window's median over the SLO: a queue, not a tail),
        and an outage taken now delays every queued request and every one behind them, whose
        latencies are the tail already. Only a backlog of the tenant's own arrivals waits: its
        recent rate above the usual one by more than Poisson noise over rate_tau_s says it drains
        when they fall; one that interference made completes at or under the usual rate, and is
        what the lever cures. The wait lasts at most the outage's own length from the episode's
        first such hold (backlog_since): by then waiting has made about as many requests late as
        the outage would, and a backlog that stays is the load's, which the lever must serve."""
        ctl = self.tenants[t.name]
        median = self._median_now(t)
        usual = usual_rate(ctl)
        if median is None or t.slo_s is None or median <= t.slo_s or usual is None:
            return ""
        rate = self._rate_now(t, ctl.evidence.rate(self.evidence_params))
        if rate <= usual + 3.0 * math.sqrt(usual / self.evidence_params.rate_tau_s):
            return ""
        since = ctl.backlog_since
        if since is None:
            self._update(t.name, backlog_since=self.obs.t)
        elif self.obs.t - since >= seconds:
            return ""
        self.burst_held.add((t.name, lever))
        return (
            f"its own arrivals keep a backlog of about {rate * median:.0f} requests ({rate:.1f} req/s against"
            f" {usual:.1f} usually, median {median:.3g} s): the {seconds:.0f} s outage waits for it to drain"
        )

    def _rate_now(self, t: TenantSpec, recent: float) -> float:
        """The arrival rate an outage taken now meets: the recent rate (rate_tau_s), or this tick's
        window's when it is above that by more than Poisson noise (3 sigma): a burst that began a
        tick ago is all of an outage's held requests, and the recent rate has not seen it yet."""
        n, dt = self.windows.get(t.name, (0.0, 0.0))
        expected = recent * dt
        if dt > 0 and n > expected + 3.0 * math.sqrt(max(expected, 1.0)):
            return n / dt
        return recent

    def _spend(self, t: TenantSpec, seconds: float) -> None:
        """Charge an outage to the budget; the rent paid so far bought it (fsm.levercost). Watch
        what it costs: the model's prediction is checked against the requests it pushes over the
        SLO (ladder, _watch_outage), and later levers are priced with what was measured."""
        ctl = self.tenants[t.name]
        now = self.obs.t
        kept = self._outages_in_window(ctl)
        watch = ctl.outage_watch
        if t.slo_s is not None:
            rate = self._rate_now(t, ctl.evidence.rate(self.evidence_params))
            rho = self._utilisation(t)
            predicted = outage_cost(rate, seconds, t.slo_s, UNKNOWN_RHO if rho is None else rho)
            if predicted >= 1.0:  # an outage shorter than the SLO (a warm hand-over) costs nothing to measure
                # the tail before: once a window is back to it (or the SLO), the backlog is served
                before = max(t.slo_s, ctl.last_value if ctl.last_value is not None else t.slo_s)
                watch = (now, predicted, ctl.evidence.bad_share() or 0.0, before)
        charged = self._charged_s(t, seconds)[0]
        self.tenants[t.name] = evolve(
            ctl,
            outages=(*kept, (now, charged)),
            moved=(now, charged),
            **self._rent_restarted(ctl),
            outage_watch=watch,
            watch_n=0.0,
            watch_bad=0.0,
            backlog_since=None,
        )

    def _outages_in_window(self, ctl: TenantCtl) -> tuple[tuple[float, float], ...]:
        """The tenant's outages still inside the outage budget's window (older ones are dropped
        when a new one is recorded)."""
        now = self.obs.t
        return tuple(o for o in ctl.outages if now - o[0] < self.spec.policy.outage_budget_window_s)

    def _rent_restarted(self, ctl: TenantCtl) -> dict[str, Any]:
        """The changes that start the tenant's rent afresh (fsm.levercost): the episode's counts and
        the window's overspend (a credit is kept), `served` decayed to the same time (the two sums
        share overspend_t). An outage bought the rent; a guard found to cut the tail changed it."""
        keep = self._window_keep(ctl)
        return {
            "overspend": min(0.0, self._overspent(ctl, 0.0)),
            "overspend_t": self.obs.t,
            "served": (ctl.served[0] * keep, ctl.served[1] * keep),
            "history": (ctl.history[0] * keep, ctl.history[1] * keep),
            "served_sq": ctl.served_sq * keep,
            "episode_n": 0.0,
            "episode_bad": 0.0,
            "clear_n": 0.0,
            "clear_bad": 0.0,
        }

    def _barred(self, ctl: TenantCtl, lever: str) -> str:
        """Why a lever is not tried now for its own failures ("" when it may be)."""
        if lever in ctl.failed_levers:
            return "failed in this episode"
        for lv, at in ctl.retry_levers:
            if lv == lever and self.obs.t < at:
                return f"failed, tried again after its backoff (in {at - self.obs.t:.0f} s)"
        return ""

    def _update(self, name: str, **changes: Any) -> None:
        """Change a tenant's record: in place when it is this tick's own copy (step() made it and
        nobody else holds it), else as a new copy."""
        cur = self.tenants[name]
        if self.fresh.get(name) is cur:
            assign_fresh(cur, **changes)
        else:
            self.tenants[name] = evolve(cur, **changes)

    def _window_keep(self, ctl: TenantCtl) -> float:
        """What of the tenant's window-weighted sums (overspend, served) is kept from their last
        update to now: time constant, the outage budget's window."""
        dt = self.obs.t - ctl.overspend_t if ctl.overspend_t is not None else 0.0
        return math.exp(-dt / self.spec.policy.outage_budget_window_s) if dt > 0 else 1.0

    def _overspent(self, ctl: TenantCtl, add: float) -> float:
        """The tenant's overspend decayed to now, plus `add`."""
        return ctl.overspend * self._window_keep(ctl) + add

    def _shrink_ratio(self, t: TenantSpec, step: Step) -> float | None:
        """Slices of the victim's current instance over those of the one it would return to."""
        cur = self._instance_now(t)
        home = step.from_instance
        if cur is None or home is None:
            return None
        big, small = slices_of(self.spec, cur), slices_of(self.spec, home)
        return big / small if big and small else None

    def _utilisation(self, t: TenantSpec) -> float | None:
        """The victim's server utilisation, which an outage's backlog drains against: its instance's
        SM activity; without it (no DCGM), Little's law on its last window, L = the recent rate x
        the window's median latency, rho = L / (1 + L) (M/M/1's relation; within 0.01-0.06 of the
        simulated truth where measured: docs/results.md, "A server's utilisation"). None when
        neither is known (levercost assumes 0.5)."""
        sm = self._sm_now(t)
        if sm is not None:
            return sm
        median = self._median_now(t)
        if median is None:
            return None
        n = self.tenants[t.name].evidence.rate(self.evidence_params) * median
        return n / (1.0 + n)

    def _instance_now(self, t: TenantSpec) -> InstanceRef | None:
        """The instance the tenant is seen running on this tick (None: not seen)."""
        ts = self.obs.tenants.get(t.name)
        return ts.instance if ts is not None else None

    def _sm_now(self, t: TenantSpec) -> float | None:
        cur = self._instance_now(t)
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

    # -- the episode's natural experiment: was the tail lower while the path was clear? -----------
    def _path_not_the_cause(self, t: TenantSpec) -> str:
        """Why this episode says the others' bytes on the victim's path do not hold its tail ("":
        it does not say so). fsm.ladder splits the episode's requests by whether the others' bytes
        on the path made an I/O cause when they were served; the guard's sequential test, run on
        those served while the path was clear against the share while it was shared, finds them
        not halved (odds 0.1 of saying so of a path whose clearing halves the tail). A guard's caps
        and a same-sized move off the path promise at most what clearing it did."""
        ctl = self.tenants[t.name]
        shared_n, shared_bad = ctl.shared
        if shared_n * (1.0 - t.quantile) < 1.0 or shared_bad <= 0.0:
            return ""  # too few requests on a shared path to say what it costs
        shared = shared_bad / shared_n
        if halving_llr(shared, ctl.clear_n, ctl.clear_bad) > GUARD_USELESS_LLR:
            return ""
        return (
            f"the tail was as high while the path was clear ({100 * ctl.clear_bad / ctl.clear_n:.1f}% of"
            f" {ctl.clear_n:.0f} requests over the SLO, {100 * shared:.1f}% while shared)"
        )

    def _tail_before_path(self, t: TenantSpec) -> bool:
        """This episode's tail, or that of the tenant's episodes of the last minutes (_clear_past),
        was over its budget while the others' bytes on the victim's path made no I/O cause (an
        error budget's worth of requests served then, 1 / (1 - quantile)): it began before the
        aggressors now on the path, which may not be what holds it. A guard's trial on one of them
        that started since waits for it to have run a while (guard_trial_wait_s); a tail that came
        with them, on a tenant whose path-clear tails were within budget, does not wait."""
        eps = 1.0 - t.quantile
        n, bad, _ = self._clear_past(self.tenants[t.name])
        return n * eps >= 1.0 and bad > eps * n

    def _clear_past(self, ctl: TenantCtl) -> tuple[float, float, float]:
        """The requests of this tenant's recent episodes served while its path was clear, and those
        over the SLO, weighted by age (exp(-age / trial_run_s): the minutes a trial waits), as of
        now; with this episode's own clear stretch. A bursty tenant's episodes come and go between
        bursts: one that began with a new aggressor on the path is no evidence against it when the
        last one, minutes before and with the path clear, was as bad."""
        n, bad, t0 = ctl.clear_past
        if n > 0.0:
            tau = trial_run_s(self.spec.policy)  # 0 without a guard budget: no trial waits, no memory
            keep = math.exp(-max(0.0, self.obs.t - t0) / tau) if tau > 0.0 else 0.0
            n, bad = n * keep, bad * keep
        if ctl.episode_start is not None:
            n, bad = n + ctl.clear_n, bad + ctl.clear_bad
        return n, bad, self.obs.t

    def _path_cut(self, t: TenantSpec) -> float:
        """The share of the tail's excess over its budget that this episode saw go with the others'
        bytes on the path: (shared share - clear share) / (shared share - budget), 0..1, once the
        clear stretch holds an error budget's worth of requests (1 / (1 - quantile)); 1 before (it
        cannot say); 0 when the shared stretch was within its budget. A shared stretch too short
        to judge is stood in for by the tail's share now (the evidence's, what a lever's benefit is
        priced on): escaping the path brings the tail back to what it was while the path was
        clear, and no lower, however briefly the path has been shared."""
        ctl = self.tenants[t.name]
        eps = 1.0 - t.quantile
        if ctl.clear_n * eps < 1.0:
            return 1.0
        shared_n, shared_bad = ctl.shared
        if shared_n * eps >= 1.0:
            shared = shared_bad / shared_n
        else:
            now = ctl.evidence.bad_share()
            if now is None:
                return 1.0
            shared = now
        if shared <= eps:
            return 0.0
        return min(1.0, max(0.0, (shared - ctl.clear_bad / ctl.clear_n) / (shared - eps)))

    def _path_lesson(self, t: TenantSpec) -> str:
        """_path_not_the_cause, kept for the rest of the episode once it says so, as a guard that
        did not cut the tail is: the guard joins the episode's failed levers. (A sequential test
        stops at its first crossing; read on, it would cross back and forth as the two stretches
        grow, and a guard refused one minute would be tried the next.)"""
        why = self._path_not_the_cause(t)
        if why:
            ctl = self.tenants[t.name]
            self._update(t.name, failed_levers=tuple(sorted({*ctl.failed_levers, GUARD})))
        return why

    def _clear_path_evidence(self, t: TenantSpec) -> dict[str, Any]:
        """The episode's requests split by whether the path was clear, for an event ({}: none clear)."""
        ctl = self.tenants[t.name]
        if ctl.clear_n <= 0:
            return {}
        shared_n, shared_bad = ctl.shared
        return {
            "path_clear": {
                "requests": round(ctl.clear_n, 1),
                "over_slo": round(ctl.clear_bad, 1),
                "shared_requests": round(shared_n, 1),
                "shared_over_slo": round(shared_bad, 1),
            }
        }

    def guard_budget_spent(self, tenant: str, trial: bool = True) -> bool:
        """Have caps held `tenant` for their share of the time it ran? `trial`: a guard not yet
        judged may hold it at least until the futility stop's first look (rate_tau_s: a new
        aggressor has run little); once judged, only the share. Two minutes (a whole verdict's
        time) cost an ETL job that runs a third of an hour 5-7% of its work in that hour."""
        p = self.spec.policy
        if p.guard_cost_share is None:
            return False
        held, ran, _ = self.guard_cost.get(tenant, (0.0, 0.0, 0.0))
        return held > 0.0 and held >= (max(p.guard_cost_share * ran, trial_s(p)) if trial else p.guard_cost_share * ran)

    def guard_trial_fits(self, tenant: str) -> bool:
        """May a new guard cap `tenant`? Only if a whole trial (fsm.guardbudget.trial_s) fits what
        it may still be held: a guard lifted for its budget a tick after it went on would leave
        nothing to judge while the victim's other levers wait for its verdict."""
        p = self.spec.policy
        if p.guard_cost_share is None:
            return True
        held, ran, _ = self.guard_cost.get(tenant, (0.0, 0.0, 0.0))
        trial = trial_s(p)
        return held <= 0.0 or held + trial <= max(p.guard_cost_share * ran, trial)

    def guard_trial_wait_s(self, tenant: str) -> float:
        """Seconds `tenant` must still run before a guard's trial may cap it for a tail that was
        there before it (_tail_before_path; 0: none). The trial must then be within its share of
        the time the tenant can be expected to run: as long again as it has run (the Copernican
        guess: a job seen running is as likely to be in the second half of its run as in the
        first), so a one-minute trial at 5% waits for ten minutes of running. Granted up front, a
        trial took a quarter of the work of a job that had run two minutes and stopped at four
        (docs/results.md, "A trial for a job that has run a while")."""
        ran = self.guard_cost.get(tenant, (0.0, 0.0, 0.0))[1]
        return max(0.0, trial_run_s(self.spec.policy) - ran)


OUTAGE_TAIL_MAX = 0.01  # a p99's error budget
RELIEF_HELD = "relief not worth its risk"  # tick_base._relief_short's reasons begin so


def outage_tail(quantile: float) -> float:
    """The share of requests the outage budget is counted against: the SLO's error budget
    (1 - quantile), at most a p99's. An outage's held requests wait its whole length, far past any
    SLO, so they land in the tail beyond the SLO's quantile: against a p95's 5% the budget would
    let outages make up the tenant's p99 (measured: docs/results.md, "Outages against the p99")."""
    return min(1.0 - quantile, OUTAGE_TAIL_MAX)


def _dwell(dwell_s: float, flaps: int) -> float:
    """Dwell doubles with every flap (escalating again soon after a release), up to 8x."""
    return dwell_s * (1 << min(flaps, 3))


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _guard_baseline(recent: float, ctl: TenantCtl, eps: float, now: float, tau: float) -> float:
    """What a guard is judged against: the recent share over the SLO, or the episode's own share
    (fsm.levercost's p) when the episode holds 1/eps requests and that is lower. A guard goes on
    when the recent share is high, so part of that height is noise that falls back by itself
    (regression to the mean): judged against it alone, a guard that changed nothing was found to
    halve the tail, and a move bought on that verdict cured nothing. An episode younger than the
    recent share's time constant (`tau`) is judged by its own share alone: the recent one is then
    mostly requests from before the tail went up (an early guard's p4d-demo: 2.8% recent against
    the episode's 5.8%; the caps took it to 3.2% and were found useless)."""
    episode = episode_share(ctl.episode_n, ctl.episode_bad, eps)
    if episode is None:
        return recent
    young = ctl.episode_start is not None and now - ctl.episode_start < tau
    return episode if young else min(recent, episode)
