"""SignalCollector: every sampler concurrently under its own timeout, one Observation; a slow or
broken source is named in `unavailable` and never delays the tick or turns into zeros."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fakes.fixture_paths import FIXTURES
from fakes.sig_fake_pynvml import FakeMig, FakeNvml
from fakes.sig_http import serve
from test_sig_cgroup import _v2_tree
from test_sig_host import fake_proc

from controller.config import parse_config
from controller.signals.base import Unavailable
from controller.signals.cgroup import CgroupSampler
from controller.signals.collect import SignalCollector, default_samplers
from controller.signals.dcgm import DcgmExporterSampler
from controller.signals.host import HostSampler
from controller.signals.latency import JsonlLatencySampler
from controller.signals.nvml import NvmlSampler
from controller.signals.promtext import PromSample
from fsm.mig import Slot
from fsm.observation import MigSample, Observation
from fsm.topology import empty_topology

CONFIG = """
[host]
cgroup_root = "{root}"
[[gpus]]
name = "gpu0"
index = 0
[[tenants]]
name = "llm"
role = "sensitive"
cgroup = "system.slice/llm.service"
instance = "gpu0/1g.5gb@6"
slo_ms = 200
[tenants.latency]
kind = "jsonl"
path = "{jsonl}"
[[tenants]]
name = "etl"
role = "bulk"
cgroup = "system.slice/etl.service"
[signals]
dcgm = "exporter"
dcgm_exporter_url = "http://127.0.0.1:9/metrics"
proc_root = "{proc}"
"""


class Slow:
    name = "slow"
    timeout_s = 0.2

    async def sample(self, now: float) -> float:
        await asyncio.sleep(5)
        return 1.0


class Broken:
    name = "broken"
    timeout_s = 1.0

    async def sample(self, now: float) -> float:
        raise RuntimeError("sampler bug")


def test_one_tick_assembles_everything(tmp_path: Path) -> None:
    jsonl = tmp_path / "llm.jsonl"
    jsonl.write_text("")
    proc = tmp_path / "proc"
    fake_proc(proc)
    cg = tmp_path / "cg"
    cg.mkdir()
    _v2_tree(cg)
    cfg = parse_config(CONFIG.format(root=cg, jsonl=jsonl, proc=proc))
    fake = FakeNvml.from_q((FIXTURES / "nvidia-smi-q_a100-sxm4-80gb-x4_r555.txt").read_text())
    fake.gpus[0].name = "NVIDIA A100-SXM4-40GB"  # the dcgm scrape is an A100 40GB with a 1g.5gb at GI 13
    fake.gpus[0].mig_enabled = True
    fake.gpus[0].migs = [FakeMig("MIG-x", gi_id=13, profile_id=19, start=6), FakeMig("MIG-y", 1, 9, 0)]
    fake.gpus[0].tx_kbps = 1000

    async def run() -> tuple[Observation, Observation, float, SignalCollector]:
        with serve() as pages:
            url = pages.set(
                "/metrics", (FIXTURES / "dcgm-exporter_metrics_a100-sxm4-40gb_mig-1g.5gb_nvidia-docs.prom").read_text()
            )
            samplers = [
                NvmlSampler({"gpu0": 0}, nvml=fake),
                DcgmExporterSampler(url, timeout_s=2.0),
                HostSampler(str(proc)),
                CgroupSampler({t.name: t.cgroup for t in cfg.tenants if t.cgroup}, str(cg)),
                JsonlLatencySampler("latency:llm", str(jsonl)),
                Slow(),
                Broken(),
            ]
            c = SignalCollector(cfg, empty_topology(), samplers)
            o1 = await c.collect(100.0)
            fake.advance(2.0)
            jsonl.write_text('{"latency_s": 0.12}\n{"latency_s": 0.25}\n')
            start = time.perf_counter()
            o2 = await c.collect(102.0)
            took = time.perf_counter() - start
            return o1, o2, took, c

    o1, o2, took, c = asyncio.run(run())
    assert took < 1.5  # the slow sampler's 5 s never delay the tick
    assert o2.t == 102.0 and o2.actuation.in_flight == ()
    assert o2.unavailable["slow"] == "timed out after 0.2 s"
    assert o2.unavailable["broken"] == "RuntimeError: sampler bug"
    g = o2.gpus["gpu0"]
    assert g.mig_enabled is True and g.layout == (Slot(0, "3g.20gb"), Slot(6, "1g.5gb"))
    assert g.instances == {"1g.5gb@6": MigSample(None, 0.800339)}
    assert g.pcie_tx_bps == 1000 * 1024  # NVML's counters, not DCGM's gauge
    assert g.dram_active == 0.690789 and g.sm_active is None
    assert "commented out" in o2.unavailable["dcgm:sm_active"]
    assert list(o2.gpus) == ["gpu0"]  # the config names the GPUs to watch
    llm, etl = o2.tenants["llm"], o2.tenants["etl"]
    assert llm.latency is not None and llm.latency.count == 2 and llm.latency.samples == (0.12, 0.25)
    assert llm.throughput == 1.0
    assert llm.io is None and "cgroup:llm:io" in o2.unavailable  # no such cgroup in the fake tree
    assert etl.io_pressure == 0.125 and etl.latency is None
    assert o2.host is not None and o2.host.block_bps == {"nvme0n1": 0.0}
    stats = c.stats
    assert stats["slow"].errors_total == 2 and stats["slow"].timeouts_total == 2
    assert stats["broken"].last_error == "RuntimeError: sampler bug"
    assert stats["broken"].last_success_age_s() is None
    age = stats["nvml"].last_success_age_s()
    assert age is not None and 0 <= age < 5
    assert c.runners["nvml"].last_good is not None
    assert o1.tenants["llm"].latency is not None and o1.tenants["llm"].latency.count == 0
    # a reconfiguration: the daemon tells the collector, the next tick shows the new layout
    fake.gpus[0].migs = [FakeMig("MIG-z", gi_id=2, profile_id=0, start=0)]
    c.invalidate_mig("gpu0")
    fake.advance(1.0)
    o3 = asyncio.run(c.collect(103.0))
    assert o3.gpus["gpu0"].layout == (Slot(0, "7g.40gb"),) and o3.gpus["gpu0"].instances == {}
    assert "127.0.0.1" in o3.unavailable["dcgm"]  # the exporter is gone now: named, not zeros
    assert o3.gpus["gpu0"].dram_active is None


def test_no_nvml_means_no_placement_keys(tmp_path: Path) -> None:
    """Without NVML the GI id -> start mapping is unknown: instances are not guessed."""
    cfg = parse_config("")

    class Dcgm:
        name = "dcgm"
        timeout_s = 1.0

        async def sample(self, now: float) -> object:
            return DcgmExporterSampler("http://x").parse(
                (FIXTURES / "dcgm-exporter_metrics_a100-sxm4-40gb_mig-1g.5gb_nvidia-docs.prom").read_text(), now
            )

    class NoNvml:
        name = "nvml"
        timeout_s = 1.0

        async def sample(self, now: float) -> Unavailable:
            return Unavailable("NVML init failed: NVML Shared Library Not Found")

    o = asyncio.run(SignalCollector(cfg, empty_topology(), [Dcgm(), NoNvml()]).collect(1.0))
    assert o.gpus["gpu0"].instances == {} and o.gpus["gpu0"].layout is None
    assert "placement unknown" in o.unavailable["dcgm:gpu0:gi13"]
    assert o.unavailable["nvml"].startswith("NVML init failed")
    assert o.gpus["gpu0"].pcie_tx_bps == 33011804  # DCGM's gauge when NVML has nothing


def test_default_samplers_follow_the_config(tmp_path: Path) -> None:
    cfg = parse_config(CONFIG.format(root=tmp_path, jsonl=tmp_path / "x", proc=tmp_path))
    names = [s.name for s in default_samplers(cfg)]
    assert names == ["nvml", "dcgm", "host", "cgroup", "latency:llm"]
    assert PromSample  # re-exported types stay importable for the exporter
