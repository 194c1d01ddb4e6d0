"""Make a synthetic fleet: N recorded hosts of H hours each, by recording the simulated daemon in
dry-run (`tailguard record --dry-run --simulate SCENARIO --speed S`), one trace file per host.

The hosts cycle over bundled scenarios and their hosts so the fleet is not N copies of one host.
`--speed` trades wall time for overruns: a daemon that overruns its tick on a loaded machine
observes a longer span (as a live one would), so the traces hold slightly fewer, longer ticks.

Run: .venv/bin/python -m bench.fleet_hosts --out /tmp/fleet --hosts 50 --hours 1 [--parallel 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# (scenario, host index): single-GPU-tenant and multi-tenant hosts, FCFS and batched engines.
MIX = (("p4d-demo", 0), ("paper-p4d", 0), ("paper-p4d", 1), ("bursty-code", 0), ("diurnal", 0), ("vllm-ttft", 0))


def record(out: Path, scenario: str, host: int, hours: float, speed: float) -> tuple[str, float, int]:
    exe = Path(sys.executable).with_name("tailguard")
    argv = [str(exe), "record", "--out", str(out), "--dry-run", "--simulate", scenario, "--sim-host", str(host),
            "--speed", str(speed), "--duration", str(hours * 3600), "--quiet", "--log-level", "ERROR",
            "--host-name", out.stem]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
    return out.name, time.perf_counter() - t0, out.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for the traces (created)")
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--speed", type=float, default=1000.0, help="simulated seconds per wall second")
    ap.add_argument("--parallel", type=int, default=2, help="recorders at once")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out / f"host{i:03d}.jsonl", *MIX[i % len(MIX)]) for i in range(args.hosts)]
    for p, *_ in jobs:
        for old in out.glob(p.name + "*"):
            old.unlink()  # a recorder appends: start each host afresh
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        done = list(pool.map(lambda j: record(j[0], j[1], j[2], args.hours, args.speed), jobs))
    size = sum(s for _, _, s in done)
    print(f"{len(done)} hosts x {args.hours:g} h recorded into {out} in {time.perf_counter() - t0:.1f} s wall "
          f"({size / 1e6:.1f} MB; load average {os.getloadavg()[0]:.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
