"""The daemon's externally visible state, rebuilt once per tick as an immutable Snapshot.

Exporters run on other threads (the Prometheus HTTP server) or other tasks (MQTT); they read the
latest Snapshot, which the loop swaps in with one reference assignment, so a scrape never sees a
half-updated tick and never takes a lock the loop could wait on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.degraded import Condition
from fsm.desired import Throttle

# Tick duration histogram bounds (seconds); the loop's budget is the sample period (0.1-60 s).
TICK_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Measured outage bounds (seconds): a warm move's switch (sub-second) up to an LLM server's relaunch.
OUTAGE_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

LEVEL_NUMBER = {"steady": 0, "guarded": 1, "placed": 2, "resized": 3}


@dataclass(slots=True)
class Histogram:
    """Cumulative histogram the loop owns; `copy()` freezes it into a Snapshot."""

    bounds: tuple[float, ...] = TICK_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(TICK_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.bounds):
            if v <= b:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += v
        self.n += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for b, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += c
            out.append(("+Inf" if b == float("inf") else repr(b), acc))
        return out


@dataclass(frozen=True, slots=True)
class TenantView:
    name: str
    role: str
    level: str = "steady"
    slo_s: float | None = None
    quantile: float = 0.99
    p50_s: float | None = None
    p99_s: float | None = None
    p999_s: float | None = None
    value_s: float | None = None  # the last window's quantile the SLO is judged on
    window_count: int = 0  # requests in the last window
    windows_total: int = 0  # windows with enough requests to judge
    violating_windows_total: int = 0
    throttled: bool = False
    last_reason: str = ""
    pending: str = ""
    # the shortest of its own restarts (a deploy, a crash), which the core prices its moves at no
    # less than before a move is measured (fsm.outage.priced_relaunch); doctor compares relaunch_s
    own_restart_s: float | None = None


@dataclass(frozen=True, slots=True)
class SamplerView:
    name: str
    samples_total: int
    errors_total: int
    timeouts_total: int
    last_error: str
    last_success_mono: float | None  # time.monotonic() of the last good sample
    last_duration_s: float
    up: bool = True  # the last sample succeeded


@dataclass(frozen=True, slots=True)
class OutageView:
    """One measured outage of a tenant: a move's (old copy stopped to new copy ready) or a resize's."""

    kind: str  # "move" | "resize"
    seconds: float
    wall: float  # time.time() when it ended


@dataclass(frozen=True, slots=True)
class MigTableView:
    """The MIG profile table in force on one GPU (controller/mig_tables.py)."""

    gpu: str
    model: str
    source: str  # driver | built-in | none
    driver: str
    differences: int  # how many ways the driver's table differs from the built-in one


@dataclass(frozen=True, slots=True)
class Snapshot:
    host: str
    started_wall: float
    wall: float = 0.0  # time.time() of the tick
    t: float = 0.0  # the host's clock (simulated time under --simulate)
    ticks_total: int = 0
    overruns_total: int = 0
    tick_errors_total: int = 0
    apply_busy_total: int = 0
    tick_seconds: tuple[tuple[str, int], ...] = ()  # cumulative buckets
    tick_seconds_sum: float = 0.0
    tick_seconds_count: int = 0
    last_tick_s: float = 0.0
    period_s: float = 1.0
    tenants: Mapping[str, TenantView] = field(default_factory=dict)
    throttles: tuple[Throttle, ...] = ()
    actions: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (kind, result) -> n
    actuations: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (target kind, ok|error)
    restarts: Mapping[str, int] = field(default_factory=dict)  # tenant -> restarts outside tailguard
    reconfigs_total: int = 0
    in_flight: tuple[str, ...] = ()
    samplers: tuple[SamplerView, ...] = ()
    unavailable: Mapping[str, str] = field(default_factory=dict)
    bad_input: Mapping[str, int] = field(default_factory=dict)
    events_total: int = 0
    recent_events: tuple[Mapping[str, Any], ...] = ()
    enforcing: bool = False
    paused: bool = False
    reloads: Mapping[str, int] = field(default_factory=dict)  # ok|error -> n
    last_reload_error: str = ""
    watchdog_pings_total: int = 0
    ready: bool = False
    state: str = "starting"  # starting | running | stopped
    stop_reason: str = ""
    degraded: tuple[Condition, ...] = ()
    sources: Mapping[str, bool] = field(default_factory=dict)  # source -> available
    journal: Mapping[str, Any] | None = None  # the host's journal counters (daemon._journal_view), if any
    outages: Mapping[str, tuple[OutageView, ...]] = field(default_factory=dict)  # tenant -> recent, oldest first
    # (tenant, kind) -> (cumulative buckets, sum, count) of every outage measured since start
    outage_seconds: Mapping[tuple[str, str], tuple[tuple[tuple[str, int], ...], float, int]] = field(
        default_factory=dict
    )
    mig_tables: Mapping[str, MigTableView] = field(default_factory=dict)
