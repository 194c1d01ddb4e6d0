"""Synthetic recordings: what `tailguard record --dry-run --simulate SCENARIO` writes, one
observation per tick, without the wall clock (the daemon at --speed N skips ticks it overruns on a
loaded machine; this does not, so the same arguments give the same file). Dry-run: nothing is
applied, so the simulated host runs as recorded hosts do before a policy acts on them.
"""

from __future__ import annotations

import math
import os

from replay.scenario import load_scenario
from replay.simulator import SimulatedHost
from replay.trace import TraceWriter


def record_simulated(
    scenario: str,
    out: str | os.PathLike[str],
    duration_s: float,
    host: str | int = 0,
    seed: int | None = None,
    host_name: str | None = None,
    max_bytes: int = 64 << 20,
) -> int:
    """Write a trace of `duration_s` simulated seconds; the number of observations written."""
    sc = load_scenario(scenario)
    sim = SimulatedHost(sc, host=host, seed=seed)
    n = max(1, math.ceil(duration_s / sc.meta.tick_s - 1e-9))
    with TraceWriter(out, host_name or sim.name, sim.spec, max_bytes=max_bytes, fsync_every_s=3600.0) as w:
        for _ in range(n):
            w.write(sim.observe_sync())
    return n
