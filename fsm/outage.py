"""What moving a tenant to another MIG instance costs it in unavailability: one function that the
ladder's outage budget and the host simulator both use, so the budget counts what the host charges.

Three kinds of move (what the instance it goes to is, and whether its own survives):
- EXISTING: into an instance that exists (a placement, or a resize onto a free bigger slice);
- BESIDE: into an instance a MIG reconfiguration creates next to the tenant's own, which survives
  the change (make-before-break, as fsm/resize.py prefers): the tenant keeps serving while the GPU
  is reconfigured;
- IN_PLACE: the reconfiguration destroys the tenant's own instance (growing it in place, or giving
  a resize back by re-creating the old layout): nvidia-smi refuses to destroy an instance a
  process uses, so the tenant stops first, then the GPU is reconfigured, then it relaunches.

Two hand-overs (the launcher's `handover`): "restart" stops the old copy and starts the new one,
unavailable for the relaunch; "warm" starts the new copy while the old one serves and switches
over with a gap of `handover_gap_s`. A warm hand-over cannot help IN_PLACE: there is no old copy
left to serve.

Figures (the defaults; scenarios and configs set their own): a MIG reconfiguration takes about
18 s (the reference paper, docs/paper.md; "elsewhere ~30 s"); the relaunch is the tenant's own
start-up until it serves (5 s: the paper scenario's small inference server with its weights in
the page cache, an assumption; a vLLM server takes tens of seconds, see docs/scenarios.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # fsm.spec imports this module
    from fsm.spec import TenantSpec

DEFAULT_RELAUNCH_S = 5.0
DEFAULT_RECONFIG_S = 18.0
DEFAULT_HANDOVER_GAP_S = 1.0  # a warm switch-over: the old copy stops, traffic finds the new one
DEFAULT_READINESS_TIMEOUT_S = 120.0  # how long a launcher waits for a relaunched copy to serve
EXIT_CHECK_S = 2.0  # how often a launcher that can tell checks a starting copy for having exited
HANDOVERS = ("restart", "warm")


class MoveKind(StrEnum):
    EXISTING = "existing"
    BESIDE = "beside"
    IN_PLACE = "in_place"


@dataclass(frozen=True, slots=True)
class MoveTimeline:
    """Seconds after the move starts: when the new layout exists (0: no reconfiguration), when the
    tenant stops serving, and when it serves again on the target."""

    layout_at: float
    down_at: float
    up_at: float

    @property
    def outage_s(self) -> float:
        return self.up_at - self.down_at


def move_timeline(
    kind: MoveKind, relaunch_s: float, reconfig_s: float, warm: bool = False, gap_s: float = DEFAULT_HANDOVER_GAP_S
) -> MoveTimeline:
    if kind is MoveKind.IN_PLACE:
        return MoveTimeline(reconfig_s, 0.0, reconfig_s + relaunch_s)
    ready = relaunch_s if kind is MoveKind.EXISTING else reconfig_s + relaunch_s  # the new copy serves
    layout = 0.0 if kind is MoveKind.EXISTING else reconfig_s
    if warm:
        return MoveTimeline(layout, ready, ready + gap_s)
    return MoveTimeline(layout, ready - relaunch_s, ready)


def move_outage_s(
    kind: MoveKind, relaunch_s: float, reconfig_s: float, warm: bool = False, gap_s: float = DEFAULT_HANDOVER_GAP_S
) -> float:
    """Seconds the tenant serves nothing: EXISTING and BESIDE cost the relaunch (warm: the gap),
    IN_PLACE the reconfiguration plus the relaunch."""
    return move_timeline(kind, relaunch_s, reconfig_s, warm, gap_s).outage_s


def priced_relaunch(t: TenantSpec, own_restart_s: float | None) -> tuple[float, str]:
    """The relaunch a restart tenant's moves are priced at before the actuators measured one, and
    where it comes from: the configured figure, or the shortest of its own restarts where that is
    longer (TenantCtl.own_restart_s: a deploy or a crash relaunched it as a move would, plus the
    seconds until its absence showed, so it bounds the relaunch from above). A relaunch_s left at
    its default of a few seconds priced a vLLM server's first move at a tenth of its outage. Capped
    at the launcher's readiness wait: a start slower than that fails any move whatever it is priced
    at, and a restart that took longer (a crash loop's back-off, a deploy's image pull) says no more
    of the relaunch."""
    if t.handover == "warm" or own_restart_s is None or own_restart_s <= t.relaunch_s:
        return t.relaunch_s, "configured"
    return min(own_restart_s, max(t.readiness_timeout_s, t.relaunch_s)), "own restarts"
