"""The escalation ladder per sensitive tenant, and the host-wide arbitration between tenants.

steady -> guarded -> placed -> resized, escalating one lever at a time after Y violating windows
(outside cooldown and backoff, with nothing in flight), the diagnosis picking the entry lever;
stepping back one level at a time, in reverse order, after Z good windows and the dwell time.
Host-wide: one MIG change per GPU at a time, a reconfiguration budget per rolling hour, never two
victims sent to one instance, never a cap on a protected or sensitive tenant.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from fsm.diagnosis import Cause, Diagnosis, diagnose, path_busy
from fsm.evidence import Judgement, evidence_params
from fsm.evidence import update as update_evidence
from fsm.evolve import evolve
from fsm.guardbudget import charge_guards
from fsm.levercost import MAX_RHO, LeverCost, measured_scale
from fsm.observation import LatencyWindow, Observation
from fsm.quantiles import Verdict
from fsm.spec import HostSpec, Level, Role, TenantSpec
from fsm.state import ControllerState, Pending, Step, TenantCtl
from fsm.tick_base import (
    _LEVEL_OF,
    EPISODES_KEPT,
    GUARD,
    HOUR_S,
    PLACE,
    RESIZE,
    WindowFn,
    _dwell,
    level_of,
    level_rank,
)
from fsm.tick_release import ReleaseTick
from fsm.usual_rate import served_before

# How many times in_flight_timeout_s an operation the actuators report under way may run before it
# is taken as hung (a cold model start can take minutes past the configured relaunch_s)
IN_FLIGHT_GRACE = 4.0


class Tick(ReleaseTick):
    __slots__ = ()

    @staticmethod
    def start(state: ControllerState, obs: Observation, spec: HostSpec) -> Tick:
        now = obs.t
        tick = Tick(
            spec=spec,
            obs=obs,
            tenants={t.name: state.tenant(t.name) for t in spec.by_role(Role.SENSITIVE)},
            layouts=dict(state.layouts),
            reconfigs=[r for r in state.reconfigs if r > now - HOUR_S],
            seq=state.seq,
            evidence_params=evidence_params(spec.policy),
            guard_cost=charge_guards(state, obs, spec),
            capped=state.capped,
        )
        queued = []
        for name, ctl in tick.tenants.items():
            if ctl.target is not None:
                tick.reserved.add(ctl.target)
            if ctl.pending is not None:
                tick.busy_gpus.update(s.gpu for s in ctl.stack[-1:] if s.gpu is not None and s.lever == RESIZE)
            if ctl.retry_queued is not None and now - ctl.retry_queued >= spec.policy.cooldown_s:
                queued.append((ctl.retry_queued, name))  # queued for a cooldown: its turn comes first
        cap = spec.policy.hold_retries_per_tick
        if cap:
            queued.sort()
            tick.retry_first = {name for _, name in queued[:cap]}
            tick.retry_slots = cap - len(tick.retry_first)
        # A GPU whose managed layout is not yet the actual one has a change under way.
        for gpu, layout in tick.layouts.items():
            g = obs.gpus.get(gpu)
            if g is not None and g.layout is not None and g.layout != layout:
                tick.busy_gpus.add(gpu)
        return tick

    # -- one tenant ----------------------------------------------------------------------------
    def restart_is_own(self, ctl: TenantCtl, down_s: float) -> bool:
        """Is a restart the tenant's sample reports, down for about `down_s`, one that tailguard did
        not make? Not while a move or resize of ours is under way (it restarts the tenant too), nor
        when it went down before our last outage ended and its slack ran out (`moved`: refreshed
        when the operation completes or fails, with twice its length and a cooldown of slack): a
        tenant whose latency comes from a file says so at its first request after it serves again,
        which at a low rate may come long after. A guard, or a release of one, restarts nobody: a
        deploy in its cooldown is the tenant's own."""
        if ctl.pending is not None:
            return False
        if ctl.moved is None:
            return True
        t0, d = ctl.moved
        return self.obs.t - down_s > t0 + 2.0 * d + self.spec.policy.cooldown_s

    def _backlog_settle(self, ctl: TenantCtl, down_s: float) -> tuple[dict[str, Any], float, float]:
        """The settle after the tenant served nothing for `down_s` and serves again: its evidence
        reset, and its windows left out until its backlog drains (ladder.step), with the settle's
        shortest and longest spans. The backlog drains at the spare rate: down_s x rho / (1 - rho)
        more (fsm.levercost), which the utilisation seen now (the backlog's) cannot tell. So the settle
        lasts until a window's median is back under the SLO, at least the outage or a cooldown, at
        most the drain at MAX_RHO."""
        now = self.obs.t
        settle = max(self.spec.policy.cooldown_s, down_s)
        longest = max(settle, down_s / (1.0 - MAX_RHO))
        fields = {
            "evidence": ctl.evidence.reset(),
            "settle_until": max(ctl.settle_until or now, now + longest),
            "drained_from": now + settle,
        }
        return fields, settle, longest

    def own_restart(self, t: TenantSpec, ctl: TenantCtl, down_s: float) -> TenantCtl:
        """The tenant restarted outside tailguard (a deploy, an out-of-memory kill, a crash) and
        served nothing for about `down_s`. Its backlog is no interference, and no lever cures it: its
        windows are left out of the evidence until it drains (ladder.step), and nothing measured of
        our last outage's cost survives it. Its outage spent what ours spend:
        the room the p99 has for outages, charged to the outage budget."""
        now = self.obs.t
        backlog, settle, longest = self._backlog_settle(ctl, down_s)
        kept = self._outages_in_window(ctl)
        shortest = down_s if ctl.own_restart_s is None else min(ctl.own_restart_s, down_s)
        ctl = evolve(
            ctl,
            **backlog,
            own_restart_s=shortest,
            outages=(*kept, (now - down_s, down_s)),
            outage_watch=None,
            watch_n=0.0,
            watch_bad=0.0,
            bad=0,
            good=0,
        )
        self.tenants[t.name] = ctl
        level = level_of(ctl)
        self.emit(
            t.name,
            "restarted",
            level,
            level,
            "",
            f"restarted outside tailguard, down about {down_s:.0f} s: its backlog is not judged until it"
            f" drains ({settle:.0f}-{longest:.0f} s), and its outage is charged to the outage budget",
            {"down_s": round(down_s, 1), "settle_s": round(settle, 1), "settle_max_s": round(longest, 1)},
        )
        return ctl

    def step(self, t: TenantSpec) -> None:
        policy = self.spec.policy
        now = self.obs.t
        ctl = self.tenants[t.name]
        ts = self.obs.tenants.get(t.name)
        slo = t.slo_s if t.slo_s is not None else float("inf")
        lw = ts.latency if ts is not None else None
        since = ctl.window_t if ctl.window_t is not None else ctl.evidence.t
        if since is not None and now > since:
            # (count, seconds it spans); no window this tick: (0, 0), nothing seen to judge a burst by
            self.windows[t.name] = (lw.count, now - since) if lw is not None else (0.0, 0.0)
        ev, w = update_evidence(ctl.evidence, lw, t.quantile, slo, self.evidence_params, now)
        settling = ctl.settle_until is not None and now < ctl.settle_until
        restarted = ts.restarted_s if ts is not None else None
        if restarted is not None and not settling and self.restart_is_own(ctl, restarted):
            ctl = self.own_restart(t, ctl, restarted)
            settling = True
        elif settling and ctl.drained_from is not None and now >= ctl.drained_from and _drained(lw, slo):
            ctl = evolve(ctl, settle_until=None, drained_from=None)  # a restart's backlog is served
            settling = False
        restart_backlog = settling and ctl.drained_from is not None
        if restart_backlog:
            # A restart's backlog is no sample of the tail at all: its requests would fill the
            # recent share and the fitted shape inside the SLO's bucket (fit_tau_s) with waits that
            # no interference made, and the tail read after it would look violating for minutes.
            ev, w = evolve(ctl.evidence, t=ev.t), evolve(w, verdict=Verdict.BETWEEN, value=None)
        elif settling:
            ev, w = ev.reset(), evolve(w, verdict=Verdict.BETWEEN)
        # One new TenantCtl for the whole update: a copy sets every field, and several of them
        # in a row were a third of a calm tick (issue 10's decide() budget). Each change reads only
        # fields no earlier one writes, so the values are those of the replace() chain it was.
        upd: dict[str, Any] = {"evidence": ev}
        if lw is None and ctl.window_t is None:
            upd["window_t"] = ctl.evidence.t  # the first tick without one: the last came the tick before
        elif lw is not None and ctl.window_t is not None:
            upd["window_t"] = None  # windows again: each spans one tick
        if ts is not None and ts.outage_s is not None:
            upd["measured_outage_s"] = ts.outage_s
        if ctl.watched_since is None and w.count > 0:
            upd["watched_since"] = now
        # A window with counts, or an empty one once the tenant has had requests: its silent
        # seconds are the usual rate's too. Left out (as a window that never came is not: the next
        # one spans its seconds), the rate was that of the seconds with requests: 1.6x a Poisson
        # tenant's at 0.2/s over 5 s ticks; on the Azure code trace, silent for minutes between
        # bursts, a median 3.4x the mean where it resized (docs/results.md, "Silent seconds").
        silent = lw is not None and lw.count == 0 and ctl.watched_since is not None
        if not settling and (w.bad is not None or silent):
            keep = self._window_keep(ctl)  # one decay for the window-weighted sums
            bad = w.bad or 0.0
            served_n, served_s = ctl.served
            dt = self.windows.get(t.name, (0.0, 0.0))[1]
            hist_n, hist_s = ctl.history
            if hist_s > 0.0:
                upd["history"] = (hist_n * keep, hist_s * keep)
            elif served_s <= 0.0 < dt:  # its first window of known seconds: what its server did before
                prior = served_before(ts, w.count + served_n, dt, policy.outage_budget_window_s)
                if prior is not None:
                    upd["history"] = prior
            upd.update(
                overspend=ctl.overspend * keep + bad - (1.0 - t.quantile) * w.count,
                overspend_t=now,
                served=(served_n * keep + w.count, served_s * keep + dt),
                served_sq=ctl.served_sq * keep + (w.count * w.count / dt if dt > 0 else 0.0),
                acted_n=ctl.acted_n + w.count,
                acted_bad=ctl.acted_bad + bad,
            )
            if ctl.episode_start is not None and w.count > 0:
                upd.update(episode_n=ctl.episode_n + w.count, episode_bad=ctl.episode_bad + bad)
                if not path_busy(self.spec, self.obs, t, self.traffic):
                    upd.update(clear_n=ctl.clear_n + w.count, clear_bad=ctl.clear_bad + bad)
        watch = ctl.outage_watch
        if watch is not None and now > watch[0]:
            upd.update(self._watch_outage(ctl, watch, w, now))
        last = w.value if w.value is not None else ctl.last_value
        if w.verdict is Verdict.VIOLATING:
            upd.update(bad=ctl.bad + 1, good=0, last_value=last, last_bad_t=now)
            if ctl.episode_start is None:
                # The episode began when the evidence started to grow, not when it was enough.
                upd.update(episode_start=ev.up_since or now, episode_n=ev.up_n, episode_bad=ev.up_bad)
                # Its first windows, counted before it was declared, go where the path is now.
                clear = not path_busy(self.spec, self.obs, t, self.traffic)
                upd.update(clear_n=ev.up_n if clear else 0.0, clear_bad=ev.up_bad if clear else 0.0)
        elif w.verdict is Verdict.GOOD:
            upd.update(good=ctl.good + 1, bad=0, last_value=last)
        elif w.verdict is Verdict.BETWEEN:
            upd.update(good=0, bad=0, last_value=last)
        if w.value is not None and w.count >= policy.min_window_count:
            upd["recent"] = (*ctl.recent, w.value)[-policy.release_horizon_windows :]
        ctl = evolve(ctl, **upd)
        self.tenants[t.name] = ctl
        self.fresh[t.name] = ctl  # this tick's own copy: the re-arm of a hold below may set it in place
        self._check_pending(t)
        ctl = self.tenants[t.name]
        if ctl.pending is not None:
            return
        level = level_of(ctl)
        free = (ctl.cooldown_until is None or now >= ctl.cooldown_until) and (
            ctl.backoff_until is None or now >= ctl.backoff_until
        )
        if level is Level.GUARDED:
            self._note_guard_helped(t)
        early = ev.up >= self.evidence_params.h / policy.y_windows  # one full tick of evidence
        # (the next tick at least: a tick longer than cooldown_s must not miss the retry)
        burst_since = now - ctl.burst_held_at if ctl.burst_held_at is not None else math.inf
        burst_held = burst_since <= max(policy.cooldown_s, self.windows.get(t.name, (0.0, 0.0))[1])
        # A retry queued for a slot (_retry_turn) keeps its trigger until its turn, unless the tail
        # is judged good meanwhile: the evidence crosses its threshold on one tick in Y, not on the
        # tick the slot comes free.
        queued = ctl.retry_queued is not None and w.verdict is not Verdict.GOOD
        want = (ctl.bad >= 1 or burst_held or queued) and free and (ctl.retry_at is None or now >= ctl.retry_at)
        if ctl.retry_queued is not None and not want:
            self._update(t.name, retry_queued=None)  # judged good, or nothing may act: no longer asks
            ctl = self.tenants[t.name]
        if want:
            if self._retry_turn(t.name, exempt=burst_held or not (ctl.stack or ctl.last_reason)):
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
            self.tenants[t.name] = evolve(
                ctl,
                clear_past=self._clear_past(ctl),
                failures=0,
                failed_levers=(),
                retry_levers=(),
                episode_start=None,
                episode_n=0.0,
                episode_bad=0.0,
                clear_n=0.0,
                clear_bad=0.0,
                last_reason="",
                retry_at=None,
                burst_held_at=None,
                backlog_since=None,
                episodes=episodes,
            )
        elif (
            level is Level.STEADY
            and ctl.flaps
            and ctl.released_at is not None
            and now - ctl.released_at > 4 * _dwell(policy.dwell_s, ctl.flaps)
        ):
            self.tenants[t.name] = evolve(ctl, flaps=0)  # calm for long enough: forget the flapping

    def _retry_turn(self, name: str, exempt: bool) -> bool:
        """May this tenant's escalation run on this tick? A retry (hold_retries_per_tick) may if
        it holds a slot: the slots go to the first that ask, in decide()'s order (most urgent first:
        a free instance or a budget still goes to the worst tail), except that those queued for a
        cooldown_s already hold one each, the longest queued first (none waits for ever behind
        tails that stay worse); the rest are queued, their first refusal's time kept. A burst's wait
        and an episode's first escalation (nothing on, nothing refused) are `exempt`: they never
        wait."""
        queued = self.tenants[name].retry_queued
        if exempt or self.retry_slots < 0:
            pass
        elif name in self.retry_first:
            self.retry_first.discard(name)
        elif self.retry_slots > 0:
            self.retry_slots -= 1
        else:
            if queued is None:
                self._update(name, retry_queued=self.obs.t)
            return False
        if queued is not None:
            self._update(name, retry_queued=None)
        return True

    @staticmethod
    def _watch_outage(
        ctl: TenantCtl, watch: tuple[float, float, float, float], w: Judgement, now: float
    ) -> dict[str, Any]:
        """Count the requests served since an outage was taken, and those over the SLO. Once the
        operation is done and a window's quantile is back to what it was before (its backlog
        served) or the settling time is over, what the outage cost against the prediction scales
        the model's from then on (the geometric mean over the tenant's measured outages)."""
        n = ctl.watch_n + w.count
        nbad = ctl.watch_bad + (w.bad or 0.0)
        settle = ctl.settle_until
        settling = settle is not None and settle > watch[0] and now < settle
        drained = w.value is not None and w.value <= watch[3]
        if ctl.pending is not None or (settling and not drained):
            return {"watch_n": n, "watch_bad": nbad}
        m = measured_scale(n, nbad, watch[2], watch[1])
        scale = m if ctl.cost_scale is None else math.sqrt(ctl.cost_scale * m)
        # The outage budget is time standing for requests: an outage that cost m times the model's
        # prediction spent m times its seconds (never less than them: the operator's allowance).
        outages = tuple((ts, s * m if ts == watch[0] and m > 1.0 else s) for ts, s in ctl.outages)
        return {"outage_watch": None, "watch_n": 0.0, "watch_bad": 0.0, "cost_scale": scale, "outages": outages}

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
            stopped = not all(o.outage_s == 0.0 for o in failed)  # 0: the actuators never stopped it
            why = failed[0].error or "operation failed"
            self._fail(t, p, "fail", why, {"target": failed[0].target}, stopped, failed[0].outage_s)
            return
        timeout = self.spec.policy.in_flight_timeout_s
        busy = p.target in act.in_flight or any(x in act.in_flight for x in self._aux_targets(ctl))
        # An operation the actuators still run is theirs to finish or fail (every call they make and
        # every readiness wait is bounded): undoing it now queues a move back behind it, a second
        # outage. Only one run IN_FLIGHT_GRACE times the timeout is taken as hung.
        if busy:
            if now - p.since > timeout * IN_FLIGHT_GRACE:
                self._fail(t, p, "timeout", f"still under way after {now - p.since:.0f} s", {})
            return
        actual = self._instance_now(t)
        want = ctl.target
        layout_ok = True
        top = ctl.stack[-1] if ctl.stack and not p.releasing else None
        gpu = top.gpu if top is not None and top.lever == RESIZE else None
        if gpu is not None and gpu in self.layouts:
            g = self.obs.gpus.get(gpu)
            layout_ok = g is not None and g.layout is not None and g.layout == self.layouts[gpu]
        if not ((want is None or actual == want) and layout_ok):
            if now - p.since > timeout:  # done by the actuators, never seen: a report lost
                self._fail(t, p, "timeout", f"no completion within {timeout:g}s", {})
            return
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
        settle = self._settle_s(ctl, p)
        if settle > 0.0:
            evidence["settle_s"] = round(settle, 1)
        self.tenants[t.name] = evolve(
            ctl,
            pending=None,
            stack=stack,
            evidence=ctl.evidence.reset() if settle > 0.0 else ctl.evidence,
            settle_until=now + settle if settle > 0.0 else ctl.settle_until,
            drained_from=None if settle > 0.0 else ctl.drained_from,  # ours settles its full time
            cooldown_until=max(ctl.cooldown_until or now, now + settle),
            moved=_moved_until(ctl, now),
            relaunches=ctl.relaunches + (p.lever in (PLACE, RESIZE)),
        )
        self.emit(t.name, "complete", lvl, level_of(self.tenants[t.name]), p.lever, "operation finished", evidence)

    def _settle_s(self, ctl: TenantCtl, p: Pending) -> float:
        """How long the backlog of the operation's outage (spent when it was taken) takes to clear:
        about the outage again at a utilisation of up to a half (fsm.levercost), at least a cooldown."""
        outage = sum(s for ts, s in ctl.outages if ts >= p.since - 1e-9)
        return max(self.spec.policy.cooldown_s, outage) if outage > 0.0 else 0.0

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
                out.append(evolve(st, caps=tuple(caps), mps=tuple(mps)))
        return tuple(out), lifted

    @staticmethod
    def _aux_targets(ctl: TenantCtl) -> tuple[str, ...]:
        top = ctl.stack[-1] if ctl.stack else None
        return (f"gpu:{top.gpu}",) if top is not None and top.gpu is not None and top.lever == RESIZE else ()

    def _fail(
        self,
        t: TenantSpec,
        p: Pending,
        kind: str,
        reason: str,
        evidence: dict[str, Any],
        stopped: bool = True,
        down_s: float | None = None,
    ) -> None:
        """Undo a failed operation's step. Its outage was charged to the budget when it was taken:
        one the actuators say never stopped the tenant (nvidia-smi refused the change) is given
        back. (One that lasted longer than charged, a copy that never got ready and then the move
        back, keeps its charge: charged in full it left no budget for the lever's second try, which
        was what cut those tails.) A move the actuators failed after stopping the tenant left a
        backlog of its `down_s` (or, not reported, the readiness wait and a relaunch back): its
        windows settle as after a restart of the tenant's own, not judged as interference."""
        policy = self.spec.policy
        ctl = self.tenants[t.name]
        outages = ctl.outages
        spent = sum(s for ts, s in outages if ts >= p.since - 1e-9)
        if not stopped and spent > 0.0:
            outages = tuple(o for o in outages if o[0] < p.since - 1e-9)
            evidence = {**evidence, "outage_refunded_s": round(spent, 1)}
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
        # A first failure of a lever in the episode is tried again after the backoff, once every
        # other lever is held or spent (a refusal, a copy that never got ready: often transient;
        # barred, a resize refused once left a tenant over its SLO for hours); a second failure
        # bars it for the episode.
        failed_levers, retry = ctl.failed_levers, ctl.retry_levers
        if not p.releasing and any(lv == p.lever for lv, _ in retry):
            failed_levers = tuple(sorted({*failed_levers, p.lever}))
        elif not p.releasing:
            retry = (*retry, (p.lever, self.obs.t + backoff))
        # The actuators' word that its new copy never got ready (or exited): a relaunch that failed.
        # A timeout is no such word (a report lost, or an operation hung before any relaunch).
        relaunched = kind == "fail" and stopped and p.lever in (PLACE, RESIZE)
        backlog: dict[str, Any] = {}
        if relaunched:
            down = down_s if down_s is not None else self._failed_outage(t, spent)
            backlog, settle, _longest = self._backlog_settle(ctl, down)
            evidence = {**evidence, "settle_s": round(settle, 1)}
        ctl = evolve(
            ctl,
            stack=stack,
            pending=None,
            failures=failures,
            relaunches=ctl.relaunches + relaunched,
            relaunch_fails=ctl.relaunch_fails + relaunched,
            failed_levers=failed_levers,
            retry_levers=retry,
            outages=outages,
            backoff_until=self.obs.t + backoff,
            moved=_moved_until(ctl, self.obs.t) if stopped else ctl.moved,
            target=target,
            last_reason=reason,
            outage_watch=None,  # a failed operation measures nothing of what an outage costs
            **backlog,
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
        if not (self.spec.policy.guards or self.spec.policy.mps) or self._barred(self.tenants[t.name], GUARD):
            return
        diag = diagnose(self.spec, self.obs, t, self.traffic)
        if diag.cause is not Cause.IO or not diag.aggressors:
            return
        self._guard(t, diag, partial(self._window, t, value, slo))

    def _escalate(self, t: TenantSpec, value: float | None, slo: float) -> None:
        policy = self.spec.policy
        if self._guard_useless(t):
            self._lift_useless_guard(t)  # a release like any other: the next lever after the cooldown
            return
        ctl = self.tenants[t.name]
        level = level_of(ctl)
        # While the guard on top is judged, every lever left waits (the guard is on the stack, so
        # the order below does not hang on the cause): no diagnosis unless a hold event shows it.
        judging = self._guard_judging(t)
        diag = None if judging else diagnose(self.spec, self.obs, t, self.traffic)
        done = {st.lever for st in ctl.stack}
        # I/O (or unknown) cause: the cheap guard first; compute or memory: skip to placement.
        first = [GUARD, PLACE, RESIZE] if diag is None or diag.cause in (Cause.IO, Cause.UNKNOWN) else [PLACE, RESIZE]
        rank = level_rank(level)
        order = [lv for lv in first if lv not in done and _LEVEL_OF[lv] > rank]
        after_resize = self._move_after_resize(ctl, diag)
        if after_resize:
            order.append(PLACE)
        enabled = {GUARD: policy.guards or policy.mps, PLACE: policy.placement, RESIZE: policy.mig}
        # The evidence is read only for an event (most escalations end in a hold that says what
        # the last one said); no lever changes the tenant's record before its event is built.
        window = partial(self._window, t, value, slo)
        why_not: dict[str, str] = {}
        place_after = ""  # why a move is tried after the resize (for the resize's event)
        if (
            diag is not None
            and diag.cause is Cause.IO
            and PLACE in order
            and RESIZE in order
            and enabled[RESIZE]
            and not self._barred(ctl, RESIZE)
            and self._path_cut(t) < 1.0
            and not self.place_grows(t, diag)
        ):
            # The tail was over its budget while the path was clear too: a same-sized move off the
            # path cures part of it, a bigger slice all of it (a queue's tail falls faster than its
            # load), so the resize first. Taken first, such a move spent the outage budget, cured
            # nothing, and the resize never came. (A move onto a larger instance is a resize of its
            # own: it keeps its place. A guard that did not cut the tail says less: a move off the
            # path of an aggressor that roams cured where the resize did not.)
            order.remove(RESIZE)
            order.insert(order.index(PLACE), RESIZE)
            place_after = (
                "the tail was over its budget while the path was clear: a same-sized move is expected"
                f" to cure {self.place_efficacy(t, diag):.2f} of its excess; a resize first"
            )
        if ctl.retry_levers:  # a lever that failed once in the episode: after every other one
            again = {lv for lv, _ in ctl.retry_levers}
            order = [lv for lv in order if lv not in again] + [lv for lv in order if lv in again]
        for lever in order:
            if not enabled[lever]:
                why_not[lever] = "disabled by policy"
                continue
            barred = self._barred(ctl, lever)
            if barred:
                why_not[lever] = barred
                continue
            if judging:
                why_not[lever] = judging
                continue
            assert diag is not None
            ok, reason = self._try(lever, t, diag, window)
            if ok:
                if place_after and lever != PLACE:  # a move taken after a held resize is no lever passed over
                    why_not[PLACE] = place_after
                extra: dict[str, Any] = {"passed_over": why_not} if why_not else {}
                if after_resize and lever == PLACE:  # why a move comes down the ladder's order
                    grown = ctl.stack[-1]
                    extra["after_resize"] = (
                        f"the tail still violates on {grown.to_instance} (resized at {grown.t:.0f} s) with"
                        " an I/O aggressor on its path: a move off the path is what is left"
                    )
                if extra:  # why not the cheaper levers: what an operator asks of a move first
                    e = self.events[-1]
                    if e.kind == "escalate" and e.tenant == t.name:
                        self.events[-1] = evolve(e, evidence={**e.evidence, **extra})
                return
            why_not[lever] = reason
        # Re-announce a hold only when its gist changes (not on every new penalty figure).
        gist = "; ".join(f"{k}: {v.split(' (')[0]}" for k, v in why_not.items()) or "no lever left"
        if gist != ctl.last_reason:
            self.emit(
                t.name,
                "hold",
                level,
                level,
                "",
                "; ".join(f"{k}: {v}" for k, v in why_not.items()) or "no lever left",
                {"window": window(), "diagnosis": (diag or diagnose(self.spec, self.obs, t, self.traffic)).as_event()},
            )
        # Re-arm (in place on this tick's own copy, which step() reads no more: a hold ends its
        # tenant's step). Where the only obstacle was a price the rent has not reached yet (every
        # other lever failed in this episode or is disabled), the rent grows by the tick: the next
        # attempt comes when it is expected to reach the price (at most a cooldown later), the
        # evidence kept up to the threshold. Fresh evidence would take minutes to gather for a mild
        # tail, the rent paying all along. Any other hold (a budget, a guard being judged, nowhere
        # to go) waits for Y more violating windows.
        ctl = self.tenants[t.name]
        unpaid = self.unpaid
        prices = [c for lv in why_not if (c := unpaid.get((t.name, lv))) is not None] if unpaid else None
        held = self.burst_held
        if held and any((t.name, lv) in held for lv in why_not):
            # A lever waits for a burst to pass: the next tick (burst_held_at: step() tries again
            # without a violating window), with the evidence kept, whatever holds the others (their
            # answers may change too; a burst is over in seconds).
            self._update(
                t.name,
                last_reason=gist,
                bad=0,
                retry_at=None,
                evidence=ctl.evidence.held_at(self.evidence_params.h),
                burst_held_at=self.obs.t,
            )
        elif prices and all((t.name, lv) in unpaid or self._barred(ctl, lv) or not enabled[lv] for lv in why_not):
            wait = min(_rent_due_s(c, policy.cost_margin or 0.0) for c in prices)
            self._update(
                t.name,
                last_reason=gist,
                bad=0,
                retry_at=self.obs.t + min(policy.cooldown_s, wait),
                evidence=ctl.evidence.held_at(self.evidence_params.h),
                burst_held_at=None,
            )
        else:
            # (a retry time left from an earlier hold is past: this attempt came after it)
            self._update(t.name, last_reason=gist, bad=0, evidence=ctl.evidence.reset(), burst_held_at=None)

    def _try(self, lever: str, t: TenantSpec, diag: Diagnosis, window: WindowFn) -> tuple[bool, str]:
        if lever == GUARD:
            return self._guard(t, diag, window)
        if lever == PLACE:
            return self._place(t, diag, window)
        return self._resize(t, diag, window)


def _moved_until(ctl: TenantCtl, now: float) -> tuple[float, float]:
    """`moved` once an operation of ours has ended at `now` (completed, or failed after it stopped
    the tenant): a restart that began before then is ours, however late it is reported (the
    decision's own slack kept where it reaches further)."""
    if ctl.moved is not None and ctl.moved[0] + 2.0 * ctl.moved[1] >= now:
        return ctl.moved
    return (now, 0.0)


def _drained(lw: LatencyWindow | None, slo: float) -> bool:
    """A window whose median is under the SLO: the backlog a restart left is served."""
    if lw is None or lw.count <= 0:
        return False
    median = lw.median
    return median is not None and median <= slo


def _rent_due_s(c: LeverCost, margin: float) -> float:
    """Seconds until the rent is expected to pay `c`'s price at the rate it grows now (the requests
    over the SLO beyond the budget, per second, times what the lever is expected to cure); inf
    when it does not grow."""
    growth = c.rate_rps * max(0.0, c.bad_share - c.budget_share) * c.efficacy
    short = margin * c.cost - c.benefit
    return max(0.0, short) / growth if growth > 0 else math.inf
