"""The decision core's output: the isolation the host should have now, and why.

Level-triggered: the reconciler makes the host match a DesiredState, whatever it was before.
- throttles: the complete set of caps tailguard wants; any cap tailguard made that is not listed
  here must be lifted. Each cap carries its expiry: past it, the cap is lifted even if nobody
  says so (crash safety).
- mps: active-thread percentages for MPS clients (complete set, like throttles).
- placements: tenant -> MIG instance, for tenants tailguard has moved (others stay where they are).
- layouts: GPU -> MIG layout, for GPUs whose layout tailguard manages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fsm.mig import Slot
from fsm.observation import InstanceRef


@dataclass(frozen=True, slots=True, order=True)
class Throttle:
    tenant: str
    device: str  # block device name or MAJ:MIN, as the topology / config names it
    cgroup: str | None
    read_bps: float | None  # None: no cap in that direction
    write_bps: float | None
    expires_at: float
    victim: str = ""  # whose tail this protects


@dataclass(frozen=True, slots=True, order=True)
class MpsLimit:
    tenant: str
    gpu: str
    percent: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class DesiredState:
    t: float
    throttles: tuple[Throttle, ...] = ()
    mps: tuple[MpsLimit, ...] = ()
    placements: Mapping[str, InstanceRef] = field(default_factory=dict)
    layouts: Mapping[str, tuple[Slot, ...]] = field(default_factory=dict)
    enforce: bool = True  # False in dry-run / shadow: compute and log, apply nothing


@dataclass(frozen=True, slots=True)
class DecisionEvent:
    """One decision with the evidence an operator needs to read why."""

    seq: int
    t: float
    tenant: str
    kind: str  # escalate | release | complete | hold | fail | timeout (docs/decisions.md)
    level_from: str
    level_to: str
    lever: str = ""  # guard | place | resize | ""
    reason: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    applied: bool = True  # False when the policy does not enforce (dry-run / shadow)
