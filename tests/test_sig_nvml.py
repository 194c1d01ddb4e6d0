"""NVML sampler against a fake pynvml fed by the real `nvidia-smi -q` captures (same function
names, structures, units and exception classes as nvidia-ml-py)."""

from __future__ import annotations

import asyncio
import time

import pynvml
import pytest
from fakes.fixture_paths import FIXTURES
from fakes.sig_fake_pynvml import FakeMig, FakeNvml

from controller.signals.base import Unavailable
from controller.signals.nvml import NvmlReading, NvmlSampler
from fsm.mig import Slot

H100_Q = (FIXTURES / "nvidia-smi-q_h100-80gb-hbm3-x8-hgx_r565.txt").read_text()
A100_Q = (FIXTURES / "nvidia-smi-q_a100-sxm4-80gb-x4_r555.txt").read_text()


def two_ticks(fake: FakeNvml, sampler: NvmlSampler, dt: float = 2.0) -> NvmlReading:
    async def run() -> NvmlReading:
        first = await sampler.sample(0.0)
        assert isinstance(first, NvmlReading)
        fake.advance(dt)
        r = await sampler.sample(dt)
        assert isinstance(r, NvmlReading)
        return r

    return asyncio.run(run())


def test_fake_is_shaped_like_pynvml() -> None:
    fake = FakeNvml.from_q(H100_Q)
    for name in dir(FakeNvml):
        if name.startswith("nvml"):
            assert hasattr(pynvml, name), f"pynvml has no {name}"
    assert fake.NVMLError_GpuIsLost is pynvml.NVMLError_GpuIsLost
    vals = fake.nvmlDeviceGetFieldValues(0, [pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER])
    assert isinstance(vals[0], pynvml.c_nvmlFieldValue_t) and vals[0].value.ullVal == 7


def test_h100_hgx_capture_rates_from_cumulative_fields() -> None:
    fake = FakeNvml.from_q(H100_Q)
    s = NvmlSampler(nvml=fake)
    r = two_ticks(fake, s)
    assert list(r.gpus) == [f"gpu{i}" for i in range(8)]
    g0, g1, g5 = r.gpus["gpu0"], r.gpus["gpu1"], r.gpus["gpu5"]
    assert g0.bus_id == "00000000:18:00.0" and g0.model == "NVIDIA H100 80GB HBM3"
    # -q printed Tx 567 KB/s, Rx 559 KB/s for GPU0; 555 / 3874 for GPU1; 3534 / 551 for GPU5
    assert g0.pcie_tx_bps == pytest.approx(567 * 1024, rel=1e-3)
    assert g0.pcie_rx_bps == pytest.approx(559 * 1024, rel=1e-3)
    assert g1.pcie_rx_bps == pytest.approx(3874 * 1024, rel=1e-3)
    assert g5.pcie_tx_bps == pytest.approx(3534 * 1024, rel=1e-3)
    assert g0.pcie_replay_rate == 0.0  # 7 replays since reset, none in the window
    assert g0.util == 0.0 and g0.mig_enabled is False and g0.mig_devices is None
    assert fake.calls.get("nvmlDeviceGetPcieThroughput", 0) == 0  # the non-blocking fields sufficed
    assert fake.calls["nvmlDeviceGetFieldValues"] == 16  # one call per GPU per tick
    fake.gpus[6].replays += 10
    fake.advance(2.0)
    r = asyncio.run(s.sample(4.0))
    assert isinstance(r, NvmlReading) and r.gpus["gpu6"].pcie_replay_rate == pytest.approx(5.0)


def test_counter_reset_gives_no_rate_not_a_negative_one() -> None:
    fake = FakeNvml.from_q(H100_Q)
    s = NvmlSampler(nvml=fake)
    two_ticks(fake, s)
    fake.gpus[0].tx_bytes = 0.0  # driver reload
    fake.gpus[0].replays = 0
    fake.advance(1.0)  # counter now below its previous reading
    r = asyncio.run(s.sample(3.0))
    assert isinstance(r, NvmlReading)
    assert r.gpus["gpu0"].pcie_tx_bps is None and r.gpus["gpu0"].pcie_replay_rate is None
    assert r.gpus["gpu1"].pcie_tx_bps == pytest.approx(555 * 1024, rel=1e-3)


def test_throughput_fallback_runs_off_loop_in_parallel() -> None:
    fake = FakeNvml.from_q(H100_Q, throughput_delay_s=0.02)
    for g in fake.gpus:
        g.fields_supported = False
    s = NvmlSampler(nvml=fake)

    async def run() -> tuple[NvmlReading, float, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        t = asyncio.create_task(ticker())
        start = time.perf_counter()
        r = await s.sample(0.0)
        took = time.perf_counter() - start
        t.cancel()
        assert isinstance(r, NvmlReading)
        return r, took, ticks

    r, took, ticks = asyncio.run(run())
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 16
    assert took < 16 * 0.02 * 0.75  # parallel, not 16 x 20 ms in a row
    assert ticks >= 3  # the event loop kept running meanwhile
    assert r.gpus["gpu1"].pcie_rx_bps == 3874 * 1024  # KB/s -> bytes/s on the first tick
    assert "nvml:gpu0:pcie_tx" in r.unavailable and "not supported" in r.unavailable["nvml:gpu0:pcie_tx"].lower()


def test_mig_layout_from_gpu_instances() -> None:
    fake = FakeNvml.from_q(A100_Q)
    g = fake.gpus[1]
    g.mig_enabled = True
    g.migs = [
        FakeMig("MIG-aaaa", gi_id=1, profile_id=9, start=4),  # 3g.40gb
        FakeMig("MIG-bbbb", gi_id=5, profile_id=14, start=0),  # 2g.20gb
        FakeMig("MIG-cccc", gi_id=13, profile_id=19, start=2),  # 1g.10gb
    ]
    r = two_ticks(fake, NvmlSampler({"gpu0": 0, "gpu1": 1}, nvml=fake))
    g1 = r.gpus["gpu1"]
    assert g1.mig_enabled is True and g1.util is None
    assert "MIG" in r.unavailable["nvml:gpu1:util"]
    assert g1.mig_devices is not None
    assert [(d.uuid, d.gi_id, d.slot) for d in g1.mig_devices] == [
        ("MIG-aaaa", 1, Slot(4, "3g.40gb")),
        ("MIG-bbbb", 5, Slot(0, "2g.20gb")),
        ("MIG-cccc", 13, Slot(2, "1g.10gb")),
    ]
    assert list(r.gpus) == ["gpu0", "gpu1"]


def test_mig_list_is_cached_until_refresh_or_invalidate() -> None:
    fake = FakeNvml.from_q(A100_Q)
    fake.gpus[0].mig_enabled = True
    fake.gpus[0].migs = [FakeMig("MIG-a", gi_id=1, profile_id=0, start=0)]  # 7g.80gb
    s = NvmlSampler({"gpu0": 0}, nvml=fake, mig_refresh_s=10.0)

    def layout(t: float) -> list[Slot | None]:
        r = asyncio.run(s.sample(t))
        assert isinstance(r, NvmlReading) and r.gpus["gpu0"].mig_devices is not None
        return [d.slot for d in r.gpus["gpu0"].mig_devices]

    assert layout(0.0) == [Slot(0, "7g.80gb")]
    fake.gpus[0].migs = [FakeMig("MIG-b", gi_id=2, profile_id=9, start=4)]  # someone reconfigured
    assert layout(5.0) == [Slot(0, "7g.80gb")]  # within the refresh period: the cached list
    s.invalidate_mig("gpu0")
    assert layout(6.0) == [Slot(4, "3g.40gb")]
    fake.gpus[0].migs = []
    assert layout(15.0) == [Slot(4, "3g.40gb")]
    assert layout(16.5) == []  # 10 s after the last read


def test_gpu_lost_raises_one_alarm_and_marks_it() -> None:
    fake = FakeNvml.from_q(H100_Q)
    s = NvmlSampler(nvml=fake)
    two_ticks(fake, s)
    fake.gpus[3].lost = True
    r1 = asyncio.run(s.sample(4.0))
    r2 = asyncio.run(s.sample(6.0))
    assert isinstance(r1, NvmlReading) and isinstance(r2, NvmlReading)
    assert r1.gpus["gpu3"].lost and r1.gpus["gpu3"].pcie_tx_bps is None
    assert r1.events == ("gpu3: GPU is lost (NVML_ERROR_GPU_IS_LOST)",) and r2.events == ()
    assert "lost" in r1.unavailable["nvml:gpu3"]
    assert not r1.gpus["gpu2"].lost


def test_real_pynvml_without_a_driver_is_unavailable() -> None:
    # nvidia-ml-py is installed but this machine has no libnvidia-ml: a reason, not a crash
    r = asyncio.run(NvmlSampler(nvml=pynvml).sample(0.0))
    assert isinstance(r, Unavailable) and "NVML init failed" in r.reason


def test_index_beyond_count() -> None:
    fake = FakeNvml.from_q(A100_Q)
    r = asyncio.run(NvmlSampler({"gpu9": 9}, nvml=fake).sample(0.0))
    assert isinstance(r, Unavailable) and "gpu9: NVML index 9 but only 4 GPUs" in r.reason


def test_static_numa_and_cpu_affinity() -> None:
    fake = FakeNvml.from_q(H100_Q)
    fake.gpus[4].numa = 1
    fake.gpus[4].cpus = (*range(56, 112), *range(168, 224))  # as the violet H100 topo -m prints GPU4
    r = asyncio.run(NvmlSampler(nvml=fake).sample(0.0))
    assert isinstance(r, NvmlReading)
    g4 = r.gpus["gpu4"]
    assert g4.numa == 1 and g4.bus_id == "00000000:9A:00.0"
    from controller.topology import format_cpulist

    assert format_cpulist(g4.cpus) == "56-111,168-223"
    assert r.gpus["gpu0"].numa is None and r.gpus["gpu0"].cpus == ()  # not supported -> unknown
