"""What the decision core is told once: the tenants, the policy knobs, the topology.

The controller builds these from the validated TOML config (controller/config.py); the simulator
builds them from a scenario. Plain frozen dataclasses: the core never sees pydantic or files.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any, TypeVar

from fsm.mig import GpuModel
from fsm.observation import InstanceRef
from fsm.outage import (
    DEFAULT_HANDOVER_GAP_S,
    DEFAULT_READINESS_TIMEOUT_S,
    DEFAULT_RECONFIG_S,
    DEFAULT_RELAUNCH_S,
    MoveKind,
)
from fsm.outage import move_outage_s as _outage_of
from fsm.topology import Tier, Topology


class Role(StrEnum):
    SENSITIVE = "sensitive"  # has an SLO; the ladder protects it; never throttled
    BULK = "bulk"  # bandwidth-heavy (ETL, data loading); may be throttled
    COMPUTE = "compute"  # SM-heavy (training); may get an MPS limit
    PROTECTED = "protected"  # never throttled, never moved


class Level(StrEnum):
    STEADY = "steady"
    GUARDED = "guarded"
    PLACED = "placed"
    RESIZED = "resized"


LEVEL_ORDER = (Level.STEADY, Level.GUARDED, Level.PLACED, Level.RESIZED)


T = TypeVar("T")


@lru_cache(maxsize=4096, typed=True)  # typed: 5 and 5.0 give results of different types
def _outage_memo(kind: MoveKind, relaunch_s: float, reconfig_s: float, warm: bool, gap_s: float) -> float:
    """fsm.outage.move_outage_s, memoised: a pure function of a few figures that the ladder asks
    for several times per victim and tick."""
    return _outage_of(kind, relaunch_s, reconfig_s, warm, gap_s)


@dataclass(frozen=True, slots=True)
class TenantSpec:
    name: str
    role: Role
    cgroup: str | None = None  # path relative to the cgroup root
    gpu: str | None = None
    instance: InstanceRef | None = None  # home MIG instance
    slo_s: float | None = None  # latency threshold (tau) for sensitive tenants
    quantile: float = 0.99
    devices: tuple[str, ...] = ()  # block devices / NICs it uses, when known
    mps: bool = False  # shares its GPU through MPS (compute tenants)
    # What a move costs it (fsm.outage, the same function the simulator charges with): its relaunch
    # until it serves again, a MIG reconfiguration of its GPU, and its hand-over ("warm": a new copy
    # starts beside the old one, then the switch-over takes handover_gap_s).
    relaunch_s: float = DEFAULT_RELAUNCH_S
    reconfig_s: float = DEFAULT_RECONFIG_S
    handover: str = "restart"
    handover_gap_s: float = DEFAULT_HANDOVER_GAP_S
    # How long its launcher waits for a relaunched copy to serve before it gives up on the move
    # (a restart hand-over then relaunches it where it was: what a failed move costs).
    readiness_timeout_s: float = DEFAULT_READINESS_TIMEOUT_S

    def outage_s(self, kind: MoveKind) -> float:
        """Seconds it serves nothing when moved this way (fsm.outage.move_outage_s)."""
        return _outage_memo(kind, self.relaunch_s, self.reconfig_s, self.handover == "warm", self.handover_gap_s)

    @property
    def move_outage_s(self) -> float:
        """A move into an existing instance (MoveKind.EXISTING). For a resize, ask outage_s with its
        kind: one that destroys the tenant's own instance costs the reconfiguration as well."""
        return self.outage_s(MoveKind.EXISTING)


@dataclass(frozen=True, slots=True)
class Policy:
    # SLO evidence (fsm.evidence): a sequential test on the share of requests over the SLO.
    evidence_burn: float = 2.0  # the violation hypothesis: the error budget burns this much too fast
    evidence_alpha: float = 1e-4  # trigger at ln(1/alpha) nats of evidence
    release_burn: float = 0.25  # the release hypothesis: the tail burns this share of its budget
    release_alpha: float = 0.2  # release at ln(1/release_alpha) nats of evidence for it
    rate_tau_s: float = 60.0  # time constant of the request rate and recent bad share
    y_windows: int = 3  # ticks of evidence a trigger needs at least (sources without counts: windows)
    z_windows: int = 5  # ticks of evidence a release needs at least
    release_ratio: float = 0.8  # sources without counts: a good window's quantile < release_ratio * slo
    release_horizon_windows: int = 24  # a resize is given back only if the worst of these would hold
    min_window_count: int = 5  # windows with fewer requests neither violate nor count as good
    cooldown_s: float = 30.0  # after any action on a tenant, no further escalation
    dwell_s: float = 60.0  # minimum time at a level before stepping back
    throttle_factor: float = 0.5  # cap = factor x the aggressor's observed rate
    throttle_floor_bps: float = 50e6  # never cap below this
    throttle_expiry_s: float = 120.0  # caps expire unless renewed
    # A guard that still binds after this long is a standing cost to the aggressor: move the
    # victim off the aggressor's path if a quieter instance exists, then lift the caps (None: never).
    guard_relief_s: float | None = 60.0
    # A relief move must leave the tail inside its quantile even if it fails: its new copy never
    # ready, the tenant down for the launcher's readiness wait and a relaunch back (a restart
    # hand-over; tick_base._relief_short). False: the budgets a cure's move meets, no more.
    relief_worst_case: bool = True
    mps_guard_percent: int = 50
    max_reconfigs_per_hour: int = 4
    # Escalations per tick of tenants with a lever on or refused before (a hold, a failed operation,
    # a held release), the most urgent first, one queued for a cooldown_s before any; the others
    # ask again on the next ticks. An episode's first escalation never waits.
    # Victims hit by one episode are refused alike and come back on the same tick: spread over
    # ticks, their retries keep the tick's cost near one escalation's (0: no limit).
    hold_retries_per_tick: int = 1
    # Outages (moves, resizes) a sensitive tenant may be put through per rolling window, as a share
    # of its tail's error budget over that window, at most a p99's (tick_base.outage_tail):
    # min(1 - quantile, 0.01) x window. A p99 tenant over a day:
    # 0.5 x 864 s = 432 s. (An hour, 18 s, would bar every relaunch that takes longer, as a vLLM
    # server's does; SLOs are kept over days to weeks.) Whether a lever pays is fsm.levercost's.
    outage_budget_share: float | None = 0.5
    outage_budget_window_s: float = 14400.0
    # The budget spends only an outage's seconds past the tenant's headroom: the tail it has now over
    # its window's median, while that median is under the SLO. A request held no longer than that
    # waits no longer than the tail's already do; a median over the SLO is a queue, whose every
    # request the outage delays on top of its wait: no headroom (tick_base._headroom). False: every
    # second of every outage is spent.
    outage_budget_headroom: bool = True
    # Seconds a tenant's requests are watched (from its first) before an outage of it is priced: until
    # then its usual rate and spread are guesses (one first seen in a burst takes the burst for
    # its usual rate), so no move or resize (tick_base._outage_short). 0: price from the first tick.
    outage_warmup_s: float = 60.0
    # An outage is charged for the requests a burst it meets would hold: this many standard
    # deviations of the tenant's per-tick counts beyond Poisson's (tick_base._charged_s); two, a
    # burst that about one outage in forty meets. The margin must fit a p99's budget, whatever the
    # SLO's quantile (tick_base._outage_short). 0: the mean rate only.
    outage_spread_sigmas: float = 2.0
    # A move or resize waits for a burst to pass (this tick's arrivals above the recent or the usual
    # rate, the higher, by more than Poisson noise), tried again on every tick and taken on the first
    # that is no burst: an outage taken in a burst holds the burst's requests (tick_base._burst_now).
    # The same for a backlog of the tenant's own arrivals, for at most the outage's length
    # (tick_base._backlog_now): its counts show no burst, its queue every request the outage delays.
    outage_burst_wait: bool = True
    # A move or resize is not taken where the requests its outage holds past the tenant's tail, times
    # this margin, outnumber what a cure takes out of its window's top 1% before the window ends:
    # the p99 would rise, however the lever pays on the requests over the SLO
    # (tick_base._tail_short). The margin allows for a cure that comes short. None: no check.
    outage_tail_margin: float | None = 1.5
    # Where the windows of that p99 start (seconds on the observations' clock: Unix time live, e.g.
    # a midnight UTC); None: at the tenant's first request, one window after another.
    outage_window_anchor_s: float | None = None
    # Early in a tenant's life its rate is read off a few minutes, and a lever is asked for when the
    # load is up: the tail check may count the window's requests to come at the rate ahead times
    # watched / (watched + this many seconds), a prior of that much quiet. 0: at the rate ahead as
    # read. Off: on six seeds 120 s took 3 of 13 worse-than-static cases away for 6% more requests
    # over the SLO, 300 s 9 of 13 for 11% (docs/results.md, "Early levers, a prior of quiet").
    outage_tail_prior_s: float = 0.0
    # The capped tenants' side: a guard may hold each capped tenant at its caps for at most this
    # share of the time it runs (both exponentially weighted over guard_budget_window_s), and at
    # least rate_tau_s (the futility stop's first look at whether the guard helps); past it
    # its caps are lifted, it is not capped again until the budget recovers, and the victims turn
    # to the other levers.
    guard_cost_share: float | None = 0.05
    guard_budget_window_s: float = 3600.0
    # Cost-aware levers (fsm.levercost): a move or resize is taken only when the requests it is
    # expected to keep under the SLO exceed cost_margin x those its outage pushes over (None: no check).
    # 0.5, before the ski-rental break-even: a late purchase has no time left to repay its outage
    # (measured over 1,500 perturbed cases, docs/results.md; the trade-off in docs/decisions.md).
    cost_margin: float | None = 0.5
    episode_prior_s: float = 300.0  # prior mean length of a violation episode (worth one episode)
    unknown_cause_efficacy: float = 0.25  # what a move is expected to cure when the cause is unknown
    # Prior probability that a relaunch's new copy never gets ready (worth FAIL_PRIOR_WEIGHT
    # relaunches; each tenant's own relaunches refine it): such a move cures nothing and holds the
    # tenant for the readiness wait and a relaunch back (fsm.levercost). 0: a tenant is priced for
    # its own failures only (2% measured no better: docs/results.md, "A relaunch that may fail").
    relaunch_fail_prior: float = 0.0
    guard_lesson_s: float = 14400.0  # how long a guard that did not cut the tail is remembered
    # A guard costs the capped tenants throughput: one that has not cut the victim's share of
    # requests over the SLO by this fraction (after 2 x rate_tau_s) is lifted when the tail escalates.
    guard_min_cut: float = 0.2
    backoff_s: float = 60.0  # after a failed action; doubles per failure
    backoff_max_s: float = 900.0
    in_flight_timeout_s: float = 300.0  # an operation not reported by then counts as failed
    # Diagnosis thresholds.
    io_share_tier: Tier = Tier.NUMA  # an aggressor shares the path when this close or closer
    io_aggressor_min_bps: float = 20e6  # ignore tenants moving less than this
    pcie_busy_ratio: float = 0.5  # GPU PCIe use / link capacity that counts as I/O pressure
    sm_busy: float = 0.85
    dram_busy: float = 0.8
    # Placement weights.
    w_root_complex: float = 1.0
    w_numa_block: float = 0.5
    w_irq: float = 0.25
    w_move: float = 0.2
    move_other_gpu: float = 1.0  # move-cost units of a move to another GPU (same GPU: 0.3)
    placement_margin: float = 0.05  # the best candidate must beat the current one by this much
    move_step_up: bool = True  # of equally quiet free instances, a move takes the next size up first
    high_bw_bps: float = 1e9  # a tenant moving more than this counts as high-bandwidth
    block_io_norm_bps: float = 2e9
    irq_norm_rate: float = 50_000.0
    # Resize ladder per GPU model key (profile names, smallest first); default: 1g, 2g, 3g, 4g, 7g.
    mig_ladder: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Levers.
    early_guard: bool = False  # guard on the first violating window when the cause is clearly I/O
    guards: bool = True
    placement: bool = True
    mig: bool = True
    mps: bool = True
    enforce: bool = True  # False: dry-run / shadow; decisions are computed but marked not applied


@dataclass(frozen=True, slots=True)
class HostSpec:
    """Everything static the decision core needs."""

    topology: Topology
    tenants: Mapping[str, TenantSpec]
    policy: Policy = Policy()
    gpu_models: Mapping[str, str] = field(default_factory=dict)  # gpu -> GpuModel key
    # gpu -> the MIG profile table its driver lists, where that differs from the built-in table of
    # its model (fsm.migdriver builds it from `nvidia-smi mig -lgip/-lgipp`): the driver wins.
    mig_tables: Mapping[str, GpuModel] = field(default_factory=dict)
    # Tables derived from this spec alone (fsm.diagnosis, fsm.placement, ...), built on first use by
    # derived(): a spec never changes after it is made (nobody mutates its mappings), so neither do
    # they. Not part of the spec's value: no init, no compare, no repr, and fsm.codec skips it.
    _derived: dict[Hashable, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def derived(self, key: Hashable, build: Callable[[HostSpec], T]) -> T:
        """The table `key`, built by `build(self)` the first time it is asked for."""
        try:
            table: T = self._derived[key]
        except KeyError:
            table = self._derived[key] = build(self)
        return table

    def sensitive(self) -> list[TenantSpec]:
        return list(self.by_role(Role.SENSITIVE))

    def by_role(self, *roles: Role) -> tuple[TenantSpec, ...]:
        """The tenants of these roles, by name (a per-spec table)."""
        return self.derived(("roles", roles), lambda s: tuple(t for t in _by_name(s) if t.role in roles))


def _by_name(spec: HostSpec) -> tuple[TenantSpec, ...]:
    return tuple(sorted(spec.tenants.values(), key=lambda t: t.name))
