"""Property tests: mutated real inputs an operator brings or a host's tools print give a result or the
module's own error naming where; never another exception. Request traces (Azure, BurstGPT,
Mooncake: replay/request_traces.py) raise a ValueError naming the file and line, and never in
Python's words for an internal slip ("index out of range"); nvidia-smi's MIG tables and messages
(actuators/nvsmi.py, the captures in tests/fixtures) raise an NvsmiError."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fakes.fixture_paths import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_replay_request_traces import AZURE, BURSTGPT, MOONCAKE
from test_sig_props import mutated

from actuators.nvsmi import NvsmiError, parse_change, parse_lci, parse_lgi, parse_lgip, parse_lgipp, parse_list
from replay.request_traces import read_request_trace

TRACES = [("a.csv", AZURE * 3), ("b.csv", BURSTGPT), ("m.jsonl", MOONCAKE)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), which=st.integers(0, len(TRACES) - 1))
def test_mutated_request_traces_read_or_name_the_line(tmp_path: Path, data: st.DataObject, which: int) -> None:
    name, text = TRACES[which]
    path = tmp_path / name
    path.write_text(data.draw(mutated(text)), encoding="utf-8", errors="surrogatepass")
    try:
        t, tok, gen = read_request_trace(str(path))
    except ValueError as e:
        msg = str(e)
        assert msg.startswith(str(path)), msg
        assert "index out of range" not in msg and "NoneType" not in msg, msg
        return
    assert len(t) == len(tok) == len(gen) >= 1
    assert (t >= 0).all() and (tok >= 0).all() and (gen >= 0).all()


PARSERS: list[tuple[str, Callable[[str], object]]] = [
    ("nvidia-smi-mig-lgi_*", parse_lgi),
    ("nvidia-smi-mig-lci_*", parse_lci),
    ("nvidia-smi-mig-lgip_*", parse_lgip),
    ("nvidia-smi-mig-lgipp_*", parse_lgipp),
    ("nvidia-smi-L_*", parse_list),
    ("nvidia-smi-mig-[cd][cg]i*", parse_change),
]
CAPTURES = [(p.read_text(errors="replace"), fn) for pattern, fn in PARSERS for p in sorted(FIXTURES.glob(pattern))]


def test_every_parser_has_captures() -> None:
    assert {fn for _, fn in CAPTURES} == {fn for _, fn in PARSERS}


@settings(max_examples=400, deadline=None)
@given(data=st.data(), which=st.integers(0, len(CAPTURES) - 1))
def test_mutated_nvidia_smi_output_parses_or_says_why(data: st.DataObject, which: int) -> None:
    text, fn = CAPTURES[which]
    try:
        fn(data.draw(mutated(text)))
    except NvsmiError as e:
        assert str(e).startswith("nvidia-smi"), str(e)
