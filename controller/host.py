"""The one interface the daemon drives: a host it can observe and act on.

Two implementations: LinuxHost (real samplers + real actuators, controller/linux_host.py) and
SimulatedHost (replay/). The daemon loop and `tailguard run --simulate` only see this protocol.
"""

from __future__ import annotations

from typing import Protocol

from fsm.desired import DesiredState
from fsm.observation import Observation
from fsm.spec import HostSpec


class Host(Protocol):
    spec: HostSpec  # topology, tenants, policy, GPU models

    def now(self) -> float:
        """The host's clock in seconds (wall clock on Linux, simulated time in the simulator)."""

    async def observe(self) -> Observation:
        """Sample everything once; never raises for a broken source (it is marked unavailable)."""

    async def apply(self, desired: DesiredState) -> None:
        """Reconcile toward `desired`; long operations run in the background and are reported
        in later observations (ActuationStatus). Must not block the tick."""

    async def close(self) -> None:
        """Stop background work safely (journal flushed)."""
