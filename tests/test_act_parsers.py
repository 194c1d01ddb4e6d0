"""nvidia-smi parsers against every relevant real capture, the emulator's output against the same
captures byte for byte, the MIG planner, and hostile inputs (paths, devices, UUIDs, names)."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest
from fakes.fixture_paths import FIXTURES

from actuators import nvsmi
from actuators.blockdev import DeviceError, resolve
from actuators.emulation import nvidia_smi as emu
from actuators.launcher import CommandLauncher, LaunchError, SystemdLauncher, check_uuid
from actuators.migplan import PlanError, plan
from actuators.paths import PathError, confine
from fsm.mig import MODELS, Slot, is_valid, model_by_name
from fsm.observation import InstanceRef

FIX = FIXTURES


def fx(name: str) -> str:
    return (FIX / name).read_text()


def test_lgi_fixtures() -> None:
    rows = nvsmi.parse_lgi(fx("nvidia-smi-mig-lgi_a100-pcie-40gb_3g+2g+1g+1g_r510_hpe.txt"))
    assert [(r.name, r.profile_id, r.gi, r.start, r.size) for r in rows] == [
        ("1g.5gb", 19, 11, 0, 1),
        ("1g.5gb", 19, 12, 1, 1),
        ("2g.10gb", 14, 6, 2, 2),
        ("3g.20gb", 9, 1, 4, 4),
    ]
    rows = nvsmi.parse_lgi(fx("nvidia-smi-mig-lgi_a100-40gb_7x1g.5gb.txt"))  # the narrower 52-column table
    assert [(r.gi, r.start) for r in rows] == [(7 + i, i) for i in range(7)]
    rows = nvsmi.parse_lgi(fx("nvidia-smi-mig-lgi_h100-pcie_3g.40gb+3x1g.10gb_scaleway.txt"))
    assert {(r.name, r.start) for r in rows} == {("1g.10gb", 0), ("1g.10gb", 1), ("1g.10gb", 2), ("3g.40gb", 4)}


def test_lci_fixtures_including_missing_last_border() -> None:
    rows = nvsmi.parse_lci(fx("nvidia-smi-mig-lci_a100-pcie-40gb_4ci_r510_hpe_last-border-missing.txt"))
    assert [(r.gi, r.name, r.ci, r.start) for r in rows] == [
        (11, "1g.5gb", 0, 0), (12, "1g.5gb", 0, 0), (6, "1c.2g.10gb", 0, 0), (1, "1c.3g.20gb", 0, 0)]  # fmt: skip
    assert nvsmi.parse_lci(fx("nvidia-smi-mig-lci_error_no-compute-instances-not-found_r510_hpe.txt")) == []


@pytest.mark.parametrize(
    "name,n,last_sm",
    [("nvidia-smi-mig-lgip_a100-pcie-40gb_r460.txt", 5, 98), ("nvidia-smi-mig-lgip_gh200-h100-96gb.txt", 7, 132),
     ("nvidia-smi-mig-lgip_h100-nvl-94gb_azure-nc40ads.txt", 7, 132),
     ("nvidia-smi-mig-lgip_h100-pcie-80gb_r525_scaleway.txt", 7, 114)],
)  # fmt: skip
def test_lgip_fixtures_all_widths(name: str, n: int, last_sm: int) -> None:
    rows = nvsmi.parse_lgip(fx(name))
    assert len(rows) == n and rows[-1].profile_id == 0 and rows[-1].sm == last_sm
    assert all(r.free == r.total for r in rows)


def test_lgipp_and_list_and_change_fixtures() -> None:
    pl = nvsmi.parse_lgipp(fx("nvidia-smi-mig-lgipp_h100-pcie-80gb_r525_scaleway.txt"))
    for p in pl:  # the table in fsm.mig agrees with the tool
        prof = MODELS["H100-PCIE"].profile(p.profile_id)
        assert p.starts == prof.placements and p.size == prof.mem_slots
    for f in sorted(FIX.glob("nvidia-smi-L_*")):
        gpus = nvsmi.parse_list(f.read_text())  # CRLF, legacy and new UUIDs
        assert gpus and gpus[0].mig, f.name
    legacy = nvsmi.parse_list(fx("nvidia-smi-L_a100-sxm4-40gb_mig-mixed_legacy-uuid.txt"))
    assert legacy[0].mig[0].uuid.endswith("/2/0")
    ch = nvsmi.parse_change(fx("nvidia-smi-mig-cgi-C_success_h100-pcie_9-19-19-19_scaleway.txt"))
    assert ch.created_gi[0] == (2, "3g.40gb") and len(ch.created_ci) == 4 and not ch.error
    ch = nvsmi.parse_change(fx("nvidia-smi-mig-dci_error_in-use-by-another-client_a100-pcie.txt"))
    assert ch.error == "In use by another client" and len(ch.destroyed_ci) == 6
    for f in ("nvidia-smi-mig-cgi_error_insufficient-resources_gh200.txt",
              "nvidia-smi-mig-cgi_error_in-use-by-another-client_gh200.txt"):  # fmt: skip
        assert nvsmi.parse_change(fx(f)).error in ("Insufficient Resources", "In use by another client")


def test_garbage_and_mig_disabled_are_clear_errors() -> None:
    with pytest.raises(nvsmi.NvsmiError, match="unexpected output"):
        nvsmi.parse_lgi("\x1b[31m#@!% segfault\n")
    with pytest.raises(nvsmi.MigDisabled):
        nvsmi.parse_lgi("No MIG-enabled devices found.\n")
    with pytest.raises(nvsmi.NvsmiError, match="unexpected line"):
        nvsmi.parse_lgipp("GPU 0 Profile ID 19 Placements: {0,1}:1\nrm -rf /\n")
    with pytest.raises(nvsmi.NvsmiError, match="unexpected output"):
        nvsmi.parse_change("Successfully did something else\n")


def test_emulator_prints_the_captured_formats_byte_for_byte() -> None:
    st = emu.new_state(["H100-NVL"])
    assert emu.fmt_lgip(st["gpus"][0]) == fx("nvidia-smi-mig-lgip_h100-nvl-94gb_azure-nc40ads.txt")
    assert emu.fmt_lgipp(st["gpus"][0]) == fx("nvidia-smi-mig-lgipp_h100-pcie-80gb_r525_scaleway.txt")
    g = emu.new_gpu(0, "H100-PCIE", (Slot(4, "3g.40gb"), Slot(0, "1g.10gb"), Slot(1, "1g.10gb"), Slot(2, "1g.10gb")))
    assert emu.fmt_lgi([g]) == fx("nvidia-smi-mig-lgi_h100-pcie_3g.40gb+3x1g.10gb_scaleway.txt")
    g = emu.new_gpu(0, "A100-PCIE-40GB", (Slot(0, "1g.5gb"), Slot(1, "1g.5gb"), Slot(2, "2g.10gb"), Slot(4, "3g.20gb")))
    for gi, i in zip(g["gis"], [11, 12, 6, 1], strict=True):
        gi["id"] = i  # GI ids are the driver's choice; the capture's are used here
    assert emu.fmt_lgi([g]) == fx("nvidia-smi-mig-lgi_a100-pcie-40gb_3g+2g+1g+1g_r510_hpe.txt")
    # -lci: the capture's rows (non-default CIs aside) and our parser reads our own table back.
    assert [(r.gi, r.ci) for r in nvsmi.parse_lci(emu.fmt_lci([g]))] == [(11, 0), (12, 0), (6, 0), (1, 0)]


def test_emulator_enforces_rules_and_messages() -> None:
    st = emu.new_state(["A100-SXM4-40GB"])
    g = st["gpus"][0]
    out, err, code = emu.cmd_cgi(g, "9:4,19:0,14:2", with_ci=True)
    assert code == 0 and "Successfully created GPU instance ID  2 on GPU  0 using profile MIG 3g.20gb (ID  9)" in out
    out, err, code = emu.cmd_cgi(g, "9", with_ci=False)  # only 3g@0 left, but 1g@0 and 2g@2 block it
    assert code != 0 and err == (
        "Unable to create a GPU instance on GPU  0 using profile 9: Insufficient Resources\n"
        "Failed to create GPU instances: Insufficient Resources\n"
    )
    out, err, code = emu.cmd_cgi(g, "1g.5gb+me", with_ci=False)
    assert code == 0
    _, err, code = emu.cmd_cgi(g, "20", with_ci=False)  # +me: at most one
    assert "Insufficient Resources" in err
    _, err, code = emu.cmd_cgi(g, "42", with_ci=False)
    assert "using profile 42: Invalid Argument" in err and code == 2
    gi3 = next(x for x in g["gis"] if x["profile"] == "3g.20gb")
    gi3["processes"] = [1234]
    _, err, code = emu.cmd_dci(g, gi3["id"], None)
    assert "Unable to destroy compute instance ID  0 from GPU  0 GPU instance ID  2: In use by another client" in err
    _, err, code = emu.cmd_dgi(g, gi3["id"])
    assert "Unable to destroy GPU instance ID  2 from GPU  0: In use by another client" in err
    assert is_valid(model_by_name("A100-SXM4-40GB"), emu.layout_of(g))


def test_planner_fewest_steps_and_validity() -> None:
    m = MODELS["A100-SXM4-40GB"]
    a = (Slot(0, "3g.20gb"), Slot(4, "3g.20gb"))
    b = (Slot(0, "4g.20gb"), Slot(4, "3g.20gb"))
    p = plan("gpu0", m, a, b)
    assert p.destroy == (Slot(0, "3g.20gb"),) and p.create == (Slot(0, "4g.20gb"),)
    assert plan("gpu0", m, a, a).empty
    p = plan("gpu0", m, (), (Slot(0, "1g.5gb"), Slot(4, "3g.20gb")))
    assert p.create[0] == Slot(4, "3g.20gb")  # largest first
    with pytest.raises(PlanError, match="may start only at"):
        plan("gpu0", m, a, (Slot(6, "2g.10gb"),))
    with pytest.raises(PlanError, match="overlaps"):
        plan("gpu0", m, a, (Slot(0, "7g.40gb"), Slot(4, "3g.20gb")))
    with pytest.raises(PlanError, match="no MIG profile"):
        plan("gpu0", m, a, (Slot(0, "9g.99gb; rm -rf /"),))


@pytest.mark.parametrize(
    "rel",
    ["../etc", "a/../../b", "/abs", "a\nb", "a\0b", "a\tb", ".", "x/./y", "a" * 300, "", "b/" * 600],
)
def test_hostile_cgroup_paths_refused(tmp_path: Path, rel: str) -> None:
    with pytest.raises(PathError):
        confine(tmp_path, rel)


def test_symlink_escape_refused_and_spaces_confined(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "evil").symlink_to("/etc")
    with pytest.raises(PathError, match="outside the cgroup root"):
        confine(root, "evil/passwd")
    (root / "with space").mkdir()
    assert confine(root, "with space") == (root / "with space").resolve()
    assert confine(root, "x" * 255).parent == root.resolve()


@pytest.mark.parametrize("dev", ["../../etc/passwd", "sda; rm -rf /", "nvme0n1\n", "", "/nonexistent/dev", "99999:0"])
def test_hostile_devices_refused(dev: str) -> None:
    with pytest.raises(DeviceError):
        resolve(dev)


def test_device_resolution_on_this_host(tmp_path: Path) -> None:
    st = os.stat(tmp_path)
    if os.major(st.st_dev) == 0:
        with pytest.raises(DeviceError, match="without a block device"):
            resolve(str(tmp_path))
        return
    disk = resolve(str(tmp_path))
    assert Path(f"/sys/dev/block/{disk}").exists()
    assert not Path(f"/sys/dev/block/{disk}/partition").exists()  # the whole disk, never a partition
    name = Path(os.path.realpath(f"/sys/dev/block/{disk}")).name
    assert resolve(name) == disk == resolve(disk)


def test_fake_sysfs_partition_maps_to_disk(tmp_path: Path) -> None:
    sysr = tmp_path / "sys"
    disk = sysr / "devices" / "pci0000:00" / "nvme" / "block" / "nvme0n1"
    part = disk / "nvme0n1p2"
    part.mkdir(parents=True)
    (disk / "dev").write_text("259:0\n")
    (part / "dev").write_text("259:2\n")
    (part / "partition").write_text("2\n")
    (sysr / "dev" / "block").mkdir(parents=True)
    (sysr / "class" / "block").mkdir(parents=True)
    for n, d in (("259:0", disk), ("259:2", part)):
        (sysr / "dev" / "block" / n).symlink_to(d)
    (sysr / "class" / "block" / "nvme0n1p2").symlink_to(part)
    assert resolve("nvme0n1p2", sysr) == "259:0"
    assert resolve("259:2", sysr) == "259:0"


def test_launcher_inputs_validated(tmp_path: Path) -> None:
    for bad in ("MIG-abc; reboot", "MIG-a\nb", "GPU-123", "MIG-" + "a" * 200, "../x"):
        with pytest.raises(LaunchError):
            check_uuid(bad)
    with pytest.raises(LaunchError):
        SystemdLauncher("vllm.service; reboot")
    out = tmp_path / "args"
    # No shell: metacharacters in the template or the values stay literal arguments.
    launcher = CommandLauncher(["/usr/bin/env", "python3", "-c",
                                "import sys; open(sys.argv[1], 'w').write('|'.join(sys.argv[2:]))",
                                str(out), "{tenant}", "$(id)", "{uuid}", "{instance}"])  # fmt: skip
    asyncio.run(launcher.launch("t 1", InstanceRef("gpu0", "3g.20gb", 4), "MIG-1234-abcd"))
    assert out.read_text() == "t 1|$(id)|MIG-1234-abcd|gpu0/3g.20gb@4"


@pytest.mark.parametrize(
    ("parse", "text", "says"),
    [
        (nvsmi.parse_lgi, "Failed to display GPU instances: Insufficient Permissions\n", "no 'GPU instances:' table"),
        (nvsmi.parse_lgi, (FIXTURES / "nvidia-smi-mig-lgi_a100-40gb_7x1g.5gb.txt").read_text().split("|====")[0],
         "a table without rows (output cut short?)"),
        (nvsmi.parse_list, "GPU \u0661: NVIDIA A100-SXM4-40GB (UUID: GPU-5e0ae6a3-4a4c-4a13-b5e6-1d9b2a8f4c11)\n",
         "unexpected line"),
        (nvsmi.parse_query_gpus, "\u0661, NVIDIA A100-PCIE-40GB, 555.42.06\n", "unexpected line"),
        (nvsmi.parse_query_gpus, "\uff10, NVIDIA A100-PCIE-40GB, 555.42.06\n", "unexpected line"),
    ],
    ids=["error-line-as-title", "header-only", "list-arabic-indic-index", "query-arabic-indic", "query-full-width"],
)  # fmt: skip
def test_outputs_that_read_as_no_instances_or_another_gpu(parse: Any, text: str, says: str) -> None:
    """Found by fuzzing: an error line saying "GPU instances:" was taken for the table's title and
    its rows for none (every slot free), a table cut after its header for no instances, and other
    scripts' digits for GPU numbers."""
    with pytest.raises(nvsmi.NvsmiError, match=re.escape(says)):
        parse(text)


_L_GPU1 = "GPU 1: NVIDIA H100 PCIe (UUID: GPU-1cd6d4d6-9fa8-13be-3c42-09a1b2280a02)\n"
_QUERY = "0, NVIDIA H100 PCIe, 525.125.06\n1, NVIDIA H100 PCIe, 525.125.06\n"


@pytest.mark.parametrize(
    ("parse", "text", "says"),
    [
        (nvsmi.parse_list, fx("nvidia-smi-L_h100-pcie_mig-3g.40gb+3x1g.10gb_scaleway.txt") * 2,
         "nvidia-smi -L: GPU 0 listed twice, again in line 'GPU 0: NVIDIA H100 PCIe (UUID: GPU-7cd6d4d6-"),
        (nvsmi.parse_list, _L_GPU1 + _L_GPU1.replace("GPU 1:", "GPU 01:").replace("GPU-1", "GPU-2"),
         "nvidia-smi -L: GPU 1 listed twice, again in line 'GPU 01: NVIDIA H100 PCIe (UUID: GPU-2cd6d4d6-"),
        (nvsmi.parse_query_gpus, _QUERY + "0, NVIDIA A100-PCIE-40GB, 555.42.06\n",
         "nvidia-smi --query-gpu: GPU 0 listed twice, again in line '0, NVIDIA A100-PCIE-40GB, 555.42.06'"),
        (nvsmi.parse_query_gpus, _QUERY + "001, NVIDIA H100 PCIe, 525.125.06\n",
         "nvidia-smi --query-gpu: GPU 1 listed twice, again in line '001, NVIDIA H100 PCIe, 525.125.06'"),
    ],
    ids=["list-capture-twice", "list-leading-zero", "query-other-gpu", "query-leading-zeros"],
)  # fmt: skip
def test_a_gpu_index_listed_twice_is_an_error_naming_it_and_the_line(parse: Any, text: str, says: str) -> None:
    """Found by fuzzing: both were read, and a lookup by index took the first (its name for the GPU
    model, its MIG devices for a move's UUID), and a second driver version for one GPU read as two."""
    with pytest.raises(nvsmi.NvsmiError, match="^" + re.escape(says)):
        parse(text)


_L_A100 = fx("nvidia-smi-L_a100-pcie-40gb_mig-1g.5gb_r510_hpe.txt")  # GPU 0, MIG device 0
_L_H100 = fx("nvidia-smi-L_h100-pcie_mig-3g.40gb+3x1g.10gb_scaleway.txt")  # GPU 0, MIG devices 0-3
_L_LEGACY = fx("nvidia-smi-L_a100-sxm4-40gb_mig-7x1g.5gb_legacy-uuid.txt")  # MIG-GPU-<uuid>/gi/ci
_L_TWO = _L_A100 + _L_H100.replace("GPU 0:", "GPU 1:")  # both GPUs have a MIG device 0
_A100_UUID = "GPU-14ac2834-0d81-0508-69eb-e25264c08d21"
_A100_UPPER = "GPU-14AC2834-0D81-0508-69EB-E25264C08D21"  # one UUID: hex digits in either case
_A100_MIG0 = "MIG-b6cd45f2-9655-5269-9b96-65446729d5dc"


def test_two_gpus_each_with_a_mig_device_0() -> None:
    """MIG devices are numbered from 0 on each GPU: the same index under two GPUs is no repeat."""
    gpus = nvsmi.parse_list(_L_TWO)
    assert [(g.index, [d.index for d in g.mig]) for g in gpus] == [(0, [0]), (1, [0, 1, 2, 3])]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (_L_TWO.replace("GPU-7cd6d4d6-9fa8-13be-3c42-09a1b2280a02", _A100_UUID),
         f"UUID {_A100_UUID} listed twice, again in line 'GPU 1: NVIDIA H100 PCIe (UUID: {_A100_UUID})'"),
        (_L_TWO.replace("GPU-7cd6d4d6-9fa8-13be-3c42-09a1b2280a02", _A100_UPPER),
         f"UUID {_A100_UPPER} listed twice, again in line 'GPU 1: NVIDIA H100 PCIe (UUID: {_A100_UPPER})'"),
        (_L_H100.replace("Device  2", "Device  1"),
         "GPU 0 MIG device 1 listed twice, again in line 'MIG 1g.10gb     Device  1: (UUID: MIG-42fa9c93-"),
        (_L_TWO.replace("Device  2", "Device 01"),
         "GPU 1 MIG device 1 listed twice, again in line 'MIG 1g.10gb     Device 01: (UUID: MIG-42fa9c93-"),
        (_L_H100 + _L_H100.splitlines()[-1],
         "GPU 0 MIG device 3 listed twice, again in line 'MIG 1g.10gb     Device  3: (UUID: MIG-6d96b431-"),
        (_L_H100.replace("MIG-42fa9c93-1430-5ccc-b623-c02fb93b7f5a", "MIG-8aa1fc52-9818-58ec-bc64-8f0cae121bb4"),
         "UUID MIG-8aa1fc52-9818-58ec-bc64-8f0cae121bb4 listed twice, again in line 'MIG 1g.10gb     Device  2: "),
        (_L_TWO.replace("MIG-da06d78f-7534-56a0-a062-62fef012be91", _A100_MIG0),
         f"UUID {_A100_MIG0} listed twice, again in line 'MIG 3g.40gb     Device  0: (UUID: {_A100_MIG0})'"),
        (_L_LEGACY.replace("/8/0", "/7/0"),
         "UUID MIG-GPU-4200ccc0-2667-d4cb-9137-f932c716232a/7/0 listed twice, again in line 'MIG 1g.5gb Device 1: "),
    ],
    ids=["gpu-uuid", "gpu-uuid-upper-case", "mig-index", "mig-index-leading-zero-second-gpu", "mig-line-twice",
         "mig-uuid-one-gpu", "mig-uuid-two-gpus", "mig-uuid-legacy"],
)  # fmt: skip
def test_a_uuid_or_mig_device_listed_twice_is_an_error_naming_it_and_the_line(text: str, says: str) -> None:
    """Both were read, and a lookup by UUID took the first, or a move picked a MIG device's UUID by
    its position among two devices read for one: the move's target could be another device."""
    with pytest.raises(nvsmi.NvsmiError, match="^" + re.escape("nvidia-smi -L: " + says)):
        nvsmi.parse_list(text)


_LEGACY_GPU = "GPU-4200ccc0-2667-d4cb-9137-f932c716232a"  # the GPU of both legacy captures
_OTHER_GPU = "GPU-7cd6d4d6-9fa8-13be-3c42-09a1b2280a02"
_GPU1 = "GPU-1cd6d4d6-9fa8-13be-3c42-09a1b2280a02"  # _L_GPU1's


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (_L_LEGACY.replace(f"MIG-{_LEGACY_GPU}/9/0", f"MIG-{_OTHER_GPU}/9/0"),
         f"MIG device UUID MIG-{_OTHER_GPU}/9/0 names GPU {_OTHER_GPU}, not GPU 0's {_LEGACY_GPU} it is listed"
         f" under, in line 4 'MIG 1g.5gb Device 2: (UUID: MIG-{_OTHER_GPU}/9/0)'"),
        (_L_GPU1 + "\n" + _L_LEGACY.split("\n", 1)[1],  # its GPU line lost; a blank line counts as a line
         f"MIG device UUID MIG-{_LEGACY_GPU}/7/0 names GPU {_LEGACY_GPU}, not GPU 1's {_GPU1} it is listed"
         f" under, in line 3 'MIG 1g.5gb Device 0: (UUID: MIG-{_LEGACY_GPU}/7/0)'"),
    ],
    ids=["other-gpus-uuid", "gpu-line-lost"],
)  # fmt: skip
def test_a_legacy_mig_uuid_of_another_gpu_is_an_error_naming_both_and_the_line(text: str, says: str) -> None:
    """A legacy MIG-GPU-<uuid>/gi/ci under a GPU with another UUID was read as that GPU's device, and
    a move, which picks a legacy UUID by its GI id, could start a tenant on the other GPU."""
    with pytest.raises(nvsmi.NvsmiError, match="^" + re.escape("nvidia-smi -L: " + says) + "$"):
        nvsmi.parse_list(text)
    upper = _L_LEGACY.replace(f"{_LEGACY_GPU}/", f"{_LEGACY_GPU.upper()}/")  # hex digits in either case: one UUID
    assert len(nvsmi.parse_list(upper)[0].mig) == 7


_LGI_4 = fx("nvidia-smi-mig-lgi_a100-pcie-40gb_3g+2g+1g+1g_r510_hpe.txt")  # 3g.20gb the last row
_LCI_4 = fx("nvidia-smi-mig-lci_a100-pcie-40gb_4ci_r510_hpe_last-border-missing.txt")  # 1c.3g.20gb last
_LGIP_H100 = fx("nvidia-smi-mig-lgip_h100-pcie-80gb_r525_scaleway.txt")  # 1g.20gb the third row
_CGI_H100 = fx("nvidia-smi-mig-cgi-C_success_h100-pcie_9-19-19-19_scaleway.txt")  # 3g.40gb first
# parser, capture, the part of one line whose profile name is changed, what the parser read from it,
# and whether it names a compute instance (-lci, -L, -cci): then <c>c.<GI profile> too, 1c.3g.20gb
_NAMED: dict[str, tuple[Any, str, str, Any, bool]] = {
    "lgi": (nvsmi.parse_lgi, _LGI_4, "MIG 3g.20gb ", lambda rows: rows[-1].name, False),
    "lci": (nvsmi.parse_lci, _LCI_4, "MIG 1c.3g.20gb ", lambda rows: rows[-1].name, True),
    "lgip": (nvsmi.parse_lgip, _LGIP_H100, "MIG 1g.20gb ", lambda rows: rows[2].name, False),
    "list": (nvsmi.parse_list, _L_H100, "MIG 3g.40gb ", lambda gpus: gpus[0].mig[0].name, True),  # a MIG device
    "cgi": (nvsmi.parse_change, _CGI_H100, "MIG 3g.40gb (ID  9)", lambda ch: ch.created_gi[0][1], False),
    "cci": (nvsmi.parse_change, _CGI_H100, "MIG 3g.40gb (ID  2)", lambda ch: len(ch.created_ci), True),
}


def _renamed(text: str, part: str, name: str) -> tuple[str, str]:
    """`text` with the profile name in `part` (once in it) changed to `name`, and that line stripped."""
    assert text.count(part) == 1, part
    new = part.replace(part.split()[1], name)
    text = text.replace(part, new)
    return text, next(ln.strip() for ln in text.splitlines() if new in ln)


@pytest.mark.parametrize(
    ("case", "bad", "what"),
    [
        ("lgi", "../../3g.20gb", "nvidia-smi mig -lgi"),
        ("lgi", "1c.3g.20gb", "nvidia-smi mig -lgi"),  # a compute instance's name in the GI table
        ("lci", "1c.3g.20gb;reboot", "nvidia-smi mig -lci"),
        ("lgip", "1g.20GB", "nvidia-smi mig -lgip"),
        ("list", "1g.99999999999999999999gb", "nvidia-smi -L"),
        ("cgi", "3g.4\u0660gb", "nvidia-smi mig"),  # an Arabic-Indic zero
        ("cci", "3g.40gb+", "nvidia-smi mig"),
    ],
    ids=["lgi", "lgi-ci-name", "lci", "lgip", "list", "cgi", "cci"],
)
def test_a_profile_name_nvidia_smi_never_prints_is_an_error_naming_it_and_the_line(
    case: str, bad: str, what: str
) -> None:
    """Each row's pattern took any text for the name: 1g.99999999999999999999gb was read as a MIG
    device's profile, and -lgip's names make the driver's table. (-lgipp prints no name.)"""
    parse, text, part, _, _ = _NAMED[case]
    text, line = _renamed(text, part, bad)
    says = f"{what}: {bad!r} is no MIG profile name, in line {line[:120]!r}"
    with pytest.raises(nvsmi.NvsmiError, match="^" + re.escape(says) + "$"):
        parse(text)


@pytest.mark.parametrize("case", list(_NAMED))
def test_odd_but_real_profile_names_are_read(case: str) -> None:
    """A media extension (+me), a 1g with two memory slots (1g.20gb), H200's 4g.71gb and 7g.141gb
    (fsm.mig); attributes as go-nvlib writes and parses them (+gfx, +me.all, comma-joined), and a
    "-" form we cannot place but must not fail the listing on; where a compute instance is named,
    its <c>c. form too. The captures: tests above."""
    parse, text, part, read, ci = _NAMED[case]
    attrs = ("1g.20gb+gfx", "1g.24gb+me.all", "1g.10gb+me,gfx", "1g.23gb-me")
    for name in (
        "1g.10gb+me",
        "1g.20gb",
        "4g.71gb",
        "7g.141gb",
        *attrs,
        *(("1c.7g.141gb", "2c.4g.71gb") if ci else ()),
    ):
        got = read(parse(_renamed(text, part, name)[0]))
        assert got == (4 if case == "cci" else name), (name, got)
