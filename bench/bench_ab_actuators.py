"""Interleaved A/B of the reconciler: this tree against another checkout (the code before a change),
in one run, alternating which goes first, each round in fresh child processes (same interpreter,
same venv), so that the machine's drift hits both alike.

Figures per child (median over its rounds, wall time):
  throttle reconcile on a fake cgroup v2 tree, 10 and 50 tenants: `set` (every cap changes), `renew`
  (expiry moved on), `no-op`; on the real cgroup v1 blkio hierarchy, 10 tenants (root only);
  MIG: a resize on an emulated A100 through that tree's emulated nvidia-smi (reconcile + wait until
  done), and a no-op reconcile of a converged GPU; recover() of a 10,000-line journal;
  recovery of 4 GPUs, each with an open MIG change, under an nvidia-smi that hangs (timeout --hang-timeout).

Run: .venv/bin/python -m bench.bench_ab_actuators --base /tmp/tailguard-base [--pairs 5] [--skip-v1]
(`git worktree add --detach /tmp/tailguard-base <commit>` makes the base checkout.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

CHILD = Path(__file__).with_name("ab_child.py")  # run as a script: imports the tree it is given


def run_child(root: Path, skip_v1: bool, hang_timeout: float) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    p = subprocess.run([sys.executable, str(CHILD), str(root), "1" if skip_v1 else "0", str(hang_timeout)],
                       capture_output=True, text=True, timeout=1800, env=env, cwd="/")  # fmt: skip
    if p.returncode != 0:
        raise SystemExit(f"child for {root} failed:\n{p.stderr[-3000:]}")
    res: dict[str, float] = json.loads(p.stdout.strip().splitlines()[-1])
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="checkout of the code to compare against")
    ap.add_argument("--pairs", type=int, default=5, help="A/B pairs (each pair: one child per tree)")
    ap.add_argument("--skip-v1", action="store_true")
    ap.add_argument("--hang-timeout", type=float, default=5.0, help="nvidia-smi timeout in the hung recovery")
    args = ap.parse_args()
    base = Path(args.base).resolve()
    trees = {"base": base, "new": HERE}
    res: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
    t0 = time.perf_counter()
    print(f"{time.strftime('%Y-%m-%d %H:%M')} {platform.machine()} CPython {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at start")  # fmt: skip
    for k in range(args.pairs):
        order = ("base", "new") if k % 2 == 0 else ("new", "base")
        for name in order:
            res[name].append(run_child(trees[name], args.skip_v1, args.hang_timeout))
        print(f"pair {k + 1}/{args.pairs} done, load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"\nload {os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - t0:.0f} s\n")
    print("| figure | base median ms | new median ms | new / base | per-pair ratios |")
    print("|---|---|---|---|---|")
    for key in res["base"][0]:
        b = [x[key] for x in res["base"]]
        n = [x[key] for x in res["new"]]
        ratios = [y / x for x, y in zip(b, n, strict=True)]
        print(f"| {key} | {statistics.median(b) * 1e3:.3f} | {statistics.median(n) * 1e3:.3f} | "
              f"{statistics.median(n) / statistics.median(b):.2f} | "
              f"{', '.join(f'{r:.2f}' for r in ratios)} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
