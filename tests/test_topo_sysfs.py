"""sysfs discovery on fake trees mirroring the p4d.24xlarge and DGX A100 captures, and the
scheduler exports."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from fakes.fixture_paths import FIXTURES
from fakes.topo_sysfs import DGX_NUMA_CPUS, P4D_CPUS, FakeSysfs, build_dgx_a100, build_p4d

from controller.cli import main
from controller.signals.base import ParseError
from controller.topology import (
    RELATION_TIER,
    discover_sysfs,
    format_cpulist,
    hypernode_manifests,
    link_bps,
    load_topology,
    node_labels,
    parse_topo_matrix,
    run_topo_matrix,
    to_yaml,
)
from fsm.topology import NodeKind, Tier


def test_dgx_a100_sysfs_reproduces_the_captured_matrix(tmp_path: Path) -> None:
    build_dgx_a100(tmp_path)
    topo = discover_sysfs(str(tmp_path))
    m = parse_topo_matrix((FIXTURES / "nvidia-smi-topo-m_dgx-a100-8x-a100-sxm4_12x-mlx5_r470-era.txt").read_text())
    checked = 0
    for r in m.devices:
        for c in m.devices:
            rel = m.links[r][c]
            if rel in RELATION_TIER:
                assert topo.distance(r.replace("GPU", "gpu"), c.replace("GPU", "gpu")) == RELATION_TIER[rel], (r, c)
                checked += 1
    assert checked > 300
    for g, v in m.gpus.items():
        gid = g.replace("GPU", "gpu")
        assert topo.numa_of(gid) == v.numa
        assert format_cpulist(topo.cpus_of(gid)) == v.cpus == DGX_NUMA_CPUS[v.numa]


def test_dgx_a100_devices(tmp_path: Path) -> None:
    build_dgx_a100(tmp_path)
    topo = discover_sysfs(str(tmp_path))
    gpus = topo.gpus
    # PCI bus order, NVSwitches (NVIDIA bridges, class 0x0680) left out
    assert [(g.id, g.bdf) for g in gpus] == [
        (f"gpu{i}", f"0000:{b}:00.0") for i, b in enumerate(("07", "0f", "47", "4e", "87", "90", "b7", "bd"))
    ]
    assert all(g.model == "A100-SXM4-40GB" for g in gpus)
    # NVMe: aliases name and MAJ:MIN; data drive in GPU0's switch tree, OS drives elsewhere
    assert topo.node("259:0").id == "nvme2n1"
    assert topo.distance("gpu0", "nvme2n1") == Tier.SWITCH
    assert topo.distance("gpu0", "nvme0n1") == Tier.SYSTEM
    assert topo.distance("nvme0n1", "nvme1n1") == Tier.ROOT_COMPLEX
    # NICs by infiniband name, netdev as alias; virtual interfaces ignored
    assert topo.node("ibp12s0").id == "mlx5_0"
    assert not topo.has("docker0") and not topo.has("lo")
    assert topo.distance("mlx5_4", "mlx5_5") == Tier.SWITCH
    assert {n.id for n in topo.devices_near("gpu2", Tier.SWITCH)} == {"gpu3", "mlx5_2", "mlx5_3", "nvme3n1"}
    # links: Gen4 x16 = 16 GT/s * 16 lanes * 128/130 / 8
    assert topo.node("gpu0").link_bps == pytest.approx(16e9 * 16 * 128 / 130 / 8)
    assert topo.node("nvme2n1").link_bps == pytest.approx(8e9 * 4 * 128 / 130 / 8)


def test_p4d_sysfs(tmp_path: Path) -> None:
    build_p4d(tmp_path)
    topo = discover_sysfs(str(tmp_path))
    m = parse_topo_matrix((FIXTURES / "nvidia-smi-topo-m_aws-p4d.24xlarge_8x-a100-40gb.txt").read_text())
    assert [g.bdf for g in topo.gpus] == [
        "0000:10:1c.0", "0000:10:1d.0", "0000:20:1c.0", "0000:20:1d.0",
        "0000:90:1c.0", "0000:90:1d.0", "0000:a0:1c.0", "0000:a0:1d.0",
    ]  # fmt: skip
    for g, v in m.gpus.items():
        gid = g.replace("GPU", "gpu")
        assert topo.numa_of(gid) == v.numa
        assert format_cpulist(topo.cpus_of(gid)) == v.cpus == P4D_CPUS[v.numa]
    # each pair of GPUs shares its EFA NIC's host bridge; pairs on one socket share the NUMA node
    assert topo.distance("gpu0", "rdmap16s27") == Tier.ROOT_COMPLEX
    assert topo.distance("gpu0", "eth1") == Tier.ROOT_COMPLEX
    assert topo.distance("gpu0", "gpu2") == Tier.NUMA
    assert topo.distance("gpu0", "gpu4") == Tier.SYSTEM
    assert topo.distance("gpu4", "259:1") == Tier.NUMA
    assert topo.enclosing("gpu5", NodeKind.ROOT_COMPLEX) == "pci0000:90"


def test_empty_and_odd_sysfs(tmp_path: Path) -> None:
    topo = discover_sysfs(str(tmp_path / "nothing"))
    assert [n.id for n in topo.nodes] == ["host"]
    build_p4d(tmp_path)
    (tmp_path / "devices" / "pci0000:10" / "0000:10:1c.0" / "numa_node").write_text("garbage\n")
    (tmp_path / "devices" / "pci0000:10" / "0000:10:1c.0" / "current_link_speed").write_text("Unknown\n")
    (tmp_path / "devices" / "system" / "node" / "node1" / "cpulist").write_text("x-y\n")
    topo = discover_sysfs(str(tmp_path))  # no exception; unreadable values become None
    assert topo.node("gpu0").link_bps is None
    assert topo.cpus_of("gpu4") == tuple(range(24, 48)) + tuple(range(72, 96))  # from local_cpulist


def test_a_native_multipath_nvme_namespace_sits_under_its_controller(tmp_path: Path) -> None:
    """Found by the adversarial hunt. With native NVMe multipath (the kernel's default for a drive
    that may have several controllers, e.g. dual-port U.2) /sys/block holds the namespace's head,
    nvme1n1 -> devices/virtual/nvme-subsystem/nvme-subsys1/nvme1n1 (the disk diskstats and io.max
    name), and its hidden path nvme1c3n1 under the controller (the layout of a real sosreport). The
    head was left out as not on PCI and the hidden path was taken for the drive."""
    fs = FakeSysfs(tmp_path).numa(0, "0-15")
    sw = ["pci0000:00", "0000:00:01.0", "0000:01:00.0"]
    fs.gpu([*sw, "0000:02:00.0"], numa=0)
    fs.nvme([*sw, "0000:02:01.0"], "nvme3", {"nvme1c3n1": "0:0"}, numa=0)  # the hidden path
    head = tmp_path / "devices" / "virtual" / "nvme-subsystem" / "nvme-subsys1"
    (head / "nvme1n1").mkdir(parents=True)
    (head / "nvme1n1" / "dev").write_text("259:4\n")
    (tmp_path / "block" / "nvme1n1").symlink_to("../devices/virtual/nvme-subsystem/nvme-subsys1/nvme1n1")
    ctrl = tmp_path / "devices" / "pci0000:00" / "0000:00:01.0" / "0000:01:00.0" / "0000:02:01.0" / "nvme" / "nvme3"
    (head / "nvme3").symlink_to(os.path.relpath(ctrl, head))
    # NVMe over fabrics: a head whose controller is on no PCI bus of this host stays out
    fabrics = tmp_path / "devices" / "virtual" / "nvme-fabrics" / "ctl" / "nvme5" / "nvme5n1"
    fabrics.mkdir(parents=True)
    (fabrics / "dev").write_text("259:9\n")
    (tmp_path / "block" / "nvme5n1").symlink_to(os.path.relpath(fabrics, tmp_path / "block"))
    topo = discover_sysfs(str(tmp_path))
    assert topo.node("259:4").id == "nvme1n1" and topo.node("nvme1n1").bdf == "0000:02:01.0"
    assert topo.distance("gpu0", "nvme1n1") == Tier.SWITCH
    assert topo.node("nvme1n1").link_bps == pytest.approx(8e9 * 4 * 128 / 130 / 8)
    assert not topo.has("nvme1c3n1") and not topo.has("nvme5n1")


def test_link_bps() -> None:
    assert link_bps("2.5 GT/s PCIe", "1") == pytest.approx(2.5e9 * 0.8 / 8)
    assert link_bps("32.0 GT/s PCIe", "16") == pytest.approx(32e9 * 16 * 128 / 130 / 8)
    assert link_bps("Unknown", "16") is None and link_bps(None, "4") is None and link_bps("8 GT/s", "x") is None


def test_load_topology_fallbacks(tmp_path: Path) -> None:
    cap = FIXTURES / "nvidia-smi-topo-m_aws-p5.48xlarge_8x-h100_tabs-expanded.txt"
    t = load_topology("auto", str(tmp_path), runner=lambda: cap.read_text())
    assert len(t.gpus) == 8 and t.numa_of("gpu7") == 1
    t = load_topology("auto", str(tmp_path), topo_matrix_file=str(cap))
    assert len(t.gpus) == 8

    def broken() -> str:
        raise RuntimeError("nvidia-smi topo -m: exit 9")

    assert load_topology("auto", str(tmp_path), runner=broken).gpus == []
    with pytest.raises(RuntimeError):
        load_topology("topo-matrix", str(tmp_path), runner=broken)
    assert [n.id for n in load_topology("none").nodes] == ["host"]
    build_dgx_a100(tmp_path)
    assert len(load_topology("auto", str(tmp_path), runner=broken).gpus) == 8


def test_node_labels(tmp_path: Path) -> None:
    build_dgx_a100(tmp_path)
    labels = node_labels(discover_sysfs(str(tmp_path)), ["leaf-3", "spine-1"])
    assert labels["tailguard.io/gpu-count"] == "8"
    assert labels["tailguard.io/numa-count"] == "8"
    assert labels["tailguard.io/gpu0.numa"] == "3"
    assert labels["tailguard.io/gpu0.nics"] == "mlx5_0.mlx5_1"
    assert labels["tailguard.io/gpu0.switch"] == labels["tailguard.io/gpu1.switch"] == "0000-00-01.1"
    assert labels["tailguard.io/gpu0.switch"] != labels["tailguard.io/gpu2.switch"]
    assert labels["tailguard.io/gpus-per-switch"] == "2"
    assert labels["volcano.sh/hypernode"] == "leaf-3" and labels["volcano.sh/hypercluster"] == "spine-1"
    import re

    for k, v in labels.items():  # Kubernetes label syntax
        prefix, _, name = k.partition("/")
        assert re.fullmatch(r"[a-z0-9.-]+", prefix) and re.fullmatch(
            r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?", name
        )
        assert re.fullmatch(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?", v), v


def test_hypernode_manifests_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = hypernode_manifests("gpu-node-7", ["leaf0", "spine0"])
    assert docs[0]["apiVersion"] == "topology.volcano.sh/v1alpha1" and docs[0]["kind"] == "HyperNode"
    assert docs[0]["spec"] == {
        "tier": 1,
        "members": [{"type": "Node", "selector": {"exactMatch": {"name": "gpu-node-7"}}}],
    }
    assert docs[1]["spec"]["tier"] == 2
    assert docs[1]["spec"]["members"][0] == {"type": "HyperNode", "selector": {"exactMatch": {"name": "leaf0"}}}
    yaml = to_yaml(docs[0])
    assert 'spec:\n  tier: 1\n  members:\n    - type: "Node"\n      selector:\n' in yaml
    cap = FIXTURES / "nvidia-smi-topo-m_dgx-a100-8x-a100-sxm4_12x-mlx5_r470-era.txt"
    argv = ["topology", "--topo-matrix", str(cap), "--export", "hypernode", "--node-name", "n1", "--tier", "leaf0"]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["metadata"]["name"] == "leaf0"
    assert main(argv[:-2]) == 2
    assert "--tier" in capsys.readouterr().err
    assert main(["topology", "--topo-matrix", str(cap), "--export", "node-labels", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tailguard.io/gpu7.numa"] == "5"
    build_p4d(tmp_path)
    assert main(["topology", "--sys-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gpu0 (numa 0) -> root_complex: gpu1, rdmap16s27" in out
    assert main(["topology", "--sys-root", str(tmp_path), "--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)["nodes"]
    assert {n["id"] for n in nodes if n["kind"] == "gpu"} == {f"gpu{i}" for i in range(8)}


def _tool(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    p = bin_dir / "nvidia-smi"
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)


@pytest.mark.faults
def test_a_hung_topo_m_is_killed_with_its_children_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real nvidia-smi on PATH that hangs, with a child of its own: subprocess.run killed the tool
    # alone and left the child running past the daemon's start; its process group goes now.
    child = tmp_path / "child.pid"
    _tool(tmp_path / "bin", f"sleep 3600 &\necho $! > {child}\nexec sleep 3600\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"nvidia-smi topo -m: timed out after 0.5 s \(killed\)"):
        run_topo_matrix(0.5)
    assert time.monotonic() - t0 < 10.0
    pid = int(child.read_text())
    for _ in range(100):  # reaped by init once killed
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        raise AssertionError(f"the tool's child {pid} outlived it")
    assert load_topology("auto", str(tmp_path), runner=lambda: run_topo_matrix(0.5)).gpus == []  # sysfs's, none


@pytest.mark.faults
def test_topo_m_output_that_is_not_utf8_is_a_parse_error_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tool(tmp_path / "bin", "printf '\\t\\377GPU0\\tCPU Affinity\\nGPU0\\t X \\t0-7\\n'\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert "\ufffd" in run_topo_matrix(5.0)  # replaced, not raised (UnicodeDecodeError escaped before)
    with pytest.raises(ParseError, match="nvidia-smi topo -m"):
        load_topology("topo-matrix", str(tmp_path), runner=lambda: run_topo_matrix(5.0))
    assert load_topology("auto", str(tmp_path), runner=lambda: run_topo_matrix(5.0)).gpus == []
