"""Driver truth for MIG: the tables `nvidia-smi mig -lgip/-lgipp` list win over the built-in ones.

Real captures (tests/fixtures, SOURCES.md): the R460 A100-PCIE-40GB listing (no 1g.10gb, no +me,
9.75/19.62/39.50 GiB) and the Scaleway H100 PCIe R525 -lgip/-lgipp (9.62/19.50/39.25/79.00 GiB where
the built-in table, from a 570 driver, has 9.75/19.62/39.50/79.25). Then the wiring: the decision
core's lookups, the resize planner, the reconciler, the daemon start and a driver change, replay's
trace header, check-config --probe and `tailguard mig-profiles`, on the emulated nvidia-smi.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fakes.fixture_paths import FIXTURES

from actuators.emulation.statefile import locked
from actuators.emulation.testing import EmuHost, emu_host
from actuators.migtable import driver_profiles
from actuators.nvsmi import NvidiaSmi, parse_lgip, parse_lgipp, parse_query_gpus
from actuators.reconciler import Reconciler
from controller.cli import main as cli
from controller.mig_tables import MigTables
from fsm.codec import decode_as, encode
from fsm.desired import DesiredState
from fsm.mig import A100_40GB, A100_PCIE_40GB, H100_PCIE, Slot, is_valid, layout_problems
from fsm.migdriver import DriverProfile, model_from_driver, table_differences
from fsm.observation import GpuSample, InstanceRef, Observation
from fsm.placement import gpu_model
from fsm.resize import plan_resize
from fsm.spec import HostSpec
from fsm.topology import TopologyBuilder

R460_LGIP = (FIXTURES / "nvidia-smi-mig-lgip_a100-pcie-40gb_r460.txt").read_text()
H100_LGIP = (FIXTURES / "nvidia-smi-mig-lgip_h100-pcie-80gb_r525_scaleway.txt").read_text()
H100_LGIPP = (FIXTURES / "nvidia-smi-mig-lgipp_h100-pcie-80gb_r525_scaleway.txt").read_text()


def r460_table():  # the A100 placements are the same as the H100's (docs/mig-profiles.md section 1)
    return model_from_driver(A100_PCIE_40GB, "NVIDIA A100-PCIE-40GB",
                             driver_profiles(parse_lgip(R460_LGIP), parse_lgipp(H100_LGIPP), 0))  # fmt: skip


# ---------------------------------------------------------------- tables from real captures


def test_builtin_a100_pcie_table_is_the_r460_capture() -> None:
    model, notes = r460_table()
    assert notes == []
    assert table_differences(A100_PCIE_40GB, model) == []
    assert [p.name for p in A100_PCIE_40GB.profiles] == ["1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"]
    assert [p.gib for p in A100_PCIE_40GB.profiles] == [4.75, 9.75, 19.62, 19.62, 39.50]
    assert not A100_PCIE_40GB.has_profile("1g.10gb")


def test_r460_listing_against_the_sxm_table_names_every_difference() -> None:
    model, _ = r460_table()
    diff = table_differences(A100_40GB, model)
    assert "1g.10gb (ID 15): in the built-in table, not offered by the driver" in diff
    assert "1g.5gb+me (ID 20): in the built-in table, not offered by the driver" in diff
    assert "2g.10gb (ID 14): GiB 9.62 built-in, 9.75 driver" in diff
    assert "7g.40gb (ID 0): GiB 39.25 built-in, 39.50 driver" in diff
    assert len(diff) == 6  # two missing profiles, four GiB figures; SMs, engines, placements agree
    assert layout_problems(model, [Slot(0, "1g.10gb")]) == ["GPU model A100-PCIE-40GB has no MIG profile '1g.10gb'"]
    assert is_valid(model, [Slot(0, "4g.20gb"), Slot(4, "3g.20gb")])


def test_h100_pcie_r525_listing_differs_only_in_gib() -> None:
    model, notes = model_from_driver(H100_PCIE, "NVIDIA H100 PCIe",
                                     driver_profiles(parse_lgip(H100_LGIP), parse_lgipp(H100_LGIPP), 0))  # fmt: skip
    assert notes == []
    diff = table_differences(H100_PCIE, model)
    assert diff == [
        "1g.10gb (ID 19): GiB 9.75 built-in, 9.62 driver",
        "1g.10gb+me (ID 20): GiB 9.75 built-in, 9.62 driver",
        "1g.20gb (ID 15): GiB 19.62 built-in, 19.50 driver",
        "2g.20gb (ID 14): GiB 19.62 built-in, 19.50 driver",
        "3g.40gb (ID 9): GiB 39.50 built-in, 39.25 driver",
        "4g.40gb (ID 5): GiB 39.50 built-in, 39.25 driver",
        "7g.80gb (ID 0): GiB 79.25 built-in, 79.00 driver",
    ]
    assert [p.placements for p in model.profiles] == [p.placements for p in H100_PCIE.profiles]
    assert model.key == "H100-PCIE"  # per-model config (mig_ladder) still applies


def test_unusable_driver_rows_are_left_out_with_a_note() -> None:
    rows = driver_profiles(parse_lgip(H100_LGIP), parse_lgipp(H100_LGIPP), 0)
    odd = [replace(rows[0], lgip_id=33, name="5g.50gb", starts=(6,), size=4), replace(rows[1], starts=(), size=0)]
    # On a known model the slot count is its built-in table's: an H100 has 8.
    model, notes = model_from_driver(H100_PCIE, "NVIDIA H100 PCIe", odd)
    assert model.key == "H100-PCIE" and model.mem_slots == 8
    assert [(p.name, p.placements) for p in model.profiles] == [("1g.10gb+me", (0, 1, 2, 3, 4, 5, 6))]
    assert notes == [
        "5g.50gb (ID 33): placements [6]:4 exceed 8 slots; left out",
        "1g.10gb+me (ID 20): no -lgipp placements; the built-in ones are used",
    ]
    # Without a built-in table the driver's placements tell the slot count: here 10.
    model, notes = model_from_driver(None, "NVIDIA Future GPU", odd)
    assert model.key == "Future-GPU" and model.mem_slots == 10 and model.compute_slices == 5
    assert [(p.name, p.cls.key, p.placements) for p in model.profiles] == [
        ("5g.50gb", "5g", (6,)), ("1g.10gb+me", "1g+me", (0, 1, 2, 3, 4, 5, 6))
    ]  # fmt: skip
    assert notes == ["1g.10gb+me (ID 20): no -lgipp placements; the built-in ones are used"]
    assert table_differences(None, model)[0].startswith("no built-in table for NVIDIA Future GPU")


def test_query_gpus_parses_the_csv_capture_format() -> None:
    text = (FIXTURES / "nvidia-smi-query-gpu_csv_8x-h100-80gb-hbm3_hpe-cray-xd670_r580.csv").read_text()
    rows = [", ".join(ln.split(", ")[i] for i in (0, 1, 4)) for ln in text.splitlines()[1:] if ln.strip()]
    q = parse_query_gpus("\n".join(rows))
    assert len(q) == 8 and q[0].index == 0 and q[0].name == "NVIDIA H100 80GB HBM3" and q[0].driver == "580.126.20"


# ---------------------------------------------------------------- the decision core uses it


def _spec(**kw: object) -> HostSpec:
    topo = TopologyBuilder().numa(0, cpus=range(4)).root_complex("rc0", 0).gpu("gpu0", "rc0").build()
    return HostSpec(topology=topo, tenants={}, gpu_models={"gpu0": "H100-PCIE"}, **kw)  # type: ignore[arg-type]


def test_core_lookups_and_the_resize_planner_follow_the_driver_table() -> None:
    rows = driver_profiles(parse_lgip(H100_LGIP), parse_lgipp(H100_LGIPP), 0)
    # A driver that does not offer 2g (ID 14) and 4g (ID 5): the planner must step 1g -> 3g.
    narrow, _ = model_from_driver(H100_PCIE, "NVIDIA H100 PCIe", [r for r in rows if r.lgip_id not in (14, 5)])
    cur = InstanceRef("gpu0", "1g.10gb", 0)
    obs = Observation(t=0.0, gpus={"gpu0": GpuSample(layout=(Slot(0, "1g.10gb"),))})
    builtin = plan_resize(_spec(), obs, cur, (), {cur})
    driven = plan_resize(_spec(mig_tables={"gpu0": narrow}), obs, cur, (), {cur})
    assert builtin is not None and builtin.target.profile == "2g.20gb"
    assert driven is not None and driven.target.profile == "3g.40gb"
    assert gpu_model(_spec(mig_tables={"gpu0": narrow}), "gpu0") is narrow


def test_host_spec_with_driver_tables_survives_the_trace_codec() -> None:
    model, _ = r460_table()
    spec = _spec(mig_tables={"gpu0": model})
    back = decode_as(HostSpec, json.loads(json.dumps(encode(spec))))
    assert back.mig_tables["gpu0"] == model and back.gpu_models == spec.gpu_models


def test_shadow_replay_decides_with_the_recorded_driver_table(tmp_path: Path) -> None:
    from replay.trace import TraceWriter, read_trace

    model, _ = r460_table()
    spec = _spec(mig_tables={"gpu0": model})
    w = TraceWriter(tmp_path / "t.jsonl", "h", spec)
    w.write(Observation(t=1.0))
    w.close()
    header, _ = read_trace(tmp_path / "t.jsonl")
    assert gpu_model(header.spec, "gpu0") == model


# ---------------------------------------------------------------- the shell on the emulated nvidia-smi


def _emu(tmp: Path, **gpu0: object) -> EmuHost:
    h = emu_host(tmp / "emu", ["A100-PCIE-40GB"])
    with locked(h.nvsmi_state) as st:
        st["gpus"][0].update(gpu0)
    return h


def test_emulator_lists_the_r460_table_as_captured(tmp_path: Path) -> None:
    h = _emu(tmp_path)
    tables = MigTables(NvidiaSmi(str(h.nvsmi), 10.0), {"gpu0": 0})
    assert asyncio.run(tables.refresh(force=True))
    t = tables.tables["gpu0"]
    assert t.source == "driver" and t.driver == "emulated" and t.differences == ()
    assert [p.gib for p in t.model.profiles] == [4.75, 9.75, 19.62, 19.62, 39.50]  # type: ignore[union-attr]
    assert tables.overrides() == {}


def test_reconciler_plans_with_a_newer_drivers_table(tmp_path: Path) -> None:
    # A newer driver on the same card offers all seven profiles: a 1g.10gb can then be created.
    h = _emu(tmp_path, listing="A100-SXM4-40GB", driver="550.54.15")
    r = Reconciler(cgroup_root=str(tmp_path / "nocg"), nvidia_smi=str(h.nvsmi), mps_control=str(h.mps),
                   gpus={"gpu0": 0}, gpu_models={"gpu0": "A100-PCIE-40GB"}, journal_path=tmp_path / "j.jsonl",
                   tool_timeout=10.0)  # fmt: skip
    want = (Slot(0, "1g.10gb"), Slot(4, "3g.20gb"))

    async def go() -> None:
        await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": want}))
        await r.wait_idle(30)
        (o,) = r.status().outcomes  # the built-in table has no 1g.10gb: refused before any command
        assert not o.ok and "has no MIG profile '1g.10gb'" in o.error
        tables = MigTables(r.nvsmi, {"gpu0": 0}, {"gpu0": "A100-PCIE-40GB"})
        await tables.refresh(force=True)
        assert "1g.10gb (ID 15): offered by the driver, not in the built-in table" in tables.tables["gpu0"].differences
        r.use_mig_tables(tables.in_force())
        await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": want}))
        await r.wait_idle(30)
        assert [o.ok for o in r.status().outcomes] == [True]
        assert await r.read_layout("gpu0") == want

    asyncio.run(go())


def _cfg(tmp: Path, instance: str = "gpu0/3g.20gb@4", extra: str = "", model: str = "A100-PCIE-40GB") -> Path:
    for d in ("state", "nocg"):
        (tmp / d).mkdir(exist_ok=True)
    (tmp / "lat.jsonl").touch()
    p = tmp / "tg.toml"
    p.write_text(f"""
[host]
state_dir = "{tmp / "state"}"
cgroup_root = "{tmp / "nocg"}"
[[gpus]]
name = "gpu0"
index = 0
model = "{model}"
[[tenants]]
name = "llm"
role = "sensitive"
instance = "{instance}"
slo_ms = 50
latency = {{ kind = "jsonl", path = "{tmp / "lat.jsonl"}" }}
[signals]
nvml = false
[topology]
source = "none"
{extra}
""")
    return p


def test_linux_host_reads_the_tables_at_start_and_after_a_driver_change(tmp_path: Path, monkeypatch) -> None:
    from controller.config import load_config
    from controller.daemon import Daemon, DaemonOptions
    from controller.linux_host import LinuxHost
    from fsm.topology import empty_topology

    h = _emu(tmp_path, driver="460.32.03")
    monkeypatch.setenv("PATH", f"{h.nvsmi.parent}:/usr/bin:/bin")
    cfg = load_config(_cfg(tmp_path))
    host = LinuxHost(cfg, empty_topology())

    async def go() -> None:
        await host.start()
        assert host.mig.tables["gpu0"].source == "driver" and host.spec.mig_tables == {}
        assert host.mig_conditions() == {}
        d = Daemon(host, DaemonOptions(period_s=0.05, max_ticks=1), spec=host.spec)
        # The driver is upgraded under the running daemon: the next check re-reads the listing.
        with locked(h.nvsmi_state) as st:
            st["gpus"][0].update(driver="550.54.15", listing="A100-SXM4-40GB")
        host._mig_due = 0.0
        await host.observe()
        assert host._mig_task is not None
        await host._mig_task
        assert host.mig.driver == "550.54.15"
        assert host.mig_tables["gpu0"].has_profile("1g.10gb")
        await d.run()
        assert d.spec.mig_tables["gpu0"].has_profile("1g.10gb")  # the daemon's core sees it
        view = d.snapshot.mig_tables["gpu0"]
        assert (view.source, view.driver, view.differences) == ("driver", "550.54.15", 6)
        from prometheus_client import generate_latest

        from controller.exporters.prometheus import DaemonCollector, make_registry

        text = generate_latest(make_registry(DaemonCollector(lambda: d.snapshot))).decode()
        assert ('tailguard_mig_profile_table_differences{driver="550.54.15",gpu="gpu0",model="A100-PCIE-40GB",'
                'source="driver"} 6.0') in text  # fmt: skip

    asyncio.run(go())


@pytest.mark.parametrize(
    ("gpu0", "instance", "rc", "expect"),
    [
        ({"driver": "460.32.03"}, "gpu0/1g.10gb@0", 2,
         "tenants[0](llm).instance: gpu0/1g.10gb@0: GPU model A100-PCIE-40GB has no MIG profile '1g.10gb'"),
        ({"listing": "A100-SXM4-40GB"}, "gpu0/1g.10gb@0", 0,
         "gpus[0](gpu0): warning: the driver's MIG table differs from the built-in one (it wins): 1g.10gb (ID 15)"),
        ({"listing": "A100-SXM4-40GB"}, "gpu0/3g.20gb@2", 2, "tenants[0](llm).instance: gpu0/3g.20gb@2: "),
    ],
)  # fmt: skip
def test_check_config_probe_judges_by_the_drivers_table(tmp_path, monkeypatch, capsys, gpu0, instance, rc, expect):
    h = _emu(tmp_path, **gpu0)
    monkeypatch.setenv("PATH", f"{h.nvsmi.parent}:/usr/bin:/bin")
    cfg = str(_cfg(tmp_path, instance))
    assert cli(["check-config", cfg, "--probe"]) == rc
    assert expect in capsys.readouterr().err
    if instance == "gpu0/1g.10gb@0":  # offline, the built-in R460 table has no 1g.10gb: refused
        assert cli(["check-config", cfg]) == 2


def test_a_configured_gpu_without_a_driver_listing_is_a_degraded_condition(tmp_path, monkeypatch) -> None:
    from controller.config import load_config
    from controller.linux_host import LinuxHost
    from fsm.topology import empty_topology

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    host = LinuxHost(load_config(_cfg(tmp_path)), empty_topology())
    assert asyncio.run(host.refresh_mig_tables(force=True))
    (cond,) = host.mig_conditions().items()
    assert cond[0] == "mig-table:gpu0" and cond[1].startswith("nvidia-smi unavailable")
    assert cond[1].endswith("its built-in table is used")
    assert host.mig.tables["gpu0"].model == A100_PCIE_40GB and host.spec.mig_tables == {}


def test_check_config_probe_without_a_driver_warns(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cli(["check-config", str(_cfg(tmp_path)), "--probe"]) == 0
    assert "checked against the built-in tables only" in capsys.readouterr().err


def test_mig_profiles_command(tmp_path, monkeypatch, capsys) -> None:
    h = _emu(tmp_path, listing="A100-SXM4-40GB", driver="550.54.15")
    monkeypatch.setenv("PATH", f"{h.nvsmi.parent}:/usr/bin:/bin")
    assert cli(["mig-profiles"]) == 0
    out = capsys.readouterr().out
    assert "gpu0 (index 0): NVIDIA A100-PCIE-40GB, driver 550.54.15: the driver's table (differs" in out
    assert "1g.10gb (ID 15): offered by the driver, not in the built-in table" in out
    assert cli(["mig-profiles", "--gpu", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpus"][0]["source"] == "driver" and data["gpus"][0]["profiles"][2]["name"] == "1g.10gb"
    assert cli(["mig-profiles", "--gpu", "3"]) == 2
    assert "the driver lists no GPU 3" in capsys.readouterr().err


def test_mig_profiles_without_a_driver(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cli(["mig-profiles"]) == 2
    assert "nvidia-smi" in capsys.readouterr().err
    assert cli(["mig-profiles", "--config", str(_cfg(tmp_path))]) == 1
    out = capsys.readouterr().out
    assert "gpu0 (index 0): NVIDIA A100-PCIE-40GB: the built-in table (nvidia-smi unavailable" in out
    assert cli(["mig-profiles", "--model", "H100-NVL"]) == 0
    assert "7g.94gb" in capsys.readouterr().out
    assert cli(["mig-profiles", "--model", "B200"]) == 2


@pytest.mark.faults
def test_a_hanging_nvidia_smi_does_not_hold_the_start(tmp_path, monkeypatch) -> None:
    import controller.linux_host as lh
    from controller.config import load_config
    from fsm.topology import empty_topology

    h = _emu(tmp_path, listing="A100-SXM4-40GB")
    with locked(h.nvsmi_state) as st:
        st["faults"] = [{"match": "--query-gpu", "mode": "hang", "seconds": 30, "times": 1}]
    monkeypatch.setenv("PATH", f"{h.nvsmi.parent}:/usr/bin:/bin")
    monkeypatch.setattr(lh, "MIG_START_BUDGET_S", 1.0)
    host = lh.LinuxHost(load_config(_cfg(tmp_path)), empty_topology())

    async def go() -> None:
        t0 = time.monotonic()
        await host.start()
        assert time.monotonic() - t0 < 5.0  # bounded, and the hung tool's process group was killed
        assert host.spec.mig_tables == {} and host._mig_force  # built-in meanwhile, retried next tick
        await host.observe()
        assert host._mig_task is not None
        await host._mig_task  # the fault fired once: the retry reads the driver's listing
        assert host.mig_tables["gpu0"].has_profile("1g.10gb")

    asyncio.run(go())


def test_nvml_maps_mig_devices_through_the_driver_table() -> None:
    from fakes.sig_fake_pynvml import FakeMig, FakeNvml

    from controller.signals.nvml import NvmlSampler

    fake = FakeNvml.from_q((FIXTURES / "nvidia-smi-q_a100-sxm4-80gb-x4_r555.txt").read_text())
    fake.gpus = fake.gpus[:1]
    fake.gpus[0].name = "NVIDIA A100-PCIE-40GB"
    fake.gpus[0].mig_enabled = True
    fake.gpus[0].migs = [FakeMig("MIG-a", gi_id=3, profile_id=15, start=0)]  # a 1g.10gb: not in the R460 table
    s = NvmlSampler({"gpu0": 0}, nvml=fake)
    r = asyncio.run(s.sample(1.0))
    assert r.gpus["gpu0"].mig_devices[0].slot is None  # type: ignore[union-attr]
    assert "has no MIG profile 15" in r.unavailable["nvml:gpu0:layout"]  # type: ignore[union-attr]
    # A newer driver lists the R460 rows plus 1g.10gb (ID 15), as the current A100 40GB table has it.
    p = A100_40GB.profile("1g.10gb")
    row = DriverProfile(p.name, 15, 4, p.gib, p.sm, p.dec, p.enc, p.jpg, p.ofa, p.ce, (0, 2, 4, 6), 2)
    r460 = driver_profiles(parse_lgip(R460_LGIP), parse_lgipp(H100_LGIPP), 0)
    newer, _ = model_from_driver(A100_PCIE_40GB, "NVIDIA A100-PCIE-40GB", [*r460, row])
    s.use_mig_tables({"gpu0": newer})
    r = asyncio.run(s.sample(2.0))
    assert r.gpus["gpu0"].mig_devices[0].slot == Slot(0, "1g.10gb")  # type: ignore[union-attr]
    assert "nvml:gpu0:layout" not in r.unavailable  # type: ignore[union-attr]


def test_run_judges_homes_by_the_drivers_table_and_reload_keeps_the_old_config(tmp_path, monkeypatch, capsys) -> None:
    from controller.config import load_config
    from controller.linux_host import LinuxHost
    from controller.mig_probe import DriverMismatch
    from fsm.topology import empty_topology

    run = ["run", "--duration", "1", "--metrics-port", "0", "--quiet", "--log-level", "ERROR", "--config"]
    # An SXM4 card whose driver lists only the R460 rows: the built-in SXM4 table has 1g.10gb, the
    # driver does not, and the driver wins: `run` refuses the home that check-config accepts offline.
    h = emu_host(tmp_path / "emu", ["A100-SXM4-40GB"])
    with locked(h.nvsmi_state) as st:
        st["gpus"][0].update(driver="460.32.03", offer=[19, 14, 9, 5, 0])
    monkeypatch.setenv("PATH", f"{h.nvsmi.parent}:/usr/bin:/bin")
    bad = _cfg(tmp_path, "gpu0/1g.10gb@0", model="A100-SXM4-40GB")
    assert cli(["check-config", str(bad)]) == 0
    capsys.readouterr()
    assert cli([*run, str(bad)]) == 2
    err = capsys.readouterr().err
    assert "tenants[0](llm).instance: gpu0/1g.10gb@0: GPU model A100-SXM4-40GB has no MIG profile '1g.10gb'" in err
    assert "Traceback" not in err
    bad_cfg = load_config(bad)
    good = _cfg(tmp_path, model="A100-SXM4-40GB")
    host = LinuxHost(load_config(good), empty_topology())
    asyncio.run(host.start())
    with pytest.raises(DriverMismatch, match=r"no MIG profile '1g\.10gb'"):
        host.reload(bad_cfg)
    assert host.cfg.tenants[0].instance == "gpu0/3g.20gb@4"  # the running config stays


def test_run_takes_a_home_only_the_newer_drivers_table_offers(tmp_path, monkeypatch, capsys) -> None:
    h = _emu(tmp_path, listing="A100-SXM4-40GB", driver="550.54.15")  # an A100-PCIE-40GB offering 1g.10gb
    monkeypatch.setenv("PATH", f"{h.nvsmi.parent}:/usr/bin:/bin")
    cfg = str(_cfg(tmp_path, "gpu0/1g.10gb@0"))
    assert cli(["check-config", cfg]) == 2  # offline: the built-in (R460) table has no 1g.10gb
    run = ["run", "--duration", "1", "--metrics-port", "0", "--quiet", "--log-level", "ERROR", "--config"]
    assert cli([*run, cfg]) == 0  # the driver's table offers it: the daemon runs


def test_probe_names_overlaps_ladders_and_unknown_indexes_against_the_driver_table() -> None:
    from controller.config import parse_config
    from controller.mig_probe import DriverMismatch, check_against_driver, driver_problems
    from controller.mig_tables import GpuTable

    cfg = parse_config("""
[[gpus]]
name = "gpu0"
index = 0
model = "A100-PCIE-40GB"
[[gpus]]
name = "gpu1"
index = 5
[[tenants]]
name = "a"
role = "bulk"
instance = "gpu0/4g.20gb@0"
[[tenants]]
name = "b"
role = "bulk"
instance = "gpu0/3g.20gb@0"
[policy.mig_ladder]
A100-SXM4-40GB = ["1g.10gb", "2g.10gb", "7g.40gb"]
""")
    model, _ = r460_table()
    sxm_like = replace(model, key="A100-SXM4-40GB")  # an SXM4 card whose driver lists the R460 rows
    tables = MigTables(NvidiaSmi("nvidia-smi"), {"gpu0": 0, "gpu1": 5})
    tables.tables = {
        "gpu0": GpuTable("gpu0", 0, model, A100_PCIE_40GB, "driver", "460.32.03"),
        "gpu1": GpuTable("gpu1", 5, None, None, "none", "460.32.03", error="nvidia-smi lists no GPU 5"),
        "gpu2": GpuTable("gpu2", 2, sxm_like, A100_40GB, "driver", "460.32.03"),
    }
    problems, warnings = driver_problems(cfg, tables)
    assert problems == [
        "gpus[1](gpu1).index: index 5, but nvidia-smi lists no GPU 5",
        "policy.mig_ladder.A100-SXM4-40GB: gpu2's driver does not offer 1g.10gb",
    ]
    assert warnings == []
    with pytest.raises(DriverMismatch) as e:  # what `run` raises: the homes judged by the driver's tables too
        check_against_driver(cfg, tables)
    assert e.value.problems[1:] == problems
    assert e.value.problems[0].startswith("tenants[1](b).instance: gpu0/3g.20gb@0 overlaps gpu0/4g.20gb@0 (tenant a)")
