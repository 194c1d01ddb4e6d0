"""The CPU channel: other tenants' threads on a sensitive tenant's cores stretch its CPU-side work.

A serving process does CPU work between GPU steps: vLLM's engine loop schedules, prepares the
step's inputs, detokenises and streams the outputs, one Python thread (vLLM issue #4806: "it can
only use the computing power of a single CPU"; #6854 measures 5-13 ms of GPU bubble per decode
step spent on that CPU work). The work runs on the tenant's cpuset, wherever its GPU slice is, so
moving it to another MIG instance or guarding its PCIe path does not help: the interference
follows the victim within the host.

Model: Linux's CFS shares a CPU "at precise equal speed ... each at 1/nr_running speed"
(Documentation/scheduler/sched-design-CFS.rst), and wake-up balancing puts a runnable thread on
an idle CPU of its cpuset when there is one. So, per cpuset X with |X| CPUs and R runnable threads
on them (mean field: a tenant's threads spread evenly over its cpuset, so |X & Y| / |Y| of Y's
threads land on X), nobody is slowed while R <= |X|, and each thread runs at |X| / R of a CPU
beyond. A sensitive tenant counts its one thread; the others count `cpu_threads` x their level.

What a sampler sees: the cgroup's `cpu.pressure` (PSI), whose "some" line is the share of time at
least one of the group's tasks was runnable but not running (Documentation/accounting/psi.rst). For
a sensitive tenant's one thread busy W s/s when uncontended and slowed by a factor f, the waiting
time is W x (f - 1) s/s. For an oversubscribed aggressor, its share of the R - |X| waiting
threads. Not modelled: SMT siblings sharing a core, caches and memory bandwidth, IRQ time.
"""

from __future__ import annotations

from collections.abc import Mapping


class CpuModel:
    """CFS sharing between tenants whose cpusets overlap. Cpusets are static: overlaps computed once."""

    def __init__(self, cpusets: Mapping[str, tuple[int, ...]], sensitive: set[str]) -> None:
        sets = {n: frozenset(c) for n, c in cpusets.items() if c}
        self.names = sorted(sets)
        self.sensitive = {n for n in self.names if n in sensitive}
        self.size = {n: float(len(s)) for n, s in sets.items()}
        # on[x] = [(y, share of y's threads that run on x's CPUs)], y != x, overlapping only.
        self.on: dict[str, list[tuple[str, float]]] = {}
        for x in self.names:
            self.on[x] = [
                (y, len(sets[x] & sets[y]) / len(sets[y])) for y in self.names if y != x and sets[x] & sets[y]
            ]

    def runnable(self, x: str, threads: Mapping[str, float]) -> float:
        """Runnable threads of the others on x's CPUs."""
        return sum(threads.get(y, 0.0) * share for y, share in self.on.get(x, ()))

    def slowdown(self, name: str, threads: Mapping[str, float]) -> float:
        """How much longer a sensitive tenant's one thread takes for its CPU work (>= 1)."""
        if name not in self.size:
            return 1.0
        return max(1.0, (1.0 + self.runnable(name, threads)) / self.size[name])

    def pressure(self, name: str, threads: Mapping[str, float], busy: float = 0.0) -> float | None:
        """PSI cpu "some" of the tenant's cgroup as a fraction (None: no cpuset, not modelled).
        `busy`: a sensitive tenant's CPU seconds per second when uncontended."""
        if name not in self.size:
            return None
        if name in self.sensitive:
            return min(1.0, busy * (self.slowdown(name, threads) - 1.0))
        own = threads.get(name, 0.0)
        total = own + self.runnable(name, threads)
        if own <= 0.0 or total <= self.size[name]:
            return 0.0
        return min(1.0, (total - self.size[name]) * own / total)
