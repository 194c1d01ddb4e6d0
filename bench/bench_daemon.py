"""Daemon overhead and an accelerated soak with injected faults.

    python bench/bench_daemon.py overhead --gpus 8 --window 600   # CPU % of a core and RSS at 1 tick/s
    python bench/bench_daemon.py soak --hours 1 --speed 60         # faults: hung sampler, broker restart,
                                                                     # nvidia-smi failures

overhead: a child process runs the real Daemon (decide, Prometheus collector + HTTP server, MQTT
bridge to a local mosquitto when installed, status/state files) at 1 tick/s on a simulated host of
GPUS x 7 MIG instances (1g.5gb), 7 tenants per GPU (one latency-sensitive, the rest bulk/compute).
Observations are produced by the simulator ahead of the window and replayed, so the figure is the
daemon's own cost, not the simulator's; real samplers (NVML, /proc, cgroupfs) add their own
(bench figures of the signals issue). The parent scrapes /metrics every 15 s like Prometheus and
measures the child's CPU time and RSS with psutil over the window.

soak: the daemon on the simulated paper-p4d host, clock sped up SPEED times, for HOURS simulated
hours, with a sampler that hangs past its timeout (every 10th minute, for a minute), a broker
restart (at 30 min), and reconciler failures (nvidia-smi exiting non-zero for 5 min from 40 min).
Reports the largest gap between tick starts (in periods), overruns, and the largest gap between
WATCHDOG=1 pings against the watchdog interval (3 periods).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


# -- a GPUS x 7 host scenario ------------------------------------------------------------------
def big_scenario(n_gpus: int) -> str:
    nodes = [
        '[[hosts.nodes]]\nid = "numa0"\nkind = "numa"\nindex = 0\ncpus = "0-47"',
        '[[hosts.nodes]]\nid = "numa1"\nkind = "numa"\nindex = 1\ncpus = "48-95"',
    ]
    tenants = []
    for s in range(n_gpus // 2):
        numa = "numa0" if s < n_gpus // 4 or n_gpus <= 2 else "numa1"
        nodes.append(f'[[hosts.nodes]]\nid = "rc{s}"\nkind = "root_complex"\nparent = "{numa}"')
        nodes.append(f'[[hosts.nodes]]\nid = "sw{s}"\nkind = "switch"\nparent = "rc{s}"\nlink_gbps = 24.0')
        nodes.append(
            f'[[hosts.nodes]]\nid = "nvme{s}"\nkind = "nvme"\nparent = "sw{s}"\nlink_gbps = 7.0\n'
            f'aliases = ["nvme{s}n1"]'
        )
        for k in range(2):
            g = 2 * s + k
            layout = ", ".join(f'"1g.5gb@{i}"' for i in range(7))
            nodes.append(
                f'[[hosts.nodes]]\nid = "gpu{g}"\nkind = "gpu"\nparent = "sw{s}"\n'
                f'model = "A100-SXM4-40GB"\nlink_gbps = 24.0\nlayout = [{layout}]'
            )
            for i in range(7):
                name = f"g{g}i{i}"
                if i == 0:
                    tenants.append(
                        f'[[hosts.tenants]]\nname = "{name}"\nrole = "sensitive"\ninstance = "gpu{g}/1g.5gb@{i}"\n'
                        f'cgroup = "{name}.slice"\nslo_ms = 15.0\n[hosts.tenants.requests]\nrate = 60.0\n'
                        f"compute_ms = 1.0\nslice_exponent = 0.8\nbytes = 40e6\nnoise_cv = 0.25"
                    )
                elif i % 2:
                    tenants.append(
                        f'[[hosts.tenants]]\nname = "{name}"\nrole = "bulk"\ninstance = "gpu{g}/1g.5gb@{i}"\n'
                        f'cgroup = "{name}.slice"\ndevices = ["nvme{s}n1"]\ndemand_gbps = 0.4\n'
                        f'flows = [{{ path = ["nvme{s}", "cpu"] }}, {{ path = ["cpu", "gpu{g}"] }}]\n'
                        f"schedule = {{ period_s = 600, on = [[120, 400]] }}"
                    )
                else:
                    tenants.append(
                        f'[[hosts.tenants]]\nname = "{name}"\nrole = "compute"\ninstance = "gpu{g}/1g.5gb@{i}"\n'
                        f'cgroup = "{name}.slice"\nsm_active = 0.9'
                    )
    head = (
        f'[scenario]\nname = "bench-{n_gpus}x7"\nduration_s = 3600\ntick_s = 1.0\nseed = 1\n\n'
        '[policy]\nmin_window_count = 20\n\n[[hosts]]\nname = "bench"\n'
    )
    return head + "\n\n".join(nodes + tenants) + "\n"


class ReplayHost:
    """Plays back precomputed observations (cheap), re-stamped with an increasing clock."""

    def __init__(self, spec: Any, observations: list[Any]) -> None:
        self.spec = spec
        self.obs = observations
        self.i = 0
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def observe(self) -> Any:
        o = self.obs[self.i % len(self.obs)]
        self.i += 1
        self.t += 1.0
        return replace(o, t=self.t)

    async def apply(self, desired: Any) -> None:
        return None

    async def close(self) -> None:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(tmp: Path) -> Any:
    if not (shutil.which("mosquitto") or os.access("/usr/sbin/mosquitto", os.X_OK)):
        return None
    from fakes.daemon_fakes import Mosquitto

    return Mosquitto(tmp).start()


# -- overhead -----------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> int:
    from controller.daemon import Daemon, DaemonOptions
    from controller.exporters.mqtt import MqttBridge, MqttOptions
    from controller.exporters.prometheus import DaemonCollector, MetricsServer, make_registry
    from replay.scenario import load_scenario
    from replay.simulator import SimulatedHost

    sim = SimulatedHost(load_scenario(args.scenario))
    observations = [sim.step() for _ in range(120)]  # two minutes of varied load, replayed
    host = ReplayHost(sim.spec, observations)

    async def main() -> int:
        d = Daemon(host, DaemonOptions(host_name="bench", period_s=1.0, state_dir=args.state_dir))
        bridge = None
        if args.mqtt_url:
            bridge = MqttBridge(MqttOptions(url=args.mqtt_url, host_name="bench"), on_latency=d.push_latency)
            d.exporters.append(bridge)
            bridge.start()
        server = MetricsServer(
            make_registry(DaemonCollector(lambda: d.snapshot, bridge.metrics if bridge else None)),
            "127.0.0.1",
            args.metrics_port,
        )
        loop = asyncio.get_running_loop()
        loop.call_later(3.0, lambda: print("READY", flush=True))
        try:
            return await d.run()
        finally:
            server.close()
            if bridge is not None:
                await bridge.stop()

    return asyncio.run(main())


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    tmp = Path(tempfile.mkdtemp(prefix="tg-bench-"))
    scen = tmp / "scenario.toml"
    scen.write_text(big_scenario(args.gpus))
    broker = start_broker(tmp)
    port = free_port()
    cmd = [
        sys.executable,
        __file__,
        "child",
        "--scenario",
        str(scen),
        "--metrics-port",
        str(port),
        "--state-dir",
        str(tmp / "state"),
    ]
    if broker is not None:
        cmd += ["--mqtt-url", broker.url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "READY" not in line:
            raise SystemExit(f"child did not start: {line!r}")
        p = psutil.Process(proc.pid)
        c0, t0 = p.cpu_times(), time.monotonic()
        rss_max, scrapes, next_scrape = 0, 0, 0.0
        while time.monotonic() - t0 < args.window:
            rss_max = max(rss_max, p.memory_info().rss)
            if time.monotonic() - t0 >= next_scrape:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
                scrapes += 1
                next_scrape += 15.0
            time.sleep(1.0)
        c1, t1 = p.cpu_times(), time.monotonic()
        cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0)
        ticks = next(float(x.split()[1]) for x in body.splitlines() if x.startswith("tailguard_ticks_total"))
        n_series = sum(1 for x in body.splitlines() if x and not x.startswith("#"))
        return {
            "bench": "overhead",
            "gpus": args.gpus,
            "instances_per_gpu": 7,
            "tenants": 7 * args.gpus,
            "window_s": round(t1 - t0, 1),
            "tick_s": 1.0,
            "cpu_percent_of_core": round(100 * cpu, 3),
            "rss_max_mb": round(rss_max / 2**20, 1),
            "scrapes": scrapes,
            "ticks_total": ticks,
            "series_per_scrape": n_series,
            "mqtt": broker is not None,
        }
    finally:
        proc.terminate()
        proc.wait(10)
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# -- soak -----------------------------------------------------------------------------------------
def soak(args: argparse.Namespace) -> dict[str, Any]:
    from controller.daemon import Daemon, DaemonOptions
    from controller.exporters.mqtt import MqttBridge, MqttOptions
    from controller.sdnotify import Notifier
    from controller.signals.base import SamplerRunner, Unavailable
    from replay.scenario import load_scenario
    from replay.simulator import SimulatedHost

    tmp = Path(tempfile.mkdtemp(prefix="tg-soak-"))
    broker = start_broker(tmp)
    scenario = load_scenario("paper-p4d")
    tick = scenario.meta.tick_s
    period = tick / args.speed
    duration = args.hours * 3600

    class HangingSampler:
        name = "fake-dcgm"
        timeout_s = period * 0.4

        def __init__(self, sim: SimulatedHost) -> None:
            self.sim = sim

        async def sample(self, now: float) -> object:
            if int(self.sim.now() // 60) % 10 == 3:  # minute 3 of every 10: hangs
                await asyncio.Event().wait()
            return object()

    class FaultyHost:
        def __init__(self) -> None:
            self.sim = SimulatedHost(scenario, speed=args.speed)
            self.spec = self.sim.spec
            self.runner: SamplerRunner[object] = SamplerRunner(HangingSampler(self.sim))
            self.starts: list[float] = []
            self.apply_failures = 0

        def now(self) -> float:
            return self.sim.now()

        async def observe(self) -> Any:
            self.starts.append(time.monotonic())
            obs, extra = await asyncio.gather(self.sim.observe(), self.runner.run(self.sim.now()))
            if isinstance(extra, Unavailable):
                obs = replace(obs, unavailable={**obs.unavailable, "fake-dcgm": extra.reason})
            return obs

        async def apply(self, desired: Any) -> None:
            if 2400 <= self.sim.now() < 2700:
                self.apply_failures += 1
                raise RuntimeError("nvidia-smi: exit 9 (injected)")
            await self.sim.apply(desired)

        def sampler_stats(self) -> dict[str, Any]:
            return {"fake-dcgm": self.runner.stats}

        async def close(self) -> None:
            return None

    sock_path = str(tmp / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(sock_path)
    srv.settimeout(0.2)
    pings: list[float] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                m = srv.recv(4096)
            except TimeoutError:
                continue
            if m == b"WATCHDOG=1":
                pings.append(time.monotonic())

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    watchdog_s = 3 * period
    os.environ["NOTIFY_SOCKET"] = sock_path
    os.environ["WATCHDOG_USEC"] = str(int(watchdog_s * 1e6))
    os.environ["WATCHDOG_PID"] = str(os.getpid())
    host = FaultyHost()
    restarted = {"done": False}

    async def main() -> Daemon:
        d = Daemon(
            host,
            DaemonOptions(host_name="soak", period_s=period, until_t=duration, observe_timeout_s=period * 0.8),
            notifier=Notifier(),
        )
        bridge = None
        if broker is not None:
            bridge = MqttBridge(
                MqttOptions(url=broker.url, host_name="soak", queue_max=100, backoff_min_s=0.2, backoff_max_s=1.0),
                on_latency=d.push_latency,
            )
            d.exporters.append(bridge)
            bridge.start()

        async def broker_restart() -> None:
            while host.now() < 1800:
                await asyncio.sleep(period)
            if broker is not None:
                await asyncio.to_thread(broker.stop)
                await asyncio.sleep(2.0)
                await asyncio.to_thread(broker.start)
            restarted["done"] = True

        t = asyncio.create_task(broker_restart())
        await d.run()
        t.cancel()
        if bridge is not None:
            await bridge.stop()
            d.mqtt_stats = bridge.stats  # type: ignore[attr-defined]
        return d

    t0 = time.monotonic()
    d = asyncio.run(main())
    wall = time.monotonic() - t0
    done.set()
    th.join(2)
    srv.close()
    if broker is not None:
        broker.stop()
    gaps = [b - a for a, b in itertools.pairwise(host.starts)]
    wd_gaps = [b - a for a, b in itertools.pairwise(pings)]
    snap = d.snapshot
    mq = getattr(d, "mqtt_stats", None)
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "bench": "soak",
        "simulated_s": snap.t,
        "speed": args.speed,
        "wall_s": round(wall, 1),
        "period_wall_s": round(period, 4),
        "ticks": snap.ticks_total,
        "overruns": snap.overruns_total,
        "tick_errors": snap.tick_errors_total,
        "max_tick_gap_periods": round(max(gaps) / period, 2),
        "watchdog_s": round(watchdog_s, 3),
        "max_watchdog_gap_s": round(max(wd_gaps), 3),
        "watchdog_missed": sum(1 for g in wd_gaps if g > watchdog_s),
        "hung_sampler_timeouts": host.runner.stats.timeouts_total,
        "apply_failures_injected": host.apply_failures,
        "broker_restarted": restarted["done"] and broker is not None,
        "mqtt_connects": mq.connects_total if mq else None,
        "mqtt_dropped": mq.dropped_total if mq else None,
        "events": snap.events_total,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--gpus", type=int, default=8)
    o.add_argument("--window", type=float, default=600.0)
    c = sub.add_parser("child")
    c.add_argument("--scenario", required=True)
    c.add_argument("--metrics-port", type=int, required=True)
    c.add_argument("--mqtt-url")
    c.add_argument("--state-dir")
    s = sub.add_parser("soak")
    s.add_argument("--hours", type=float, default=1.0)
    s.add_argument("--speed", type=float, default=60.0)
    args = ap.parse_args()
    if args.cmd == "child":
        return child(args)
    result = overhead(args) if args.cmd == "overhead" else soak(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
