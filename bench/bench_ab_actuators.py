"""Interleaved A/B of the reconciler: this tree against another checkout (the code before a change),
in one run. Two long-lived child processes, one per tree (same interpreter and venv), each importing
only its own tree (bench/ab_child.py); the parent asks them for one round of a figure in turn, the
order swapped every round, so that the machine's drift (a shared, loaded VM) hits both alike at
round granularity. The first rounds of each figure are warm-ups and dropped.

Figures (wall time of one round):
  v2 N set|renew|no-op  reconcile() of N tenants' caps on a fake cgroup v2 tree: every cap changes
                        (journal intent + write + read back + journal done), the expiry moves on
                        (one renew record), nothing changes
  v1 10 ...             the same on the real cgroup v1 blkio hierarchy (root only)
  mig resize            reconcile() of a layout flip on an emulated A100 + wait until it is done
                        (that tree's emulated nvidia-smi: mostly tool start-ups)
  mig no-op             reconcile() of a converged GPU inside layout_recheck_s (no tool call)
  recover 10k           recover() of a 10,000-line journal (10 tenants' renewals)
  recover hung 4 GPUs   recover() with 4 GPUs each with an open MIG change and an nvidia-smi that
                        hangs (tool timeout --hang-timeout)

Run: .venv/bin/python -m bench.bench_ab_actuators --base /tmp/tailguard-base [--rounds 60]
(make the base with `git archive <commit> | tar -x -C /tmp/tailguard-base`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("ab_child.py")  # run as a script: imports the tree it is given
BLKIO = Path("/sys/fs/cgroup/blkio")


class Side:
    def __init__(self, root: Path, hang_timeout: float) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.p = subprocess.Popen([sys.executable, str(CHILD), str(root), str(hang_timeout)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env, cwd="/")  # fmt: skip

    def round(self, fig: str) -> float:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(fig + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"child died on {fig!r} (its stderr is above)")
        return float(line)

    def close(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write("quit\n")
        self.p.stdin.flush()
        self.p.wait(120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="checkout of the code to compare against")
    ap.add_argument("--rounds", type=int, default=60, help="rounds per figure and side (scaled down for slow ones)")
    ap.add_argument("--skip-v1", action="store_true")
    ap.add_argument("--hang-timeout", type=float, default=5.0, help="nvidia-smi timeout in the hung recovery")
    args = ap.parse_args()
    figs: list[tuple[str, int, int]] = []  # (figure, rounds, warm-up rounds)
    v1 = not args.skip_v1 and os.geteuid() == 0 and (BLKIO / "blkio.throttle.write_bps_device").exists()
    for hier, sizes in (("v2", (10, 50)), ("v1", (10,))):
        if hier == "v1" and not v1:
            continue
        for n in sizes:
            for path in ("set", "renew", "no-op"):
                figs.append((f"{hier} {n} {path}", args.rounds if n <= 10 else max(10, args.rounds // 3), 3))
    figs += [("mig resize", max(6, args.rounds // 6), 2), ("mig no-op", args.rounds * 3, 3),
             ("recover 10k", max(5, args.rounds // 8), 1), ("recover hung 4 GPUs", 2, 0)]  # fmt: skip
    sides = {"base": Side(Path(args.base).resolve(), args.hang_timeout), "new": Side(HERE, args.hang_timeout)}
    t0 = time.perf_counter()
    print(f"{time.strftime('%Y-%m-%d %H:%M')} {platform.machine()} CPython {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at start")  # fmt: skip
    rows = []
    try:
        for fig, rounds, warm in figs:
            got: dict[str, list[float]] = {"base": [], "new": []}
            for k in range(warm + rounds):
                order = ("base", "new") if k % 2 == 0 else ("new", "base")
                for name in order:
                    dt = sides[name].round(fig)
                    if k >= warm:
                        got[name].append(dt)
            b, n = statistics.median(got["base"]), statistics.median(got["new"])
            paired = statistics.median(y / x for x, y in zip(got["base"], got["new"], strict=True))
            rows.append(f"| {fig} | {rounds} | {b * 1e3:.3f} | {n * 1e3:.3f} | {n / b:.2f} | {paired:.2f} |")
            print(rows[-1], flush=True)
    finally:
        for s in sides.values():
            s.close()
    print(f"\nload {os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - t0:.0f} s\n")
    print("| figure | rounds per side | base median ms | new median ms | new / base (medians) | "
          "median of per-round ratios |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
