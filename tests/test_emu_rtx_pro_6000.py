"""The emulated nvidia-smi on an RTX PRO 6000 Blackwell Server Edition (12 memory slots, 4 compute
slices, its own profile IDs) against the real captures byte for byte (tests/fixtures, SOURCES.md:
kubesimplify/website, driver 610.43.02): -lgip, -lgipp, both -cgi -C runs, -lgi, -lci, -dci, -dgi,
the -dgi refused with "In use by another client", -L of 8 GPUs (UUIDs aside). Then the actuators end
to end on such a host: a 1g.24gb at start 9 resized to a 2g.48gb, read back, idempotent; refused
and rolled back where a process holds an instance to be destroyed. And `tailguard mig-profiles`,
`check-config --probe` and doctor's MIG check on it: the GPU's 12 slots and 4 slices, its placements."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from fakes.fixture_paths import FIXTURES
from test_mig_driver_tables import _cfg

from actuators.emulation import nvidia_smi as emu
from actuators.emulation.statefile import load, locked
from actuators.emulation.testing import EmuHost, emu_host
from actuators.nvsmi import NvidiaSmi, parse_lgip
from actuators.reconciler import Reconciler
from controller.cli import main as cli
from controller.config import load_config
from controller.doctor import OK, check_mig
from fsm.desired import DesiredState
from fsm.mig import RTX_PRO_6000_SE, Slot, is_valid

KEY = RTX_PRO_6000_SE.key
FOUR = tuple(Slot(s, "1g.24gb") for s in (0, 3, 6, 9))
START = (Slot(0, "1g.24gb"), Slot(3, "1g.24gb"), Slot(9, "1g.24gb"))
GROWN = (Slot(0, "1g.24gb"), Slot(3, "1g.24gb"), Slot(6, "2g.48gb"))
UUID = re.compile(r"\b(GPU|MIG)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def fx(kind: str, rest: str) -> str:
    return (FIXTURES / f"nvidia-smi-{kind}_rtx-pro-6000-blackwell-se_{rest}_kubesimplify.txt").read_text()


# -dgi while the compute instances stand ("the CI still standing on GI 3 is the 'another client'")
REFUSED = (FIXTURES / "nvidia-smi-mig-dgi_error_in-use-by-another-client_rtx-pro-6000-blackwell-se_kubesimplify.txt"
           ).read_text()  # fmt: skip


def run(h: EmuHost, *args: str) -> tuple[str, int]:
    """The emulated tool as a process (the `-cgi ... -C` two steps included): stdout + stderr."""
    p = subprocess.run([str(h.nvsmi), *args], capture_output=True, text=True, timeout=60, check=False)
    return p.stdout + p.stderr, p.returncode


def layout(h: EmuHost, i: int = 0) -> tuple[Slot, ...]:
    return emu.layout_of(load(h.nvsmi_state)["gpus"][i])


# ---------------------------------------------------------------- the captures, byte for byte


def test_one_gpu_through_the_captured_lifecycle(tmp_path: Path) -> None:
    h = emu_host(tmp_path / "emu", [KEY])
    steps = [
        (("-lgip",), fx("mig-lgip", "r610"), 0),
        (("-lgipp",), fx("mig-lgipp", "r610"), 0),
        (("-cgi", "1g.24gb,1g.24gb,1g.24gb,1g.24gb", "-C"), fx("mig-cgi-C_success", "4x1g.24gb"), 0),
        (("-lgi",), fx("mig-lgi", "4x1g.24gb"), 0),
        (("-lci",), fx("mig-lci", "4x1g.24gb"), 0),
        (("-dgi",), REFUSED, emu.EXIT_OTHER),
        (("-dci",), fx("mig-dci_success", "4x1g.24gb"), 0),
        (("-dgi",), fx("mig-dgi_success", "4x1g.24gb"), 0),
        (("-cgi", "2g.48gb,1g.24gb,1g.24gb", "-C"), fx("mig-cgi-C_success", "2g.48gb+2x1g.24gb"), 0),
        (("-lgi",), fx("mig-lgi", "2g.48gb+2x1g.24gb"), 0),
    ]
    for args, want, code in steps:
        assert run(h, "mig", "-i", "0", *args) == (want, code), args
    # By profile ID (the post: "-cgi 14,14,14,14 -C does exactly the same thing").
    h2 = emu_host(tmp_path / "emu2", [KEY])
    assert run(h2, "mig", "-i", "0", "-cgi", "14,14,14,14", "-C") == (fx("mig-cgi-C_success", "4x1g.24gb"), 0)


def test_list_of_eight_gpus_uuids_aside(tmp_path: Path) -> None:
    h = emu_host(tmp_path / "emu", [KEY] * 8)
    out, code = run(h, "mig", "-cgi", "1g.24gb,1g.24gb,1g.24gb,1g.24gb", "-C")  # no -i: every GPU
    assert code == 0 and out == "".join(fx("mig-cgi-C_success", "4x1g.24gb").replace("GPU  0", f"GPU {i:>2}")
                                        for i in range(8))  # fmt: skip
    listed, code = run(h, "-L")
    captured = (FIXTURES / "nvidia-smi-L_rtx-pro-6000-blackwell-se-x8_mig-4x1g.24gb_kubesimplify.txt").read_text()
    assert code == 0 and UUID.sub(r"\1-<uuid>", listed) == UUID.sub(r"\1-<uuid>", captured)
    assert len(set(UUID.findall(listed))) == 2  # GPU and MIG: the UUIDs themselves are all distinct
    assert len({m.group(0) for m in UUID.finditer(listed)}) == 8 + 32


def test_the_lgip_free_counts_and_refusals_follow_the_twelve_slots() -> None:
    g = emu.new_gpu(0, KEY, (Slot(9, "1g.24gb"),))
    rows = {r.name: (r.free, r.total) for r in parse_lgip(emu.fmt_lgip(g))}
    assert rows["1g.24gb"] == (3, 4) and rows["2g.48gb"] == (1, 2) and rows["4g.96gb"] == (0, 1)
    _, err, code = emu.cmd_cgi(g, "5:6", with_ci=False)  # 2g.48gb over the 1g.24gb at 9
    assert code == emu.EXIT_OTHER and err == (
        "Unable to create a GPU instance on GPU  0 using profile 5: Insufficient Resources\n"
        "Failed to create GPU instances: Insufficient Resources\n"
    )
    _, err, code = emu.cmd_cgi(g, "14:4", with_ci=False)  # not in {0,3,6,9}
    assert code == emu.EXIT_INVALID and "Invalid Argument" in err
    _, err, code = emu.cmd_cgi(g, "19", with_ci=False)  # an A100/H100 ID this GPU has not
    assert code == emu.EXIT_INVALID and "using profile 19: Invalid Argument" in err
    out, _, code = emu.cmd_cgi(g, "0", with_ci=False)  # 4g.96gb needs all twelve
    assert code == emu.EXIT_OTHER and not out
    out, _, code = emu.cmd_cgi(g, "5:0", with_ci=True)
    assert code == 0 and out == (
        "Successfully created GPU instance ID  1 on GPU  0 using profile MIG 2g.48gb (ID  5)\n"
        "Successfully created compute instance ID  0 on GPU  0 GPU instance ID  1 using profile MIG 2g.48gb (ID  1)\n"
    )
    assert emu.layout_of(g) == (Slot(0, "2g.48gb"), Slot(9, "1g.24gb"))
    g = emu.new_gpu(0, KEY, (Slot(0, "4g.96gb"),))
    assert [(gi["id"], ci["profile_id"]) for gi in g["gis"] for ci in gi["cis"]] == [(0, 3)]  # CI: 4 slices


# ---------------------------------------------------------------- the actuators end to end


def rec(tmp: Path, h: EmuHost) -> Reconciler:
    return Reconciler(
        cgroup_root=str(tmp / "nocg"), nvidia_smi=str(h.nvsmi), mps_control=str(h.mps), gpus={"gpu0": 0},
        journal_path=tmp / "journal.jsonl", tool_timeout=10.0, inline_wait_s=60.0,
    )  # fmt: skip


@pytest.mark.parametrize("before", [FOUR, START])
def test_resize_a_1g_at_start_9_to_a_2g_idempotent(tmp_path: Path, before: tuple[Slot, ...]) -> None:
    h = emu_host(tmp_path / "emu", [KEY], {0: before})

    async def go() -> None:
        r = rec(tmp_path, h)
        assert (await r.read_actual()).layouts["gpu0"] == before
        rep = await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": GROWN}))
        assert rep.started == ["gpu:gpu0"] and not rep.errors
        gone = [f"gpu0: destroy 1g.24gb@{s.start}" for s in before if s.start >= 6]
        assert rep.ops == [*gone, "gpu0: create 2g.48gb@6"]
        await r.wait_idle(30)
        assert [(o.target, o.ok) for o in r.status().outcomes] == [("gpu:gpu0", True)]
        assert layout(h) == GROWN and is_valid(RTX_PRO_6000_SE, GROWN)
        assert (await r.read_actual()).layouts["gpu0"] == GROWN  # read back through -L / -lgi
        out, _ = run(h, "mig", "-i", "0", "-lgi")
        assert "|   0  MIG 2g.48gb            5        2          6:6     |" in out.splitlines()
        again = await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": GROWN}))
        assert again.ops == [] and again.started == [] and not again.errors
        assert layout(h) == GROWN

    asyncio.run(go())


def test_in_use_on_the_12_slot_gpu_is_refused_and_rolled_back(tmp_path: Path) -> None:
    h = emu_host(tmp_path / "emu", [KEY], {0: FOUR})
    with locked(h.nvsmi_state) as st:  # a process runs on the 1g.24gb at 6, which the resize destroys
        next(gi for gi in st["gpus"][0]["gis"] if gi["start"] == 6)["processes"] = [4242]

    async def go() -> None:
        r = rec(tmp_path, h)
        await r.reconcile(DesiredState(t=time.time(), layouts={"gpu0": GROWN}))
        await r.wait_idle(30)
        (o,) = r.status().outcomes
        assert not o.ok and "In use by another client" in o.error and "rolled back" in o.error
        assert layout(h) == FOUR

    asyncio.run(go())


# ---------------------------------------------------------------- the shell on the emulated host


def _config(tmp: Path, instance: str) -> Path:
    ladder = f'[policy]\nmig_ladder = {{ "{KEY}" = ["1g.24gb", "2g.48gb", "4g.96gb"] }}'
    return _cfg(tmp, instance, extra=ladder, model=KEY)


def test_mig_profiles_doctor_and_check_config_on_the_12_slot_gpu(tmp_path: Path, monkeypatch, capsys) -> None:
    h = emu_host(tmp_path / "emu", [KEY], {0: START})
    monkeypatch.setenv("PATH", f"{h.nvsmi.parent}:/usr/bin:/bin")
    assert cli(["mig-profiles"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0]
        == f"gpu0 (index 0): {RTX_PRO_6000_SE.name}, driver emulated: the driver's table (same as the built-in one)"
    )
    assert out[1] == "  12 memory slots, 4 compute slices"
    rows = out[3:]
    assert len(rows) == 11 and rows[3].startswith("  1g.24gb+me.all  65       1     3   1  {0,3,6,9}:3 ")
    assert len({r.index(" 3 ") for r in rows[:5]}) == 1  # the columns line up past the longest name
    assert cli(["mig-profiles", "--json"]) == 0
    (t,) = json.loads(capsys.readouterr().out)["gpus"]
    assert (t["source"], t["mem_slots"], t["compute_slices"]) == ("driver", 12, 4) and t["differences"] == []
    assert cli(["mig-profiles", "--model", "A100-SXM4-40GB"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [
        "built-in: NVIDIA A100-SXM4-40GB: the built-in table",
        "  8 memory slots, 7 compute slices",
        "  profile       ID  slices slots max  placements            GiB   SM  DEC/ENC/JPG/OFA/CE",
    ]
    # check-config --probe judges a home by this GPU's placements, as the driver lists them
    assert cli(["check-config", str(_config(tmp_path, "gpu0/1g.24gb@9")), "--probe"]) == 0
    capsys.readouterr()
    assert cli(["check-config", str(_config(tmp_path, "gpu0/1g.24gb@4")), "--probe"]) == 2
    err = capsys.readouterr()
    assert f"gpu0/1g.24gb@4: 1g.24gb on GPU model {KEY} may start only at [0, 3, 6, 9] (memory slot), not 4" in (
        err.out + err.err
    )
    (c,) = asyncio.run(check_mig(load_config(_config(tmp_path, "gpu0/1g.24gb@9")), NvidiaSmi(str(h.nvsmi), 10.0)))
    assert c.status == OK and c.cause == (
        f"{KEY}, driver emulated: MIG on, 11 profiles listed, as in the built-in table;"
        " 12 memory slots, 4 compute slices"
    )
