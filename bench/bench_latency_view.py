"""CPU cost of one simulated latency window in each view: vLLM's histogram read through
fsm.histogram (the default) or the raw samples' quantiles (--exact-latency).

Process CPU time (not wall time: the machine is shared), views alternated in rounds so that a
drift in the machine's speed hits both. Windows of paper-p4d's size (about 425 requests per 5 s
tick) and of a low-rate tenant (10).

Run: .venv/bin/python -m bench.bench_latency_view [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from replay.scenario import load_scenario
from replay.simulator import HostSim


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=5000)
    args = ap.parse_args()
    scen = load_scenario("paper-p4d")
    rng = np.random.default_rng(1)
    sims = {v: HostSim(scen.hosts[0], scen.meta, 1, exact_latency=v == "exact") for v in ("histogram", "exact")}
    for n in (425, 10):
        rep = np.sort(rng.lognormal(np.log(0.004), 0.5, n))
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for view, sim in sims.items():
                t0 = time.process_time()
                for _ in range(args.calls):
                    sim._window(rep, 0.015, 0.99)
                us = (time.process_time() - t0) / args.calls * 1e6
                best[view] = min(best.get(view, us), us)
        print(
            f"{n} requests per window: histogram {best['histogram']:.1f} us, exact {best['exact']:.1f} us "
            f"(best of {args.rounds} rounds, CPU time)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
