"""`nvidia-smi topo -m` parsing on every capture in the fixtures, the CLI's JSON shape, and the
topology built from a matrix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes.fixture_paths import FIXTURES

from controller.cli import main
from controller.signals.base import ParseError
from controller.topology import (
    RELATION_TIER,
    format_cpulist,
    parse_cpulist,
    parse_topo_matrix,
    topology_from_matrix,
)
from fsm.topology import NodeKind, Tier

CAPTURES = sorted(FIXTURES.glob("nvidia-smi-topo-m_*.txt"))
# every topology capture `--topo-matrix` takes: the matrices and NCCL topology XML files
TOPOLOGY_CAPTURES = sorted([*CAPTURES, *FIXTURES.glob("nccl-topo_*.xml")])


def fx(part: str) -> Path:
    (p,) = [c for c in CAPTURES if part in c.name]
    return p


def test_every_capture_found() -> None:
    assert len(CAPTURES) == 7
    assert len(TOPOLOGY_CAPTURES) == 8


@pytest.mark.parametrize("path", TOPOLOGY_CAPTURES, ids=lambda p: p.name[:60])
@pytest.mark.parametrize("extra", [[], ["--json"], ["--export", "node-labels"]], ids=["tree", "json", "labels"])
def test_cli_exit_0_on_every_topology_capture(path: Path, extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "--topo-matrix", str(path), *extra]) == 0
    captured = capsys.readouterr()
    assert captured.out and "Traceback" not in captured.err


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name[18:60])
def test_cli_json_on_every_capture(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "--topo-matrix", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"gpus", "links", "nics"}
    header = path.read_text().splitlines()[0]
    for g, v in out["gpus"].items():
        assert g.startswith("GPU") and g in header
        assert set(v) == {"numa", "cpus"}
        assert v["numa"] is None or isinstance(v["numa"], int)
        assert v["cpus"] is None or parse_cpulist(v["cpus"])
    for row, cols in out["links"].items():
        assert cols[row] == "X"
        assert set(cols) == set(out["links"])  # square: every row has every column
        for col, rel in cols.items():
            assert out["links"][col][row] == rel
    for name, dev in out["nics"].items():
        assert name in out["links"] and dev.startswith("mlx5_")


def test_violet_h100_ansi_header_and_nic_legend(capsys: pytest.CaptureFixture[str]) -> None:
    path = fx("violet")
    assert "\x1b[4m" in path.read_text()  # the quirk is really in the capture
    main(["topology", "--topo-matrix", str(path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["gpus"]["GPU0"] == {"numa": 0, "cpus": "0-55,112-167"}
    assert out["gpus"]["GPU7"] == {"numa": 1, "cpus": "56-111,168-223"}
    assert out["links"]["GPU0"]["GPU1"] == "NV18"
    assert out["links"]["GPU0"]["NIC0"] == "PIX"
    assert out["links"]["GPU0"]["NIC1"] == "PXB"
    assert out["links"]["NIC10"]["NIC9"] == "PIX"
    assert out["nics"]["NIC0"] == "mlx5_0"
    assert out["nics"]["NIC9"] == "mlx5_10"  # the legend skips mlx5_9: names as printed
    assert len(out["nics"]) == 11


def test_dgx_a100_no_legend_columns_are_nic_names(capsys: pytest.CaptureFixture[str]) -> None:
    main(["topology", "--topo-matrix", str(fx("dgx-a100")), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["gpus"]["GPU0"] == {"numa": 3, "cpus": "48-63,176-191"}
    assert out["gpus"]["GPU4"] == {"numa": 7, "cpus": "112-127,240-255"}
    assert out["links"]["GPU0"]["mlx5_0"] == "PXB"
    assert out["links"]["mlx5_4"]["mlx5_5"] == "PIX"
    assert out["nics"] == {f"mlx5_{i}": f"mlx5_{i}" for i in range(12)}


def test_tabs_expanded_and_na_gpu_numa(capsys: pytest.CaptureFixture[str]) -> None:
    main(["topology", "--topo-matrix", str(fx("hpe-dl380a")), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "gpus": {"GPU0": {"numa": 1, "cpus": "32-63,96-127"}, "GPU1": {"numa": 1, "cpus": "32-63,96-127"}},
        "links": {"GPU0": {"GPU0": "X", "GPU1": "NV12"}, "GPU1": {"GPU0": "NV12", "GPU1": "X"}},
        "nics": {},
    }


def test_p4d_and_princeton(capsys: pytest.CaptureFixture[str]) -> None:
    main(["topology", "--topo-matrix", str(fx("p4d")), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["gpus"]["GPU3"] == {"numa": 0, "cpus": "0-23,48-71"}
    assert out["gpus"]["GPU4"] == {"numa": 1, "cpus": "24-47,72-95"}
    assert out["nics"] == {}
    main(["topology", "--topo-matrix", str(fx("princeton")), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["links"]["GPU0"]["mlx5_0"] == "NODE" and out["links"]["GPU1"]["mlx5_0"] == "SYS"
    assert out["nics"] == {"mlx5_0": "mlx5_0", "mlx5_1": "mlx5_1"}


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name[18:60])
def test_topology_from_matrix_reproduces_every_pcie_relation(path: Path) -> None:
    m = parse_topo_matrix(path.read_text(), str(path))
    topo = topology_from_matrix(m)
    for r in m.devices:
        for c in m.devices:
            rel = m.links[r][c]
            if rel in RELATION_TIER:
                assert topo.distance(r, c) == RELATION_TIER[rel], (r, c, rel)
    for g, v in m.gpus.items():
        assert topo.numa_of(g) == v.numa
        if v.cpus:
            assert format_cpulist(topo.cpus_of(g)) == v.cpus


def test_matrix_topology_names() -> None:
    topo = topology_from_matrix(parse_topo_matrix(fx("violet").read_text()))
    assert topo.node("GPU3").id == "gpu3"
    assert topo.node("NIC0").id == "mlx5_0" and topo.node("mlx5_0").kind is NodeKind.NIC
    near = {n.id for n in topo.devices_near("gpu0", Tier.SWITCH)}
    # GPU0/GPU1 print NV18 (NVLink hides their PCIe relation) but both sit under NIC0/NIC1's switch
    assert near == {"gpu1", "mlx5_0", "mlx5_1"}


def test_cli_readable_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "--topo-matrix", str(fx("dgx-a100"))]) == 0
    out = capsys.readouterr().out
    assert "gpu0 (numa 3) -> switch: gpu1, mlx5_0, mlx5_1" in out
    assert "  GPU0: GPU1 (NV12), GPU2 (NV12)," in out  # NVLink peers, as the matrix prints them


def test_cli_with_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[topology]\nsource = "topo-matrix"\ntopo_matrix_file = "{fx("p5.48xlarge")}"\n')
    assert main(["topology", "--config", str(cfg), "--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)["nodes"]
    assert sum(1 for n in nodes if n["kind"] == "gpu") == 8
    cfg.write_text("[topology]\nsource = 3\n")
    assert main(["topology", "--config", str(cfg)]) == 2
    assert "topology.source" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("mutate", "line", "words"),
    [
        (lambda t: "\n".join(t.splitlines()[:5]), 5, "no row for GPU4"),
        (lambda t: t.replace("GPU3\tNV12\tNV12\tNV12", "GPU3\tNV12\tNV12\tQQ", 1), 5, "unknown relation 'QQ'"),
        (lambda t: t.replace("0-23,48-71\t0", "0-23,48-71\tzero", 1), 2, "NUMA Affinity"),
        (lambda t: t.replace("GPU2\t", "GPU9\t", 1), 4, "not a column"),
    ],
)
def test_bad_matrix_names_the_line(mutate, line: int, words: str, capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    text = mutate(fx("p4d").read_text())
    with pytest.raises(ParseError) as e:
        parse_topo_matrix(text, "cap.txt")
    assert e.value.line == line and words in str(e.value)
    bad = tmp_path / "bad.txt"
    bad.write_text(text)
    assert main(["topology", "--topo-matrix", str(bad), "--json"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: line {line}:" in err and "Traceback" not in err


def test_missing_file_and_empty(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "--topo-matrix", str(tmp_path / "nope.txt"), "--json"]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(ParseError, match="empty input"):
        parse_topo_matrix("\n\n")


def test_cpulist_roundtrip() -> None:
    assert parse_cpulist("0-2,5,7-8") == (0, 1, 2, 5, 7, 8)
    assert format_cpulist((8, 7, 5, 2, 1, 0)) == "0-2,5,7-8"
    with pytest.raises(ValueError):
        parse_cpulist("3-1")
