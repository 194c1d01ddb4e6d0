"""Property tests: every signal parser fed mutated real captures returns a result or raises a
ParseError naming the line; never another exception. Plus the fast exposition-line path agrees with
prometheus_client's parser, and histogram_quantile's invariants."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from fakes.fixture_paths import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from controller.signals.base import ParseError, Unavailable
from controller.signals.cgroup import _parse_io_stat_lines, _parse_psi_lines, parse_blkio_v1, parse_io_stat, parse_psi
from controller.signals.dcgm import DcgmExporterSampler, enabled_counters
from controller.signals.host import _parse_diskstats_lines, parse_diskstats, parse_interrupts, parse_net_dev
from controller.signals.latency import JsonlLatencySampler, PrometheusLatencySampler, window_from_histogram
from controller.signals.promtext import Histogram, histogram_quantile, parse_samples

SNAP = Path(__file__).parent / "fakes" / "sig_cgroup_snapshot"

DCGM = (FIXTURES / "dcgm-exporter_metrics_a100-sxm4-40gb_mig-1g.5gb_nvidia-docs.prom").read_text()
VLLM = (FIXTURES / "vllm-metrics_llama-3.1-8b_v0_excerpt_vllm-docs.prom").read_text()
CSV = (FIXTURES / "dcgm-exporter_default-counters.csv").read_text()
IO_STAT = "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n259:0 rbytes=0 wbytes=4096 rios=0\n"
BLKIO = (SNAP / "blkio" / "blkio.throttle.io_service_bytes").read_text()
PSI = (SNAP / "unified" / "io.pressure").read_text()
DISK = " 259       0 nvme0n1 1000 0 20000 100 2000 0 40000 300 0 400 400 0 0 0 0 0 0\n"
NET = Path("/proc/net/dev").read_text()
IRQ = "           CPU0       CPU1\n 24:        100          0  IO-APIC   5-edge      ACPI:Ged\nERR:          0\n"

JUNK = st.sampled_from(
    ["", " ", "\t", "\n", "{", "}", '"', "=", ",", ":", "-", "x", "NaN", "+Inf", "1e309", "\x1b[4m", "é", "\x00"]
)


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    s = text
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "truncate", "dup", "replace"]))
        n = len(s)
        i = draw(st.integers(0, n))
        if kind == "delete":
            j = draw(st.integers(i, min(n, i + 40)))
            s = s[:i] + s[j:]
        elif kind == "insert":
            s = s[:i] + draw(JUNK) + draw(st.text(max_size=6)) + s[i:]
        elif kind == "truncate":
            s = s[:i]
        elif kind == "dup":
            lines = s.splitlines(keepends=True)
            if lines:
                k = draw(st.integers(0, len(lines) - 1))
                lines.insert(k, lines[k])
                s = "".join(lines)
        else:
            if n:
                s = s[:i] + draw(JUNK) + s[i + 1 :]
    return s


def only_parse_errors(fn: Callable[[str], object], text: str) -> None:
    try:
        fn(text)
    except ParseError as e:
        assert str(e) and (e.line is None or e.line >= 1)


CASES: list[tuple[str, Callable[[str], object]]] = [
    (DCGM, lambda t: DcgmExporterSampler("u").parse(t, 1.0)),
    (DCGM, lambda t: parse_samples(t, ["DCGM_"], "u")),
    (VLLM, lambda t: _vllm(t)),
    (CSV, enabled_counters),
    (IO_STAT, parse_io_stat),
    (BLKIO, parse_blkio_v1),
    (PSI, parse_psi),
    (DISK, parse_diskstats),
    (NET, parse_net_dev),
    (IRQ, parse_interrupts),
]


def _vllm(t: str) -> object:
    h = PrometheusLatencySampler("x", "u").parse(t)
    if isinstance(h, Histogram):
        w = window_from_histogram(h)
        for v in (w.p50, w.p99, w.p999):
            assert v is None or not math.isnan(v)
    return h


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), case=st.integers(0, len(CASES) - 1))
def test_mutated_captures_give_results_or_parse_errors(data: st.DataObject, case: int) -> None:
    text, fn = CASES[case]
    only_parse_errors(fn, data.draw(mutated(text)))


# Readers with a fast path (one regular expression over the file) and a careful one (line by
# line, naming the bad line): whatever the fast path takes, the careful one reads the same.
FAST_AND_CAREFUL = [
    (DISK * 3 + DISK.replace("nvme0n1", "sda"), parse_diskstats, _parse_diskstats_lines),
    (IO_STAT, parse_io_stat, _parse_io_stat_lines),
    (PSI, parse_psi, _parse_psi_lines),
]


def _outcome(fn: Callable[[str, str], object], text: str) -> object:
    try:
        return fn(text, "f")
    except ParseError:
        return ParseError


@settings(max_examples=300, deadline=None)
@given(data=st.data(), case=st.integers(0, len(FAST_AND_CAREFUL) - 1))
def test_a_fast_path_reads_what_the_careful_path_reads(data: st.DataObject, case: int) -> None:
    text, parse, careful = FAST_AND_CAREFUL[case]
    t = data.draw(st.one_of(st.just(text), mutated(text)))
    assert _outcome(parse, t) == _outcome(careful, t)


def test_io_stat_keys_given_twice_or_past_the_kernels_take_the_careful_path() -> None:
    """Found by the test above: the fast path took any keys after the four, so a line repeating
    rbytes read its first value there and its last on the careful path. A key given twice is now
    an error on both; iocost's keys (the root's cost.vrate=100.00, cost.usage=...) are read on the
    careful path, their values numbers but not used."""
    twice = "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=0 rbytes=0 wbytes=4096 rios=0\n"
    assert _outcome(parse_io_stat, twice) is ParseError is _outcome(_parse_io_stat_lines, twice)
    iocost = "8:16 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0 cost.vrate=100.00 cost.usage=5\n"
    assert parse_io_stat(iocost)["8:16"] == (1, 2, 3, 4)
    for bad in ("cost.usage=x", "cost.usage=-1", "cost.vrate=1e3", "dbytes=1.5", "cost.usage=5", "=5"):
        assert _outcome(parse_io_stat, iocost.replace("\n", f" {bad}\n")) is ParseError, bad


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.one_of(st.text(max_size=40), st.just('{"latency_s": 0.5}'), st.just("[1]")), max_size=8))
def test_jsonl_lines_never_raise(tmp_path_factory, lines: list[str]) -> None:
    import asyncio

    p = tmp_path_factory.mktemp("j") / "x.jsonl"
    s = JsonlLatencySampler("x", str(p))
    assert isinstance(asyncio.run(s.sample(0.0)), Unavailable)  # not there yet: read it all when it comes
    p.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    r = asyncio.run(s.sample(1.0))
    good = sum(1 for ln in lines if ln == '{"latency_s": 0.5}')
    if isinstance(r, Unavailable):
        assert f"{p}: line " in r.reason and good == 0
    else:
        assert all(math.isfinite(v) and v >= 0 for v in r.window.samples)
        assert r.window.samples.count(0.5) >= good


NAMES = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True)
LVAL = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters='"\\\n'), max_size=8)
VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(10**12), 10**12).map(str),
    st.sampled_from(["+Inf", "-Inf", "1e3", "0.995630"]),
)


@settings(max_examples=200, deadline=None)
@given(
    name=NAMES,
    labels=st.dictionaries(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True), LVAL, max_size=4),
    value=VALUES,
    ts=st.one_of(st.none(), st.integers(0, 10**13)),
)
def test_fast_path_agrees_with_prometheus_client(name: str, labels: dict[str, str], value: str, ts: int | None) -> None:
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    line = f"{name}{{{body}}} {value}" + (f" {ts}" if ts is not None else "")
    try:
        theirs = [s for f in text_string_to_metric_families(line + "\n") for s in f.samples]
    except ValueError:
        try:
            parse_samples(line + "\n", [name], "x")
        except ParseError as e:
            assert e.line == 1
            return
        raise AssertionError(f"prometheus_client rejects {line!r}, the fast path accepted it") from None
    ours = parse_samples(line + "\n", [name], "x")
    assert [(s.name, dict(s.labels), s.value) for s in ours] == [(s.name, dict(s.labels), s.value) for s in theirs]


@settings(max_examples=300, deadline=None)
@given(
    bounds=st.lists(st.floats(0.001, 100, allow_nan=False), min_size=1, max_size=8, unique=True),
    counts=st.lists(st.integers(0, 1000), min_size=9, max_size=9),
    q1=st.floats(0, 1),
    q2=st.floats(0, 1),
)
def test_histogram_quantile_bounds_and_monotone(bounds: list[float], counts: list[int], q1: float, q2: float) -> None:
    les = sorted(bounds)
    cum, run = [], 0
    for le, c in zip([*les, math.inf], counts, strict=False):
        run += c
        cum.append((le, float(run)))
    a, b = histogram_quantile(min(q1, q2), cum), histogram_quantile(max(q1, q2), cum)
    if run == 0:
        assert a is None and b is None
        return
    assert a is not None and b is not None
    assert 0 <= a <= b <= les[-1]


def test_parse_error_message_is_json_safe() -> None:
    try:
        parse_psi("some avg10=oops\n", "cpu.pressure")
    except ParseError as e:
        assert json.loads(json.dumps(str(e))) == "cpu.pressure: line 1: avg10 is not a number: 'oops'"
