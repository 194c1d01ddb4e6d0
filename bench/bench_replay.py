"""24 simulated hours of paper-p4d (2 hosts), all five policies: wall time and ratio to real time.

Goal: under 60 s in total on a 2-core machine. The policies x hosts run in parallel processes
(one per core); every tick runs the real decide() and the simulator's numpy fast path.

Run: .venv/bin/python -m bench.bench_replay [--hours 24] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date

from replay.report import summarise, table
from replay.runner import POLICIES, run_all
from replay.scenario import load_scenario


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--scenario", default="paper-p4d")
    ap.add_argument("--exact-latency", action="store_true", help="raw-sample windows instead of vLLM's histogram")
    args = ap.parse_args()
    scenario = load_scenario(args.scenario)
    duration = args.hours * 3600.0
    t0 = time.perf_counter()
    exact = args.exact_latency
    runs = run_all(scenario, list(POLICIES), duration, scenario.meta.seed, jobs=args.jobs, exact_latency=exact)
    wall = time.perf_counter() - t0
    print(table(scenario, summarise(scenario, runs)))
    n_hosts = len(scenario.hosts)
    sim_total = duration * len(POLICIES) * n_hosts
    print(
        f"\n{date.today()} {platform.machine()} CPython {platform.python_version()}, {os.cpu_count()} CPUs: "
        f"{args.hours:g} simulated h x {len(POLICIES)} policies x {n_hosts} hosts in {wall:.1f} s wall "
        f"(goal < 60 s; latency view: {'exact' if exact else 'histogram'}); "
        f"{duration / wall:.0f}x real time per policy set, "
        f"{sim_total / wall:.0f} simulated host-seconds per wall second"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
