"""Replay: max-min sharing, the vectorised queue, the trace format, scenario errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm.examples import example_spec, synthetic_stream
from fsm.observation import Observation
from replay.fabric import Flow, link_load, max_min
from replay.queueing import lindley, lindley_loop
from replay.scenario import SCENARIO_DIR, ScenarioError, load_scenario, parse_scenario
from replay.trace import TraceError, TraceWriter, read_trace

LINKS = ["a", "b", "c", "d"]


@st.composite
def networks(draw: st.DrawFn) -> tuple[list[Flow], dict[str, float]]:
    cap = {link: draw(st.floats(1.0, 100.0)) for link in LINKS}
    flows = []
    for i in range(draw(st.integers(1, 6))):
        links = draw(st.dictionaries(st.sampled_from(LINKS), st.integers(1, 3), min_size=1, max_size=4))
        c = draw(st.one_of(st.just(float("inf")), st.just(0.0), st.floats(1e-3, 80.0)))
        w = draw(st.floats(0.1, 4.0))
        flows.append(Flow(f"f{i}", links, c, w))
    return flows, cap


@settings(max_examples=300, deadline=None)
@given(networks())
def test_max_min_capacity_caps_and_work_conservation(net: tuple[list[Flow], dict[str, float]]) -> None:
    flows, cap = net
    rates = max_min(flows, cap)
    load = link_load(flows, rates)
    for link, used in load.items():
        assert used <= cap[link] * (1 + 1e-6), f"{link} over capacity"
    for f in flows:
        assert rates[f.name] <= f.cap * (1 + 1e-6) + 1e-9, "cap exceeded"
        # Work-conserving: a flow below its cap crosses a full link.
        if rates[f.name] < f.cap * (1 - 1e-6):
            assert any(load.get(link, 0.0) >= cap[link] * (1 - 1e-6) for link in f.links), f"{f.name} not bottlenecked"


def test_max_min_weighted_shares() -> None:
    r = max_min([Flow("x", {"l": 1}, weight=1.0), Flow("y", {"l": 1}, weight=3.0)], {"l": 40.0})
    assert r == pytest.approx({"x": 10.0, "y": 30.0})
    # A capped flow leaves the rest to the other (max-min, not equal split).
    r = max_min([Flow("x", {"l": 1}, cap=5.0), Flow("y", {"l": 1})], {"l": 40.0})
    assert r == pytest.approx({"x": 5.0, "y": 35.0})
    # Crossing a link twice costs twice.
    r = max_min([Flow("etl", {"l": 2}), Flow("t1", {"l": 1})], {"l": 30.0})
    assert r == pytest.approx({"etl": 10.0, "t1": 10.0})


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300), st.floats(0.0, 5.0), st.integers(0, 2**31))
def test_vectorised_lindley_equals_loop(n: int, free_at: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = np.sort(rng.uniform(0.0, 3.0, n))
    svc = rng.exponential(0.02, n)
    a, fa = lindley(arr, svc, free_at)
    b, fb = lindley_loop(arr, svc, free_at)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert fa == pytest.approx(fb)


def test_trace_roundtrip_rotation_and_torn_line(tmp_path: Path) -> None:
    spec = example_spec()
    obs = list(synthetic_stream(n=60))
    p = tmp_path / "t.jsonl"
    with TraceWriter(p, "host-a", spec, max_bytes=60_000) as w:
        for o in obs:
            w.write(o)
        w.write_record({"kind": "decision", "t": 1.0, "note": "skipped by readers"})
    rotated = sorted(tmp_path.iterdir())
    assert len(rotated) >= 2
    got: list[Observation] = []
    for path in [*sorted(q for q in rotated if q.name != "t.jsonl")[::-1], p]:
        header, it = read_trace(path)
        assert header.spec == spec and header.host == "host-a"
        got.extend(it)
    assert got == obs
    # A torn last line (crash mid-write) is skipped and reported with its number.
    before = list(read_trace(p)[1])
    assert before and before == obs[-len(before) :]
    n_lines = len(p.read_text().splitlines())
    with open(p, "a", encoding="utf-8") as fh:
        fh.write('{"kind": "obs", "obs": {"t": 12')
    cut: list[int] = []
    assert list(read_trace(p, cut.append)[1]) == before
    assert cut == [n_lines + 1]
    # A restarted writer starts on a fresh line after it: the cut line is mid-file now, still skipped.
    with TraceWriter(p, "host-a", spec, max_bytes=10**9) as w:
        w.write(obs[0])
    cut.clear()
    assert list(read_trace(p, cut.append)[1]) == [*before, obs[0]]
    assert cut == [n_lines + 1]
    # A line that is not cut short but wrong stays an error.
    with open(p, "a", encoding="utf-8") as fh:
        fh.write('{"kind": "obs"]\n')
    with pytest.raises(TraceError, match=r"t\.jsonl:\d+: not JSON"):
        list(read_trace(p)[1])


def test_trace_bad_line_names_file_and_line(tmp_path: Path) -> None:
    spec = example_spec()
    p = tmp_path / "t.jsonl"
    with TraceWriter(p, "h", spec) as w:
        for o in list(synthetic_stream(n=3)):
            w.write(o)
    lines = p.read_text().splitlines(keepends=True)
    lines.insert(2, "this is not json\n")
    p.write_text("".join(lines))
    _, it = read_trace(p)
    with pytest.raises(TraceError, match=r"t\.jsonl:3: not JSON"):
        list(it)
    lines[2] = json.dumps({"kind": "obs", "obs": {"t": "soon"}}) + "\n"
    p.write_text("".join(lines))
    with pytest.raises(TraceError, match=r"t\.jsonl:3: bad observation: obs\.t"):
        list(read_trace(p)[1])
    p.write_text('{"kind": "header", "schema": "tailguard.trace/9"}\n')
    with pytest.raises(TraceError, match=r"t\.jsonl:1: unsupported schema"):
        read_trace(p)


def test_trace_line_with_a_key_twice_names_file_line_and_key(tmp_path: Path) -> None:
    """Found by fuzzing: the last of the two values was replayed. Refused whole, it has no column."""
    p = tmp_path / "t.jsonl"
    with TraceWriter(p, "h", example_spec()) as w:
        for o in list(synthetic_stream(n=3)):
            w.write(o)
    lines = p.read_text().splitlines(keepends=True)
    assert lines[2].startswith('{"kind":"obs",')
    lines[2] = '{"kind":"obs",' + lines[2][1:]
    p.write_text("".join(lines))
    with pytest.raises(TraceError, match=r"t\.jsonl:3: not JSON: key 'kind' given twice in one object$"):
        list(read_trace(p)[1])
    assert lines[0].startswith("{")
    p.write_text('{"host":"x",' + lines[0][1:])
    with pytest.raises(TraceError, match=r"t\.jsonl:1: header is not JSON: key 'host' given twice in one object$"):
        read_trace(p)


def _scenario_text() -> str:
    return (SCENARIO_DIR / "paper-p4d.toml").read_text()


def test_bundled_scenarios_load() -> None:
    for name in ("paper-p4d", "vllm-ttft"):
        s = load_scenario(name)
        assert s.hosts and s.name == name


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        (
            'layout = ["7g.40gb@0"]',
            'layout = ["1g.20gb@0"]',
            r"nodes\[\d+\]\(gpu1\)\.layout\[0\]: GPU model A100-SXM4-40GB has no MIG profile '1g.20gb'",
        ),
        (
            'layout = ["7g.40gb@0"]',
            'layout = ["3g.20gb@2"]',
            r"\(gpu1\)\.layout: 3g.20gb@2: 3g.20gb may start only at \[0, 4\]",
        ),
        (
            'instance = "gpu0/1g.5gb@0"',
            'instance = "gpu0/2g.10gb@0"',
            r"tenants\[0\]\(t1\)\.instance: 2g.10gb@0 is not in gpu0's layout",
        ),
        ("rate = 85.0", "rate = -1", r"tenants\[0\]\(t1\)\.requests\.rate: Input should be greater than 0"),
        ("slo_ms = 15.0", "slo_ms = 15.0\nbogus = 1", r"tenants\[0\]\(t1\)\.bogus: unknown key"),
        (
            '{ path = ["nvme0", "cpu"] }',
            '{ path = ["nvme99", "cpu"] }',
            r"\(t2\)\.flows\[0\]\.path: unknown device 'nvme99'",
        ),
        ('model = "A100-SXM4-40GB"', 'model = "A100-SXM4-41GB"', r"\(gpu0\)\.model: unknown GPU model"),
        ("y_windows = 3", "y_windowz = 3", r"policy: unknown policy key\(s\) y_windowz"),
    ],
)
def test_bad_scenarios_name_file_and_key(old: str, new: str, expect: str) -> None:
    text = _scenario_text()
    assert old in text
    with pytest.raises(ScenarioError, match=r"(?s)bad\.toml: .*" + expect):
        parse_scenario(text.replace(old, new, 1), "bad.toml")


def test_missing_scenario_and_toml_syntax() -> None:
    with pytest.raises(ScenarioError, match="no such scenario"):
        load_scenario("no-such-scenario")
    with pytest.raises(ScenarioError, match=r"x\.toml: TOML syntax"):
        parse_scenario("[scenario\n", "x.toml")
