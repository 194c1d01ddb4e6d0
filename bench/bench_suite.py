"""The scenario suite (`tailguard replay --suite`): every suite scenario x (five policies + the
oracle's search), wall time, the CPU time it took, and the machine's load while it ran.

Goal: under 180 s in total on a 2-core machine. The load average before and after is printed
because this machine is shared: a wall time means little without it.

Run: .venv/bin/python -m bench.bench_suite [--duration S] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from datetime import date

from replay.scenario import suite
from replay.suite import run_suite


def _cpu_s() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=None, help="override every scenario's suite_duration_s")
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args()
    scenarios = suite()
    load0 = os.getloadavg()
    cpu0, t0 = _cpu_s(), time.perf_counter()
    results = run_suite(scenarios, args.duration, None, args.jobs)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    load1 = os.getloadavg()
    runs = sum(len(hr) for sr in results for p, hr in sr.runs.items() if p != "oracle")
    oracle_runs = sum(r.evaluated for sr in results for r in sr.oracle)
    sim_h = sum(sr.duration_s * len(sr.scenario.hosts) for sr in results) / 3600.0
    print(
        f"{date.today()} {platform.machine()} CPython {platform.python_version()}, {os.cpu_count()} CPUs: "
        f"{len(results)} scenarios ({sim_h:g} simulated host-hours each policy), {runs} policy runs + "
        f"{oracle_runs} oracle candidate runs in {wall:.1f} s wall, {cpu:.1f} s CPU (goal < 180 s wall); "
        f"load average before {'/'.join(f'{x:.1f}' for x in load0)}, after {'/'.join(f'{x:.1f}' for x in load1)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
