"""The control loop: observe, decide, reconcile, export, once per sample period.

- Ticks are scheduled against the monotonic clock at start + k * period, so they never drift; a
  tick that runs past the next slot counts one overrun and the loop resumes at the next future
  slot (missed slots are skipped, not caught up in a burst).
- host.observe() runs the samplers concurrently under their own timeouts; the whole observe is
  also bounded, so one hung source cannot stall the loop.
- host.apply() runs as a background task; while one is still running, the next tick does not
  start another: its desired state is kept (the newest only) and applied as soon as the running
  apply returns (the reconciler is level-triggered; its own tool-bound levers run in background).
- SIGHUP reloads the config through `reload` (validated first; a bad file keeps the old config and
  says why), SIGTERM / SIGINT stop after the current tick; host.close() flushes the journal.
- sd_notify: READY=1 after the first good tick, WATCHDOG=1 from the loop itself (a stalled loop is
  restarted by systemd), STATUS= one line per tick, STOPPING=1 on the way out.
- Degraded conditions (controller/degraded.py): unavailable sources and what the host reports
  (`conditions()`: a failed recovery, an unwritable journal) are kept in `self.degraded`, logged
  when they start and end, and named in STATUS=, /status and the metrics; the loop keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from controller.degraded import HOST, SOURCE, Degraded, source_conditions, summary
from controller.exporters.snapshot import OUTAGE_BUCKETS, Histogram, OutageView, SamplerView, Snapshot, TenantView
from controller.host import Host
from controller.sdnotify import Notifier
from controller.signals.base import SamplerStats, observe_deadline_s
from fsm.codec import encode
from fsm.decide import Decision, decide
from fsm.desired import DecisionEvent, DesiredState
from fsm.observation import Observation, TenantSample
from fsm.quantiles import window_from_samples
from fsm.spec import HostSpec, Role
from fsm.state import ControllerState
from schema.files import read_small_text
from schema.jsontext import loads_json

log = logging.getLogger("tailguard.daemon")

DecideFn = Callable[[ControllerState, Observation, HostSpec], Decision]
ReloadFn = Callable[[], HostSpec]  # raises (ConfigError, ValueError, OSError) with a readable message
MAX_PUSHED = 20_000  # pushed latency samples kept per tenant between two ticks
ACTION_KINDS = frozenset({"escalate", "release", "fail", "timeout", "complete"})  # "hold" is not an action


class Exporter(Protocol):
    """An exporter fed by the loop. Both calls must return at once (never wait on the network)."""

    def on_tick(self, snap: Snapshot) -> None: ...

    def on_events(self, events: tuple[DecisionEvent, ...]) -> None: ...


@dataclass(slots=True)
class DaemonOptions:
    host_name: str = "localhost"
    period_s: float = 2.0  # wall-clock seconds between ticks
    state_dir: str | None = None  # status.json and state.json live here
    until_t: float | None = None  # stop once host.now() reaches this (run --simulate --duration)
    # Stop this many wall-clock seconds after the loop starts (run --duration on a real host),
    # whatever the period: a check after each tick's sleep ran up to a period past it.
    stop_after_s: float | None = None
    max_ticks: int | None = None
    observe_timeout_s: float | None = None  # default: the period (at least 1 s)
    status_every_s: float = 5.0  # status.json / state.json: at most this often, and on every decision
    # Started with --dry-run: nothing switches it to enforce (the control topic's "enforce" is
    # refused; a reload keeps the mode at dry-run).
    dry_run_locked: bool = False


class Daemon:
    def __init__(
        self,
        host: Host,
        opts: DaemonOptions,
        *,
        spec: HostSpec | None = None,
        notifier: Notifier | None = None,
        exporters: list[Exporter] | None = None,
        reload: ReloadFn | None = None,
        decide_fn: DecideFn = decide,
        on_events: Callable[[tuple[DecisionEvent, ...]], None] | None = None,
        on_observation: Callable[[Observation], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.opts = opts
        self.spec: HostSpec = spec or host.spec
        self.notifier = notifier or Notifier(address="")
        self.exporters: list[Exporter] = list(exporters or [])
        self.reload_fn = reload
        self.decide_fn = decide_fn
        self.on_events = on_events
        self.on_observation = on_observation
        self.clock = clock
        self.wall = wall  # the Unix clock a pushed history's start is read against
        self.state = ControllerState()
        self.paused = False
        self.stopping = asyncio.Event()
        self.stop_reason = ""
        self._reload_pending = False
        self._apply_task: asyncio.Task[None] | None = None
        self._apply_next: DesiredState | None = None  # the newest desired state that came while applying
        self._pushed: dict[str, list[float]] = {}
        self._pushed_counts: dict[str, tuple[int, float]] = {}  # tenant -> (requests, over its SLO)
        self._pushed_history: dict[str, tuple[float, float]] = {}  # tenant -> (served_total, started_at)
        self._hist = Histogram()
        self._windows: dict[str, int] = {}
        self._violating: dict[str, int] = {}
        self._actions: dict[tuple[str, str], int] = {}
        self._actuations: dict[tuple[str, str], int] = {}
        self._restarts: dict[str, int] = {}  # tenant -> restarts outside tailguard (`restarted` events)
        self._reconfigs_total = 0
        self._reconfig_last = -math.inf
        self._recent: deque[Mapping[str, Any]] = deque(maxlen=20)
        self._reloads = {"ok": 0, "error": 0}
        self._last_reload_error = ""
        self._ticks = 0
        self._overruns = 0
        self._tick_errors = 0
        self._apply_busy = 0
        self._events_total = 0
        self._watchdog_pings = 0
        self._ready = False
        self._state_json = ""
        self._last_write = -math.inf
        self._apply_logged = -math.inf
        self._events_written = -1
        # The whole observe() as one pseudo-sampler: its health shows even on a simulated host.
        self._observe_stats = SamplerStats("host.observe")
        self._observe_ok = False
        self.degraded = Degraded()
        self._sources_seen: set[str] = set()  # every source ever named: its availability series stays
        self._outage_hist: dict[tuple[str, str], Histogram] = {}
        self._outage_seen: dict[str, float] = {}  # tenant -> wall of the newest outage counted
        self.snapshot = Snapshot(host=opts.host_name, started_wall=time.time(), period_s=opts.period_s)
        self._load_state()

    # -- inputs from outside the loop ----------------------------------------------------------
    def request_stop(self, reason: str = "requested") -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
            self.stopping.set()

    def request_reload(self) -> None:
        self._reload_pending = True

    def push_latency(self, tenant: str, samples: list[float]) -> bool:
        """Latency samples a tenant pushed (MQTT ingest); merged into the next observation."""
        if tenant not in self.spec.tenants:
            return False
        buf = self._pushed.setdefault(tenant, [])
        buf.extend(samples)
        if len(buf) > MAX_PUSHED:
            # The oldest leave the samples kept for quantiles, not the window: dropped outright, a
            # tick of 30,000 pushed requests read as 20,000 and their over-SLO ones went uncounted.
            cut = len(buf) - MAX_PUSHED
            slo = self.spec.tenants[tenant].slo_s
            over = float(sum(1 for x in buf[:cut] if x > slo)) if slo is not None else 0.0
            n, o = self._pushed_counts.get(tenant, (0, 0.0))
            self._pushed_counts[tenant] = (n + cut, o + over)
            del buf[:cut]
        return True

    def push_counts(self, tenant: str, count: int, over_slo: float) -> bool:
        """A tenant's own {count, over_slo} tally (MQTT ingest); added into the next observation."""
        if tenant not in self.spec.tenants:
            return False
        n, over = self._pushed_counts.get(tenant, (0, 0.0))
        self._pushed_counts[tenant] = (n + count, over + over_slo)
        return True

    def push_history(self, tenant: str, served_total: float, started_at: float) -> bool:
        """A pushing service's history (MQTT ingest): what it served since it started, and when.
        The newest start wins, and within one start the largest count (messages may come out of
        order); the next observation carries it (TenantSample.served_total, uptime_s)."""
        if tenant not in self.spec.tenants:
            return False
        old = self._pushed_history.get(tenant)
        if old is None or (started_at, served_total) > (old[1], old[0]):
            self._pushed_history[tenant] = (served_total, started_at)
        return True

    def control(self, command: str) -> str:
        """pause | resume | dry-run | enforce (the MQTT control topic, off by default)."""
        if command == "pause":
            self.paused = True
        elif command == "resume":
            self.paused = False
        elif command == "enforce" and self.opts.dry_run_locked:
            raise ValueError("control enforce: tailguard was started with --dry-run; restart it without to enforce")
        elif command in ("dry-run", "enforce"):
            self.spec = replace(self.spec, policy=replace(self.spec.policy, enforce=command == "enforce"))
        else:
            raise ValueError(f"unknown control command {command!r} (pause, resume, dry-run, enforce)")
        log.warning("control: %s", command)
        return command

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        installed = self._install_signals(loop)
        period = self.opts.period_s
        start = self.clock()
        k = 0
        timer = None
        if self.opts.stop_after_s is not None:
            timer = loop.call_later(self.opts.stop_after_s, self.request_stop, "duration reached")
        try:
            while not self.stopping.is_set():
                if self._reload_pending:
                    self._do_reload()
                t0 = self.clock()
                ok = await self._tick()
                dur = self.clock() - t0
                self._hist.observe(dur)
                self._ticks += 1
                if not ok:
                    self._tick_errors += 1
                self._publish(dur)
                self._ping_watchdog()
                if self.opts.max_ticks is not None and self._ticks >= self.opts.max_ticks:
                    self.request_stop("max ticks reached")
                if self.opts.until_t is not None and self.host.now() >= self.opts.until_t:
                    self.request_stop("duration reached")
                k += 1
                now = self.clock()
                deadline = start + k * period
                if now > deadline:
                    self._overruns += 1
                    k = math.floor((now - start) / period) + 1
                    deadline = start + k * period
                await self._sleep_until(deadline)
        finally:
            if timer is not None:
                timer.cancel()
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self._shutdown()
        return 0

    async def _sleep_until(self, deadline: float) -> None:
        # Sleep in slices no longer than half the watchdog interval, so a long period still pings.
        wd = self.notifier.watchdog_s
        while not self.stopping.is_set():
            left = deadline - self.clock()
            if left <= 0:
                return
            step = min(left, wd / 2) if wd else left
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=step)
            if wd:
                self._ping_watchdog()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        out = []
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: lambda: self.request_stop("SIGTERM"),
            signal.SIGINT: lambda: self.request_stop("SIGINT"),
            signal.SIGHUP: self.request_reload,
        }
        for sig, fn in handlers.items():
            try:
                loop.add_signal_handler(sig, fn)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread (tests): signals are delivered elsewhere
            out.append(sig)
        return out

    async def _tick(self) -> bool:
        timeout = self.opts.observe_timeout_s or observe_deadline_s(self.opts.period_s)
        st = self._observe_stats
        st.samples_total += 1
        self._observe_ok = False
        t0 = self.clock()
        try:
            obs = await asyncio.wait_for(self.host.observe(), timeout=timeout)
        except TimeoutError:
            log.warning("observe did not finish within %.1f s; tick skipped", timeout)
            st.errors_total += 1
            st.timeouts_total += 1
            st.last_error = f"timed out after {timeout:g} s"
            return False
        except Exception as e:  # a host bug must not kill the daemon; the tick is counted as failed
            log.error("observe failed: %s: %s", type(e).__name__, e)
            st.errors_total += 1
            st.last_error = f"{type(e).__name__}: {e}"
            return False
        st.last_duration_s = self.clock() - t0
        st.last_success_t = time.monotonic()
        self._observe_ok = True
        obs = self._merge_pushed(obs)
        tables = getattr(self.host, "mig_tables", None)  # the drivers' MIG tables, re-read on a driver change
        if tables is not None and tables is not self.spec.mig_tables:
            self.spec = replace(self.spec, mig_tables=tables)
        if self.on_observation is not None:
            self.on_observation(obs)
        d = self.decide_fn(self.state, obs, self.spec)
        self.state = d.state
        # Paused: hands off, as in a dry run (nothing set, moved or renewed), and tailguard's own
        # caps and MPS limits are lifted: a paused daemon does not renew or judge them, and left on
        # they would outlive their expiry.
        self._apply(replace(d.desired, enforce=False) if self.paused else d.desired)
        self._account(obs, d)
        if d.events:
            self._events_total += len(d.events)
            for ev in d.events:
                self._recent.append(_event_json(ev))
            if self.on_events is not None:
                self.on_events(d.events)
            for ex in self.exporters:
                ex.on_events(d.events)
        if not self._ready:
            self._ready = True
            self.notifier.ready(self._status_line(obs))
        return True

    def _merge_pushed(self, obs: Observation) -> Observation:
        """Pushed samples and tallies since the last tick become the tenant's window: count and
        over_slo add up (exact for samples, against the tenant's SLO); quantiles come from the
        samples, when any were pushed."""
        if not self._pushed and not self._pushed_counts:
            return obs
        tenants = dict(obs.tenants)
        for name in sorted(set(self._pushed) | set(self._pushed_counts)):
            samples = self._pushed.get(name, [])
            n, over = self._pushed_counts.get(name, (0, 0.0))
            if not samples and name not in self._pushed_counts:
                continue
            t = self.spec.tenants.get(name)
            slo = t.slo_s if t is not None else None
            exact: float | None = float(sum(1 for x in samples if x > slo)) if slo is not None else None
            # samples with no SLO to count them against: unknown
            over_slo = None if samples and exact is None else (exact or 0.0) + over
            prev = tenants.get(name, TenantSample())
            # The samples' quantiles ride along: the decision core reads a median (a queue, a server's
            # utilisation, a drained backlog) as p50, which a window of samples alone left blind.
            ordered = tuple(sorted(samples))
            window = replace(window_from_samples(ordered), count=len(samples) + n, samples=ordered, over_slo=over_slo)
            hist = self._pushed_history.get(name)
            if hist is not None:
                up = self.wall() - hist[1]
                # as the Prometheus sampler: a start in the future is a clock off, no seconds known
                prev = replace(prev, served_total=hist[0], uptime_s=up if up > 0 else None)
            tenants[name] = replace(prev, latency=window)
        self._pushed = {}
        self._pushed_counts = {}
        self._pushed_history = {}
        return replace(obs, tenants=tenants)

    def _apply(self, desired: DesiredState) -> None:
        if self._apply_task is not None and not self._apply_task.done():
            # Kept, not dropped: applied as soon as the running apply returns (only the newest).
            self._apply_busy += 1
            self._apply_next = desired
            return
        self._apply_task = asyncio.create_task(self._apply_guarded(desired))

    async def _apply_guarded(self, desired: DesiredState) -> None:
        nxt: DesiredState | None = desired
        while nxt is not None:
            try:
                await self.host.apply(nxt)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # reported and counted; the next tick tries again
                n = self._actuations.get(("apply", "error"), 0) + 1
                self._actuations[("apply", "error")] = n
                now = self.clock()
                if now - self._apply_logged >= 60.0:  # once a minute, not once a tick
                    self._apply_logged = now
                    log.error("apply failed (%d so far): %s: %s", n, type(e).__name__, e)
            nxt, self._apply_next = self._apply_next, None

    def _account(self, obs: Observation, d: Decision) -> None:
        pol = self.spec.policy
        for t in self.spec.tenants.values():
            if t.role is not Role.SENSITIVE or not t.slo_s:
                continue
            ts = obs.tenants.get(t.name)
            lat = ts.latency if ts is not None else None
            if lat is None or lat.count < pol.min_window_count:
                continue
            v = lat.quantile(t.quantile)
            if v is None:
                continue
            self._windows[t.name] = self._windows.get(t.name, 0) + 1
            if v > t.slo_s:
                self._violating[t.name] = self._violating.get(t.name, 0) + 1
        for e in d.events:
            if e.kind == "restarted":
                self._restarts[e.tenant] = self._restarts.get(e.tenant, 0) + 1
            if e.kind in ACTION_KINDS:
                result = {"fail": "failed", "timeout": "timeout", "complete": "completed"}.get(e.kind, "decided")
                if not e.applied:
                    result = "dry_run"
                key = (e.lever or e.kind, result)
                self._actions[key] = self._actions.get(key, 0) + 1
        for o in obs.actuation.outcomes:
            key = (o.target.split(":", 1)[0], "ok" if o.ok else "error")
            self._actuations[key] = self._actuations.get(key, 0) + 1
        new = [r for r in d.state.reconfigs if r > self._reconfig_last]
        if new:
            self._reconfigs_total += len(new)
            self._reconfig_last = max(new)
        self._last_obs = obs
        self._last_desired = d.desired

    def _publish(self, dur: float) -> None:
        obs: Observation | None = getattr(self, "_last_obs", None)
        desired: DesiredState | None = getattr(self, "_last_desired", None)
        throttled = {th.tenant for th in desired.throttles} if desired is not None else set()
        tenants = {}
        for name, t in sorted(self.spec.tenants.items()):
            ctl = self.state.tenant(name)
            ts = obs.tenants.get(name) if obs is not None else None
            lat = ts.latency if ts is not None else None
            tenants[name] = TenantView(
                name=name,
                role=t.role.value,
                level=ctl.level.value,
                slo_s=t.slo_s,
                quantile=t.quantile,
                p50_s=lat.quantile(0.5) if lat else None,
                p99_s=lat.quantile(0.99) if lat else None,
                p999_s=lat.quantile(0.999) if lat else None,
                value_s=lat.quantile(t.quantile) if lat else None,
                window_count=lat.count if lat else 0,
                windows_total=self._windows.get(name, 0),
                violating_windows_total=self._violating.get(name, 0),
                throttled=name in throttled,
                last_reason=ctl.last_reason,
                pending=ctl.pending.lever if ctl.pending is not None else "",
                own_restart_s=ctl.own_restart_s,
            )
        stats_fn = getattr(self.host, "sampler_stats", None)
        stats = [self._observe_stats, *(stats_fn().values() if callable(stats_fn) else ())]
        sources = self._sync_degraded(obs, [s.name for s in stats])
        samplers = tuple(
            SamplerView(
                s.name,
                s.samples_total,
                s.errors_total,
                s.timeouts_total,
                s.last_error,
                s.last_success_t,
                s.last_duration_s,
                up=self._observe_ok if s is self._observe_stats else obs is None or s.name not in obs.unavailable,
            )
            for s in stats
        )
        self.snapshot = Snapshot(
            host=self.opts.host_name,
            started_wall=self.snapshot.started_wall,
            wall=time.time(),
            t=obs.t if obs is not None else 0.0,
            ticks_total=self._ticks,
            overruns_total=self._overruns,
            tick_errors_total=self._tick_errors,
            apply_busy_total=self._apply_busy,
            tick_seconds=tuple(self._hist.cumulative()),
            tick_seconds_sum=self._hist.total,
            tick_seconds_count=self._hist.n,
            last_tick_s=dur,
            period_s=self.opts.period_s,
            tenants=tenants,
            throttles=desired.throttles if desired is not None and desired.enforce and not self.paused else (),
            actions=dict(self._actions),
            actuations=dict(self._actuations),
            restarts=dict(self._restarts),
            reconfigs_total=self._reconfigs_total,
            in_flight=obs.actuation.in_flight if obs is not None else (),
            samplers=samplers,
            unavailable=dict(obs.unavailable) if obs is not None else {},
            bad_input=dict(self.state.bad_input),
            events_total=self._events_total,
            recent_events=tuple(self._recent),
            enforcing=self.spec.policy.enforce,
            paused=self.paused,
            reloads=dict(self._reloads),
            last_reload_error=self._last_reload_error,
            watchdog_pings_total=self._watchdog_pings,
            ready=self._ready,
            state="running" if self._ready else "starting",
            degraded=self.degraded.conditions(),
            sources=sources,
            journal=_journal_view(self._host_call("journal_stats", None)),
            outages=(outages := _outages(self._host_call("recent_outages", {}))),
            outage_seconds=self._count_outages(outages),
            mig_tables=self._host_call("mig_table_views", {}),
        )
        for ex in self.exporters:
            try:
                ex.on_tick(self.snapshot)
            except Exception as e:  # an exporter bug is logged, never fatal to the loop
                log.error("exporter %s: %s: %s", type(ex).__name__, type(e).__name__, e)
        now = self.clock()
        # Files at most every status_every_s (a rename per tick costs more than the decision),
        # but at once when something was decided, so `tailguard status` never misses a decision.
        if self._events_total != self._events_written or now - self._last_write >= self.opts.status_every_s:
            self._last_write = now
            self._events_written = self._events_total
            self._write_status()
            self._save_state()
        if obs is not None:
            self.notifier.status(self._status_line(obs))

    def _host_call(self, name: str, default: Any) -> Any:
        """An optional Host method (LinuxHost has them, a simulated host may not); never raises."""
        fn = getattr(self.host, name, None)
        if not callable(fn):
            return default
        try:
            return fn()
        except Exception as e:  # a reporting bug must not stop the loop
            log.error("host.%s: %s: %s", name, type(e).__name__, e)
            return default

    def _count_outages(self, outages: Mapping[str, tuple[OutageView, ...]]
                       ) -> dict[tuple[str, str], tuple[tuple[tuple[str, int], ...], float, int]]:  # fmt: skip
        """Feed outages not seen before into the cumulative histograms (tenant, kind)."""
        for tenant, recs in outages.items():
            seen = self._outage_seen.get(tenant, -math.inf)
            for o in recs:
                if o.wall > seen:
                    h = self._outage_hist.setdefault(
                        (tenant, o.kind), Histogram(OUTAGE_BUCKETS, [0] * (len(OUTAGE_BUCKETS) + 1))
                    )
                    h.observe(o.seconds)
            if recs:
                self._outage_seen[tenant] = max(seen, max(o.wall for o in recs))
        return {k: (tuple(h.cumulative()), h.total, h.n) for k, h in sorted(self._outage_hist.items())}

    def _sync_degraded(self, obs: Observation | None, samplers: list[str]) -> dict[str, bool]:
        """Degraded conditions from this tick; returns source -> available for the metrics."""
        unavailable = dict(obs.unavailable) if obs is not None else {}
        if not self._observe_ok:
            unavailable[self._observe_stats.name] = self._observe_stats.last_error or "no observation yet"
        self.degraded.sync(SOURCE, source_conditions(unavailable))
        self.degraded.sync(HOST, self._host_call("conditions", {}))
        self._sources_seen.update(samplers, unavailable)
        return {n: n not in unavailable for n in sorted(self._sources_seen)}

    def _ping_watchdog(self) -> None:
        if self.notifier.watchdog():
            self._watchdog_pings += 1

    def _status_line(self, obs: Observation) -> str:
        levels = [v.level for v in self.snapshot.tenants.values() if v.level != "steady"]
        mode = "paused" if self.paused else ("enforce" if self.spec.policy.enforce else "dry-run")
        host = [c for c in self.degraded.conditions() if c.group != SOURCE]
        unav = sorted(obs.unavailable)
        more = f" (+{len(unav) - 6} more)" if len(unav) > 6 else ""
        return (
            f"{'DEGRADED (' + summary(tuple(host)) + '); ' if host else ''}"
            f"{mode}; tick {self._ticks}; {len(self.spec.tenants)} tenants"
            f"{', ' + str(len(levels)) + ' isolated' if levels else ''}; "
            f"{len(self.snapshot.throttles)} throttles; {len(obs.actuation.in_flight)} in flight; "
            + (f"unavailable: {', '.join(unav[:6])}{more}" if unav else "all sources available")
        )

    # -- reload / state ------------------------------------------------------------------------
    def _do_reload(self) -> None:
        self._reload_pending = False
        if self.reload_fn is None:
            log.warning("SIGHUP: nothing to reload (no config file)")
            return
        self.notifier.reloading()
        try:
            spec = self.reload_fn()
        except Exception as e:  # the message names the file and key; the old config stays
            self._reloads["error"] += 1
            self._last_reload_error = str(e)
            log.error("reload failed, keeping the running config:\n%s", e)
        else:
            self.spec = spec
            self._reloads["ok"] += 1
            self._last_reload_error = ""
            log.warning("config reloaded: %d tenants", len(spec.tenants))
        self.notifier.ready()

    def _state_path(self, name: str) -> Path | None:
        return Path(self.opts.state_dir) / name if self.opts.state_dir else None

    def _load_state(self) -> None:
        p = self._state_path("state.json")
        if p is None or not p.exists():
            return
        try:
            # loads_json, not from_json's json.loads: a key given twice is refused, not its last value read
            self.state = ControllerState.from_data(loads_json(read_small_text(p)))
            # Reconfigurations the state remembers (the rolling-hour budget) were counted by the
            # previous process: counted again, every restart looked like a reconfiguration storm.
            self._reconfig_last = max(self.state.reconfigs, default=-math.inf)
            log.info("resumed controller state from %s", p)
        except (OSError, ValueError) as e:
            log.warning("%s: cannot resume (%s); starting from a clean state", p, e)

    def _save_state(self) -> None:
        p = self._state_path("state.json")
        if p is None:
            return
        text = self.state.to_json()
        if text != self._state_json:
            _atomic_write(p, text)
            self._state_json = text

    def _write_status(self) -> None:
        p = self._state_path("status.json")
        if p is not None:
            from controller.status import status_json

            _atomic_write(p, json.dumps(status_json(self.snapshot, self.opts.status_every_s), sort_keys=True))

    async def _shutdown(self) -> None:
        log.warning("stopping: %s", self.stop_reason or "loop ended")
        self.notifier.stopping()
        if self._apply_task is not None and not self._apply_task.done():
            # Let a reconcile finish (it journals what it does); it is bounded by the host.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._apply_task), timeout=30)
        try:
            await self.host.close()
        except Exception as e:
            log.error("host close: %s: %s", type(e).__name__, e)
        # The final state and status, whatever the write interval: `tailguard status` says "stopped".
        self.snapshot = replace(self.snapshot, state="stopped", stop_reason=self.stop_reason or "loop ended",
                                wall=time.time(), ready=False)  # fmt: skip
        self._save_state()
        self._write_status()
        self.notifier.close()


def _journal_view(st: Any) -> Mapping[str, Any] | None:
    """A copy of the host's JournalStats (the reconciler keeps counting while exporters read)."""
    if st is None:
        return None
    return {
        "appends_total": st.appends_total,
        "errors_total": dict(st.errors_total),
        "torn_repairs_total": st.torn_repairs_total,
        "reopens_total": st.reopens_total,
        "skipped_lines_total": st.skipped_lines_total,
        "newer_records_total": st.newer_records_total,
        "failing": st.failing,
        "failing_since": st.failing_since,
        "last_error": st.last_error,
    }


def _outages(raw: Mapping[str, Any]) -> Mapping[str, tuple[OutageView, ...]]:
    """The host's recent measured outages (tenant -> records with kind, seconds, wall)."""
    out: dict[str, tuple[OutageView, ...]] = {}
    for tenant, recs in raw.items():
        out[tenant] = tuple(OutageView(str(r["kind"]), float(r["seconds"]), float(r["wall"])) for r in recs)
    return out


def _event_json(e: DecisionEvent) -> Mapping[str, Any]:
    out: dict[str, Any] = encode(e)
    return out


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        log.error("%s: cannot write: %s", path, e.strerror or e)
