"""Property tests: mutated `nvidia-smi topo -m` captures give a matrix (whose topology builds) or a
ParseError naming the line; sysfs discovery over a fake tree with garbage attributes never raises."""

from __future__ import annotations

from fakes.fixture_paths import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sig_props import mutated

from controller.signals.base import ParseError
from controller.topology import discover_sysfs, node_labels, parse_topo_matrix, render_tree, topology_from_matrix

CAPTURES = [p.read_text() for p in sorted(FIXTURES.glob("nvidia-smi-topo-m_*.txt"))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), which=st.integers(0, len(CAPTURES) - 1))
def test_mutated_matrices(data: st.DataObject, which: int) -> None:
    text = data.draw(mutated(CAPTURES[which]))
    try:
        m = parse_topo_matrix(text, "cap")
    except ParseError as e:
        assert str(e).startswith("cap") and (e.line is None or 1 <= e.line <= text.count("\n") + 2)
        return
    topo = topology_from_matrix(m)
    render_tree(topo)
    node_labels(topo)
    assert m.to_json()["links"].keys() == set(m.devices)


ATTRS = ["class", "vendor", "device", "numa_node", "local_cpulist", "current_link_speed", "current_link_width"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(st.tuples(st.integers(0, 200), st.sampled_from(ATTRS), st.text(max_size=12)), max_size=10))
def test_sysfs_with_garbage_attributes(tmp_path_factory, garbage: list[tuple[int, str, str]]) -> None:
    from fakes.topo_sysfs import build_dgx_a100

    root = tmp_path_factory.mktemp("sys")
    build_dgx_a100(root)
    dirs = sorted(p.parent for p in root.glob("devices/pci*/**/vendor"))
    for i, attr, val in garbage:
        (dirs[i % len(dirs)] / attr).write_text(val, errors="surrogatepass")
    topo = discover_sysfs(str(root))
    render_tree(topo)
    node_labels(topo)
