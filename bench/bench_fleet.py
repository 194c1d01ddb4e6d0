"""Fleet shadow replay, local process pool vs Ray with the same number of workers: wall time, Ray's
overhead over local (with and without starting Ray), memory per worker, and what a host-day costs.

The traces come from bench/fleet_hosts.py (hosts recorded from the simulated daemon in dry-run).
Both executors must give the same per-host results (checked here too). The machine is shared: the
load average before and after each run is printed with the figures.

Run: .venv/bin/python -m bench.bench_fleet --traces /tmp/fleet [--workers 2] [--simulate-hosts 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from typing import Any

import psutil

from replay.executor import make_executor, results_in_order
from replay.fleet import expand, host_object, shadow_host


class MemSampler:
    """Peak RSS of every descendant process of this one, sampled every 0.2 s, by its command line."""

    def __init__(self) -> None:
        self.peak: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for p in me.children(recursive=True):
                try:
                    rss = p.memory_info().rss
                    cmd = " ".join(p.cmdline())[:60]
                except psutil.Error:
                    continue
                old = self.peak.get(p.pid)
                if old is None or rss > old[1]:
                    self.peak[p.pid] = (cmd if old is None else old[0], rss)
            self._stop.wait(0.2)

    def __enter__(self) -> MemSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def run(kind: str, hosts: list[Any], workers: int) -> dict[str, Any]:
    load0 = os.getloadavg()[0]
    me0 = psutil.Process().memory_info().rss
    with MemSampler() as mem:
        t0 = time.perf_counter()
        ex = make_executor(kind, workers)
        t_ready = time.perf_counter()
        results = results_in_order([ex.submit(shadow_host, (h, None)) for h in hosts])
        t_done = time.perf_counter()
        ex.shutdown()
        t_end = time.perf_counter()
    if kind == "ray":
        task_workers = [rss for cmd, rss in mem.peak.values() if cmd.startswith("ray::") and "Agent" not in cmd]
        system = sum(rss for cmd, rss in mem.peak.values() if not cmd.startswith("ray::") or "Agent" in cmd)
    else:
        task_workers = [rss for _, rss in mem.peak.values()]
        system = 0
    return {
        "kind": kind,
        "startup_s": t_ready - t0,
        "tasks_s": t_done - t_ready,
        "shutdown_s": t_end - t_done,
        "wall_s": t_end - t0,
        "worker_rss_mb": sorted(round(r / 2**20) for r in task_workers),
        "system_rss_mb": round(system / 2**20),
        "driver_rss_mb": round(me0 / 2**20),
        "load": (load0, os.getloadavg()[0]),
        "results": [host_object(r) for r in results],
        "failed": sum(r.error is not None for r in results),
        "hours": sum(r.span_s for r in results) / 3600,
        "ticks": sum(r.ticks for r in results),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--simulate-hosts", type=int, default=0, help="also time the canary's --from-trace on N hosts")
    ap.add_argument("--order", default="local,ray", help="which executor runs first (the machine's load drifts)")
    args = ap.parse_args()
    hosts = expand(args.traces)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {len(hosts)} hosts, {args.workers} workers")
    out = {k: run(k, hosts, args.workers) for k in args.order.split(",")}
    same = out["local"]["results"] == out["ray"]["results"]
    for k, r in out.items():
        print(
            f"{k:5s}: wall {r['wall_s']:.1f} s (start {r['startup_s']:.1f}, tasks {r['tasks_s']:.1f}, stop "
            f"{r['shutdown_s']:.1f}); {r['hours']:.1f} host-hours, {r['ticks']} ticks, {r['failed']} failed; "
            f"worker RSS MB {r['worker_rss_mb']}; Ray's own processes {r['system_rss_mb']} MB; "
            f"load {r['load'][0]:.2f} -> {r['load'][1]:.2f}"
        )
    loc, ray = out["local"], out["ray"]
    print(f"identical per-host results: {same}")
    print(
        f"Ray overhead over local: {100 * (ray['wall_s'] / loc['wall_s'] - 1):+.1f}% of wall with its start and stop, "
        f"{100 * (ray['tasks_s'] / loc['tasks_s'] - 1):+.1f}% for the tasks alone"
    )
    for k, r in out.items():
        core_s = r["tasks_s"] * args.workers / max(r["hours"], 1e-9) * 24
        print(f"{k}: decisions, one policy: {core_s:.1f} core-seconds per host-day (tasks' wall x workers)")
    if args.simulate_hosts:
        from replay.canary import canary_host

        few = hosts[: args.simulate_hosts]
        ex = make_executor("local", args.workers)
        t0 = time.perf_counter()
        res = results_in_order([ex.submit(canary_host, (h, {}, {}, True)) for h in few])
        wall = time.perf_counter() - t0
        ex.shutdown()
        hours = sum(r.current.span_s for r in res if r.simulated is not None) / 3600  # rebuilt hosts only
        bad = [r.simulate_error for r in res if r.simulate_error]
        print(
            f"canary --from-trace (2 policies' decisions + 2 simulated runs per host) on {len(few)} hosts: "
            f"{wall:.1f} s wall, {wall * args.workers / max(hours, 1e-9) * 24:.1f} core-seconds per host-day; "
            f"rebuild failures: {bad or 'none'}"
        )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
