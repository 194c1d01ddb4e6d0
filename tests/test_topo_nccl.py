"""NCCL topology XML (controller/topology_nccl.py) on AWS's p4d.24xlarge file, checked against the
p4d `nvidia-smi topo -m` capture, and its errors."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path

import pytest
from fakes.fixture_paths import FIXTURES

from controller.cli import main
from controller.signals.base import ParseError
from controller.topology import (
    RELATION_TIER,
    format_cpulist,
    link_bps,
    load_topology,
    node_labels,
    parse_topo_matrix,
    topology_from_matrix,
)
from controller.topology_nccl import looks_like_xml, parse_nccl_topo_xml
from fsm.topology import NodeKind, Tier

P4D_XML = FIXTURES / "nccl-topo_aws-p4d.24xlarge_aws-ofi-nccl.xml"
P4D_MATRIX = FIXTURES / "nvidia-smi-topo-m_aws-p4d.24xlarge_8x-a100-40gb.txt"


def p4d() -> str:
    return P4D_XML.read_text()


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def test_p4d_tree() -> None:
    t = parse_nccl_topo_xml(p4d(), str(P4D_XML))
    gpus = t.gpus
    assert [g.id for g in gpus] == [f"gpu{i}" for i in range(8)]
    assert [g.bdf for g in gpus[:3]] == ["0000:10:1c.0", "0000:10:1d.0", "0000:20:1c.0"]
    switches = t.of_kind(NodeKind.SWITCH)
    assert [s.id for s in switches] == [f"ffff:ff:0{i}.0" for i in range(1, 5)]
    for k, sw in enumerate(switches):  # 4 switch pairs, one EFA NIC beside each pair
        kids = {n.id for n in t.children(sw.id)}
        assert kids == {f"gpu{2 * k}", f"gpu{2 * k + 1}", f"nic{k}"}
        assert t.node(f"nic{k}").kind is NodeKind.NIC
    numas = t.of_kind(NodeKind.NUMA)
    assert [(n.id, n.numa) for n in numas] == [("numa0", 0), ("numa1", 1)]
    assert format_cpulist(t.cpus_of("gpu0")) == "0-23,48-71"
    assert format_cpulist(t.cpus_of("gpu7")) == "24-47,72-95"
    assert len(t.of_kind(NodeKind.ROOT_COMPLEX)) == 4  # one per CPU-attached tree
    assert t.of_kind(NodeKind.NVME) == []  # the file lists none
    bps = link_bps("8 GT/s", "16")
    assert bps == pytest.approx(8e9 * 16 * 128 / 130 / 8)
    assert all(n.link_bps == bps for n in (*gpus, *switches, *t.of_kind(NodeKind.NIC)))
    # every name the other paths use resolves: matrix GPU<i>, PCI bus id
    assert t.node("GPU5").id == "gpu5" and t.node("0000:90:1d.0").id == "gpu5"
    assert t.node("0000:a0:1b.0").id == "nic3"
    assert {n.id for n in t.devices_near("gpu2", Tier.SWITCH)} == {"gpu3", "nic1"}


def test_p4d_tiers_agree_with_the_matrix_capture() -> None:
    """The p4d matrix prints NV12 for every GPU pair: NVLink hides the PCIe relation, so the matrix
    only bounds the PCIe tier from above (same NUMA node / across sockets). The XML must agree on
    NUMA placement and CPUs, equal every PCIe relation the matrix does show, never be farther than
    the matrix-built topology, and be nearer only for pairs behind one switch."""
    m = parse_topo_matrix(P4D_MATRIX.read_text(), str(P4D_MATRIX))
    from_matrix = topology_from_matrix(m)
    from_xml = parse_nccl_topo_xml(p4d(), str(P4D_XML))
    assert sorted(g.id for g in from_xml.gpus) == sorted(g.id for g in from_matrix.gpus)
    for g in m.gpus:
        assert from_xml.numa_of(g) == from_matrix.numa_of(g) == m.gpus[g].numa
        assert from_xml.cpus_of(g) == from_matrix.cpus_of(g)
    nearer = []
    for a, b in combinations(sorted(m.gpus), 2):
        rel = m.links[a][b]
        x, y = from_xml.distance(a, b), from_matrix.distance(a, b)
        assert x is not None and y is not None
        if rel in RELATION_TIER:
            assert x == RELATION_TIER[rel], (a, b, rel)
        assert x <= y, (a, b, rel, x, y)
        if x != y:
            assert rel.startswith("NV") and x == Tier.SWITCH and y == Tier.NUMA, (a, b)
            nearer.append((a, b))
        elif from_xml.numa_of(a) != from_xml.numa_of(b):
            assert x == Tier.SYSTEM  # SYS in both
    # exactly the four switch pairs, which the matrix cannot show through NVLink
    assert nearer == [("GPU0", "GPU1"), ("GPU2", "GPU3"), ("GPU4", "GPU5"), ("GPU6", "GPU7")]


def test_p4d_labels_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    labels = node_labels(parse_nccl_topo_xml(p4d()))
    assert labels["tailguard.io/gpu-count"] == "8" and labels["tailguard.io/numa-count"] == "2"
    assert labels["tailguard.io/gpus-per-switch"] == "2"
    assert labels["tailguard.io/gpu4.nics"] == "nic2" and labels["tailguard.io/gpu4.numa"] == "1"
    for opt in ("--topo-matrix", "--nccl-xml"):
        assert main(["topology", opt, str(P4D_XML)]) == 0
        out = capsys.readouterr().out
        assert "gpu0 (numa 0) -> switch: nic0, gpu1; numa: nic1, gpu2, gpu3" in out
        assert "NVLink (from the matrix)" not in out
    assert main(["topology", "--nccl-xml", str(P4D_XML), "--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)["nodes"]
    assert sum(1 for n in nodes if n["kind"] == "gpu") == 8
    assert {n["cpus"] for n in nodes if n["kind"] == "numa"} == {"0-23,48-71", "24-47,72-95"}


def test_config_and_load_topology(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = load_topology("topo-matrix", str(tmp_path), topo_matrix_file=str(P4D_XML))
    assert len(t.gpus) == 8 and t.numa_of("gpu6") == 1
    t = load_topology("auto", str(tmp_path), topo_matrix_file=str(P4D_XML))  # sysfs shows no GPUs
    assert len(t.of_kind(NodeKind.SWITCH)) == 4
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[topology]\nsource = "topo-matrix"\ntopo_matrix_file = "{P4D_XML}"\n')
    assert main(["topology", "--config", str(cfg), "--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)["nodes"]
    assert sum(1 for n in nodes if n["kind"] == "nic") == 4


def test_looks_like_xml() -> None:
    assert looks_like_xml(p4d()) and looks_like_xml("\ufeff\n  <system/>")
    assert not looks_like_xml(P4D_MATRIX.read_text())
    assert not looks_like_xml("")


def test_general_shapes() -> None:
    """What NCCL's own dumps carry beyond the AWS file: <gpu>/<nic><net> children, nested
    bridges, NVMe, a NIC under <cpu> without PCI, numaid -1, affinity_offset, missing links."""
    text = """<?xml version="1.0"?>
<system version="1">
  <cpu numaid="-1" affinity="0000000f" affinity_offset="32" arch="x86_64">
    <pci busid="0000:00:01.0" class="0x060400" link_speed="16.0 GT/s PCIe" link_width="16">
      <pci busid="0000:01:00.0" class="0x060400" link_speed="16.0 GT/s PCIe" link_width="16">
        <pci busid="0000:02:00.0" class="0x030200" vendor="0x10de" device="0x20b0" link_speed="" link_width="0">
          <gpu dev="0" sm="80" rank="0" gdr="1"><nvlink target="0000:03:00.0" count="12" tclass="0x030200"/></gpu>
        </pci>
        <pci busid="0000:03:00.0" link_speed="Unknown" link_width="16"><gpu dev="1" sm="80" rank="1"/></pci>
      </pci>
      <pci busid="0000:04:00.0" class="0x020700" link_speed="16.0 GT/s PCIe" link_width="16">
        <nic><net name="mlx5_0" dev="0" speed="200000"/><net name="mlx5_1" dev="1"/></nic>
      </pci>
      <pci busid="0000:05:00.0" class="0x010802" link_speed="8.0 GT/s PCIe" link_width="4"/>
      <pci busid="0000:06:00.0" class="0x068000" link_speed="8.0 GT/s PCIe" link_width="4"/>
    </pci>
    <nic><net name="ib9" dev="9"/></nic>
  </cpu>
</system>"""
    t = parse_nccl_topo_xml(text, "dump.xml")
    assert [g.id for g in t.gpus] == ["gpu0", "gpu1"]
    assert t.node("gpu0").model is not None and t.node("gpu0").link_bps is None
    assert t.node("gpu1").link_bps is None
    assert t.node("mlx5_0").kind is NodeKind.NIC and t.resolve("mlx5_1") == "mlx5_0"
    assert t.node("nvme0").link_bps == pytest.approx(link_bps("8.0 GT/s PCIe", "4"))
    assert t.node("ib9").parent == "numa-group0" and t.node("ib9").bdf is None
    assert not t.has("0000:06:00.0")  # an NVSwitch is not a device tailguard tracks
    assert t.cpus_of("gpu0") == (32, 33, 34, 35)
    assert t.numa_of("gpu0") is None
    assert t.distance("gpu0", "gpu1") == Tier.SWITCH and t.distance("gpu0", "mlx5_0") == Tier.SWITCH
    assert t.enclosing("gpu0", NodeKind.SWITCH) == "0000:01:00.0"  # the nearer of the nested bridges


# (replace in the p4d file, expected line (None: the file as a whole), words in the message)
BAD = [
    ('busid="0000:20:1d.0" ', "", "<!-- GPU 3 -->", "<pci> has no busid= attribute"),
    (
        'class="0x030200" link_speed="8 GT/s" link_width="16"/> <!-- GPU 5',
        'class="0x030200" link_speed="8 GT/s" '
        'link_width="16"><pci busid="0000:90:1e.0" class="0x030200"/></pci> <!-- GPU 5',
        "<!-- GPU 5",
        "<pci> nested inside gpu 0000:90:1d.0",
    ),
    ('<cpu numaid="1"', "<cpu", 'affinity="ffffff00', "<cpu> has no numaid= attribute"),
    ('affinity="ffffff00,0000ffff,ff000000"', 'affinity="0-23"', 'affinity="0-23"', "expected hex words"),
    ("<!-- NIC 3 -->", "<foo/>", "<foo/>", "unexpected <foo> inside <pci busid=ffff:ff:04.0>"),
    ("0000:a0:1c.0", "0000:10:1c.0", "<!-- GPU 6", "<pci busid=0000:10:1c.0> appears twice"),
    (
        'class="0x020000" link_speed="8 GT/s" link_width="16"/> <!-- NIC 0',
        'class="0x020000" link_speed="fast" link_width="16"/> <!-- NIC 0',
        "<!-- NIC 0",
        "cannot read link_speed='fast'",
    ),
    (
        'busid="0000:90:1b.0" class="0x020000"',
        'busid="0000:90:1b.0" class="network"',
        "<!-- NIC 2",
        "expected 0x followed by 6 hex digits",
    ),
    ('busid="ffff:ff:03.0"', 'busid="03.0"', "<!-- Switch 2 begins", "expected DDDD:BB:DD.F"),
    ("system", "topology", "<topology", "root element is <topology>, expected <system>"),
    ("</pci> <!-- Switch 3 ends -->", "", "</cpu>\n</system>", "not well-formed XML: mismatched tag"),
    ('class="0x030200"', 'class="0x030000"', None, None),  # still GPUs (0x03xxxx): accepted
]


def test_a_net_name_that_is_a_bus_id_does_not_take_it() -> None:
    # NCCL dumps name nets by their driver's name; one named after a PCI bus id (a hand edit, a
    # driver quirk) took it, and the GPU's bus id then resolved to the NIC.
    text = """<system version="1"><cpu numaid="0" affinity="0000000f">
  <pci busid="0000:01:00.0" class="0x030200" link_speed="16.0 GT/s PCIe" link_width="16"/>
  <pci busid="0000:02:00.0" class="0x020000" link_speed="16.0 GT/s PCIe" link_width="16">
    <nic><net name="0000:01:00.0" dev="0"/><net name="mlx5_0" dev="1"/></nic>
  </pci>
</cpu></system>"""
    t = parse_nccl_topo_xml(text, "dump.xml")
    assert t.resolve("0000:01:00.0") == "gpu0"
    assert t.node("mlx5_0").kind is NodeKind.NIC and t.resolve("0000:02:00.0") == "mlx5_0"


@pytest.mark.parametrize(("old", "new", "at", "words"), BAD, ids=lambda v: str(v)[:24])
def test_bad_xml_names_file_and_line(
    old: str, new: str, at: str | None, words: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert old in p4d()
    text = p4d().replace(old, new)
    bad = tmp_path / "bad.xml"
    bad.write_text(text)
    if words is None:
        assert len(parse_nccl_topo_xml(text).gpus) == 8
        return
    with pytest.raises(ParseError) as e:
        parse_nccl_topo_xml(text, str(bad))
    assert words in str(e.value)
    assert at is not None
    assert e.value.line == line_of(text, at)
    assert main(["topology", "--topo-matrix", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: line {e.value.line}: " in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty input"),
        ("GPU0\tGPU1\n", "not well-formed XML"),  # a matrix given to --nccl-xml
        ("<system></system>", "no GPU in the file"),
        ("<system><cpu numaid='0'><pci busid='0000:01:00.0' class='0x020000'/></cpu></system>", "no GPU"),
        (
            '<?xml version="1.0"?><!DOCTYPE s [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><system>&b;</system>',
            "DOCTYPE / ENTITY declarations are not accepted",
        ),
        ("<system><cpu numaid='0'/><cpu numaid='0'/></system>", "<cpu numaid=0> appears twice"),
        ("<system><cpu numaid='zero'/></system>", "not a number"),
        ("<system><cpu numaid='0'><gpu/></cpu></system>", "unexpected <gpu> inside <cpu numaid=0>"),
        ("<system><cpu numaid='0'><pci busid='0000:01:00.0'/></cpu></system>", "has no class= attribute"),
        (
            "<system><cpu numaid='0'><pci busid='0000:01:00.0'><gpu/><nic/></pci></cpu></system>",
            "both a <gpu> and a <nic>",
        ),
        ("<system><cpu numaid='0'><nic><port/></nic></cpu></system>", "unexpected <port> inside <nic>"),
    ],
)
def test_bad_input_clear_errors(text: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ParseError, match=re.escape(words)):
        parse_nccl_topo_xml(text, "x.xml")
    f = tmp_path / "x.xml"
    f.write_text(text)
    assert main(["topology", "--nccl-xml", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tailguard topology: {f}") and "Traceback" not in err


def test_unreadable_and_both_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "--nccl-xml", str(tmp_path / "nope.xml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["topology", "--nccl-xml", str(P4D_XML), "--topo-matrix", str(P4D_MATRIX)])
    assert e.value.code == 2


def test_mangled_files_give_parse_errors_only() -> None:
    """Random edits of the real file: a Topology or a ParseError, never another exception."""
    import random

    rnd = random.Random(7)
    src = p4d()
    for _ in range(300):
        s = list(src)
        for _ in range(rnd.randint(1, 4)):
            j = rnd.randrange(len(s))
            if rnd.random() < 0.5:
                del s[j]
            else:
                s.insert(j, rnd.choice('<>/"=x -0\n&;'))
        try:
            parse_nccl_topo_xml("".join(s), "m.xml")
        except ParseError as e:
            assert str(e).startswith("m.xml")
