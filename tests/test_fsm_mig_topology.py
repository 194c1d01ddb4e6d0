"""MIG profile tables, layout rules and the topology model."""

from __future__ import annotations

import itertools
import re

import pytest

from fsm.mig import CLASSES, MODELS, Slot, free_starts, is_valid, layout_problems, model_by_name
from fsm.observation import InstanceRef
from fsm.topology import Node, NodeKind, Tier, Topology, TopologyBuilder

A100 = model_by_name("A100-SXM4-40GB")


def test_lgip_ids_and_order_match_the_captures():
    # -lgip row order is 19, 20, 15, 14, 9, 5, 0 (docs/mig-profiles.md section 1)
    assert [c.lgip_id for c in CLASSES] == [19, 20, 15, 14, 9, 5, 0]
    assert [p.name for p in A100.profiles] == [
        "1g.5gb",
        "1g.5gb+me",
        "1g.10gb",
        "2g.10gb",
        "3g.20gb",
        "4g.20gb",
        "7g.40gb",
    ]
    assert A100.profile(9).name == "3g.20gb"
    assert A100.profile("MIG 3g.20gb").lgip_id == 9
    assert A100.profile("14").name == "2g.10gb"
    assert model_by_name("NVIDIA H100 80GB HBM3").profile("7g.80gb").sm == 132
    assert model_by_name("A100-SXM4-80GB").profile(19).name == "1g.10gb"
    with pytest.raises(KeyError):
        A100.profile("1g.10gb+me")


@pytest.mark.parametrize(
    "layout,ok",
    [
        (["3g.20gb@4", "4g.20gb@0"], True),  # 4g+3g is allowed since R510
        (["3g.20gb@0", "3g.20gb@4"], True),
        (["2g.10gb@6"], False),  # 2g never starts at 6
        (["1g.5gb@7"], False),  # 1g never uses slot 7
        (["3g.20gb@2"], False),
        (["7g.40gb@0", "1g.5gb@0"], False),  # overlap
        (["1g.5gb+me@0", "1g.5gb+me@1"], False),  # +me at most once
        ([f"1g.5gb@{i}" for i in range(7)], True),
        (["1g.10gb@6", "3g.20gb@0"], True),  # slot 7 is used by 1g(2/8)@6
    ],
)
def test_layout_validity(layout, ok):
    slots = [Slot.parse(s) for s in layout]
    assert is_valid(A100, slots) is ok, layout_problems(A100, slots)


@pytest.mark.parametrize(
    "profile",
    ["14", "../../x", "3G.20GB", "3g.20gb ", "\uff13g.20gb", "1c.3g.20gb", "x" * 5000],
    ids=["lgip-id", "path", "upper-case", "trailing-space", "full-width-digit", "compute-instance", "5000-characters"],
)
def test_a_slot_or_instance_whose_profile_is_no_profile_name_is_refused(profile: str) -> None:
    """Were read as written: config, the journal and scenarios carried a slot no tool prints, which
    no layout read back ever matched. The error names the text."""
    for parse, text in ((Slot.parse, f"{profile}@0"), (InstanceRef.parse, f"gpu0/{profile}@0")):
        with pytest.raises(ValueError, match=re.escape(f"bad MIG slot {f'{profile}@0'!r}: PROFILE is no MIG")):
            parse(text)
    assert InstanceRef.parse("gpu0/1g.10gb+me@6") == InstanceRef("gpu0", "1g.10gb+me", 6)
    assert Slot.parse("1g.24gb-me@0") == Slot(0, "1g.24gb-me")


def _maximal_layouts():
    """Enumerate the maximal layouts of the 1g/2g/3g/4g/7g profiles (docs/mig-profiles.md section 3)."""
    names = ["1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"]
    cands = [Slot(s, n) for n in names for s in A100.profile(n).placements]
    valid = set()
    for r in range(1, 8):
        for combo in itertools.combinations(cands, r):
            if is_valid(A100, combo):
                valid.add(tuple(sorted(combo)))
    return [v for v in valid if not any(is_valid(A100, [*v, c]) for c in cands if c not in v)]


def test_nineteen_maximal_layouts_as_documented():
    assert len(_maximal_layouts()) == 19


def test_free_starts_follow_the_placement_sets():
    assert free_starts(A100, [], "3g.20gb") == [0, 4]
    assert free_starts(A100, [Slot(6, "1g.5gb")], "3g.20gb") == [0]
    assert free_starts(A100, [Slot(0, "4g.20gb")], "2g.10gb") == [4]
    assert free_starts(A100, [Slot(0, "7g.40gb")], "1g.5gb") == []


def test_every_model_has_the_seven_classes_but_the_r460_a100_pcie():
    for m in MODELS.values():
        if m.key == "RTX-PRO-6000-SE":  # a geometry of its own: 12 slots, 4 slices, 11 profiles
            assert (len(m.profiles), m.mem_slots, m.compute_slices) == (11, 12, 4)
            assert [p.slices for p in m.ladder()] == [1, 2, 4]
            continue
        # The only A100-PCIE-40GB -lgip we hold (R460) lists five profiles: no 1g.10gb, no +me.
        assert len(m.profiles) == (5 if m.key == "A100-PCIE-40GB" else 7)
        assert (m.mem_slots, m.compute_slices) == (8, 7)
        assert [p.slices for p in m.ladder()] == [1, 2, 3, 4, 7]


def _topo() -> Topology:
    return (
        TopologyBuilder()
        .numa(0, cpus=range(0, 4))
        .numa(1, cpus=range(4, 8))
        .root_complex("rc0", 0)
        .root_complex("rc1", 0)
        .root_complex("rc2", 1)
        .switch("sw0", "rc0")
        .switch("sw1", "rc0")
        .gpu("gpu0", "sw0")
        .gpu("gpu1", "sw0")
        .gpu("gpu2", "sw1")
        .gpu("gpu3", "rc1")
        .gpu("gpu4", "rc2")
        .nvme("nvme0", "sw0", aliases=("nvme0n1", "259:0"))
        .build()
    )


def test_distance_is_the_tier_of_the_lowest_common_ancestor():
    t = _topo()
    assert t.distance("gpu0", "gpu0") is Tier.SELF
    assert t.distance("gpu0", "gpu1") is Tier.SWITCH
    assert t.distance("gpu0", "nvme0n1") is Tier.SWITCH  # by alias
    assert t.distance("gpu0", "gpu2") is Tier.ROOT_COMPLEX
    assert t.distance("gpu0", "gpu3") is Tier.NUMA
    assert t.distance("gpu0", "gpu4") is Tier.SYSTEM
    assert t.distance("gpu0", "nope") is None
    assert t.numa_of("gpu4") == 1
    assert t.cpus_of("gpu0") == (0, 1, 2, 3)
    assert t.enclosing("gpu2", NodeKind.ROOT_COMPLEX) == "rc0"
    assert [n.id for n in t.devices_near("gpu0", Tier.SWITCH)] == ["gpu1", "nvme0"]


def test_topology_rejects_bad_trees():
    with pytest.raises(ValueError, match="unknown parent"):
        Topology((Node("a", NodeKind.GPU, "missing"),))
    with pytest.raises(ValueError, match="duplicate"):
        Topology((Node("a", NodeKind.HOST, None), Node("a", NodeKind.GPU, "a")))
    with pytest.raises(ValueError, match="cycle"):
        Topology((Node("a", NodeKind.SWITCH, "b"), Node("b", NodeKind.SWITCH, "a")))
