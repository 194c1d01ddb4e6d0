"""What the decision core is told once: the tenants, the policy knobs, the topology.

The controller builds these from the validated TOML config (controller/config.py); the simulator
builds them from a scenario. Plain frozen dataclasses: the core never sees pydantic or files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from fsm.mig import GpuModel
from fsm.observation import InstanceRef
from fsm.outage import DEFAULT_HANDOVER_GAP_S, DEFAULT_RECONFIG_S, DEFAULT_RELAUNCH_S, MoveKind
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

    def outage_s(self, kind: MoveKind) -> float:
        """Seconds it serves nothing when moved this way (fsm.outage.move_outage_s)."""
        return _outage_of(kind, self.relaunch_s, self.reconfig_s, self.handover == "warm", self.handover_gap_s)

    @property
    def move_outage_s(self) -> float:
        """A move into an existing instance (MoveKind.EXISTING). For a resize, ask outage_s with its
        kind: one that destroys the tenant's own instance costs the reconfiguration as well."""
        return self.outage_s(MoveKind.EXISTING)


@dataclass(frozen=True, slots=True)
class Policy:
    y_windows: int = 3  # consecutive violating windows that trigger
    z_windows: int = 5  # consecutive good windows that release one level
    release_ratio: float = 0.8  # good = quantile < release_ratio * slo
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
    mps_guard_percent: int = 50
    max_reconfigs_per_hour: int = 4
    # Outages (moves, resizes) a sensitive tenant may be put through per rolling hour, as a share
    # of its tail's error budget: (1 - quantile) x 3600 s. A p99 tenant: 0.5 x 36 s = 18 s/hour.
    # An outage past the budget would put more requests in the tail than the lever can save.
    outage_budget_share: float | None = 0.5
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

    def sensitive(self) -> list[TenantSpec]:
        return [t for t in sorted(self.tenants.values(), key=lambda t: t.name) if t.role is Role.SENSITIVE]
