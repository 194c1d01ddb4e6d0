"""Latency sources: PromQL histogram_quantile rules, window deltas between scrapes of the real
vLLM capture served over HTTP, counter resets, empty windows; JSON-lines tail across rotation."""

from __future__ import annotations

import asyncio
import math
import os
import re
from pathlib import Path

import pytest
from fakes.fixture_paths import FIXTURES
from fakes.sig_http import serve

from controller.signals.base import ParseError, Unavailable
from controller.signals.http import FetchError
from controller.signals.latency import JsonlLatencySampler, LatencyReading, PrometheusLatencySampler
from controller.signals.promtext import Histogram, histogram_delta, histogram_quantile

VLLM = (FIXTURES / "vllm-metrics_llama-3.1-8b_v0_excerpt_vllm-docs.prom").read_text()
INF = math.inf


def bump(text: str, extra: dict[str, int]) -> str:
    """The capture with `extra[le]` more observations in each bucket at or above le (cumulative)."""

    def sub(m: re.Match[str]) -> str:
        le, value = m.group(2), float(m.group(3))
        add = sum(n for b, n in extra.items() if float(b) <= float(le))
        return f"{m.group(1)}{value + add:.1f}"

    out = re.sub(r'(_bucket\{le="([^"]+)"[^}]*\} )([0-9.]+)', sub, text)
    total = sum(extra.values())
    return re.sub(r"(_count\{[^}]*\} )([0-9.]+)", lambda m: f"{m.group(1)}{float(m.group(2)) + total:.1f}", out)


# -- histogram_quantile, as the Prometheus docs define it ------------------------------------
def test_quantile_interpolates_within_bucket() -> None:
    b = [(0.1, 10.0), (0.2, 30.0), (INF, 30.0)]
    assert histogram_quantile(0.5, b) == pytest.approx(0.1 + 0.1 * (15 - 10) / 20)
    # lowest bucket starts at 0 when its upper bound is positive
    assert histogram_quantile(0.05, b) == pytest.approx(0.1 * 1.5 / 10)


def test_quantile_in_inf_bucket_returns_second_highest_bound() -> None:
    assert histogram_quantile(0.99, [(0.1, 10.0), (0.2, 20.0), (INF, 30.0)]) == 0.2


def test_quantile_edge_rules() -> None:
    assert histogram_quantile(0.5, [(0.1, 10.0), (0.2, 20.0)]) is None  # no +Inf bucket
    assert histogram_quantile(0.5, [(INF, 5.0)]) is None  # fewer than two buckets
    assert histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None  # no observations
    assert histogram_quantile(-0.1, [(0.1, 1.0), (INF, 1.0)]) == -INF
    assert histogram_quantile(1.1, [(0.1, 1.0), (INF, 1.0)]) == INF
    assert histogram_quantile(0.5, [(-1.0, 4.0), (0.5, 8.0), (INF, 8.0)]) == -1.0  # non-positive lowest bound
    # non-monotonic counts (scrape skew) are raised to the running maximum
    assert histogram_quantile(0.5, [(0.1, 10.0), (0.2, 8.0), (0.4, 20.0), (INF, 20.0)]) == pytest.approx(0.1)


def test_delta_and_reset() -> None:
    prev = Histogram(((0.1, 5.0), (INF, 10.0)), 10.0)
    cur = Histogram(((0.1, 8.0), (INF, 20.0)), 20.0)
    assert histogram_delta(cur, prev).buckets == ((0.1, 3.0), (INF, 10.0))
    restarted = Histogram(((0.1, 1.0), (INF, 2.0)), 2.0)
    d = histogram_delta(restarted, prev)  # server restarted: counts since restart
    assert d.buckets == ((0.1, 1.0), (INF, 2.0)) and d.count == 2.0


# -- the real vLLM capture, scraped over HTTP -----------------------------------------------
def test_vllm_capture_windows_over_http() -> None:
    async def run() -> None:
        with serve() as pages:
            url = pages.set("/metrics", VLLM)
            s = PrometheusLatencySampler("latency:llm", url, timeout_s=2.0)
            first = await s.sample(100.0)
            assert isinstance(first, Unavailable) and "two scrapes" in first.reason
            # empty window: nothing new
            r = await s.sample(102.0)
            assert isinstance(r, LatencyReading) and r.window.count == 0 and r.window.p99 is None
            assert r.throughput == 0.0
            # 20 new requests: 10 in (0.04, 0.06], 10 in (0.06, 0.08]
            pages.set("/metrics", bump(VLLM, {"0.06": 10, "0.08": 10}))
            r = await s.sample(104.0)
            assert isinstance(r, LatencyReading)
            assert r.window.count == 20 and r.throughput == pytest.approx(10.0)
            assert r.window.p50 == pytest.approx(0.06)
            assert r.window.p99 == pytest.approx(0.06 + 0.02 * (19.8 - 10) / 10)
            # restart: counters start again from a small histogram -> its counts are the window
            small = bump(re.sub(r"\} [0-9.]+\n", "} 0.0\n", VLLM), {"0.02": 4})
            pages.set("/metrics", small)
            r = await s.sample(106.0)
            assert isinstance(r, LatencyReading) and r.window.count == 4
            assert r.window.p99 is not None and 0.01 < r.window.p99 <= 0.02
            assert r.restarted_s == pytest.approx(2.0)  # said once, at the scrape that saw it
            r = await s.sample(108.0)
            assert isinstance(r, LatencyReading) and r.restarted_s is None

    asyncio.run(run())


def test_a_restart_is_the_span_since_the_last_scrape_that_answered() -> None:
    """A server down for its restart refuses the scrapes (Unavailable, nothing remembered of them);
    the first that answers again shows counters from zero, and the seconds since the last one that
    answered: about how long it served nothing (TenantSample.restarted_s). Counters that only grow
    are no restart."""
    pages = {"up": VLLM}

    async def fetch(url: str, timeout_s: float) -> str:
        if pages["up"] is None:
            raise FetchError(f"{url}: connection refused")
        return pages["up"]

    async def run() -> None:
        s = PrometheusLatencySampler("latency:llm", "http://127.0.0.1:1/metrics", fetch=fetch)
        await s.sample(0.0)
        r = await s.sample(2.0)
        assert isinstance(r, LatencyReading) and r.restarted_s is None
        pages["up"] = bump(VLLM, {"0.06": 3})
        r = await s.sample(4.0)
        assert isinstance(r, LatencyReading) and r.restarted_s is None and r.window.count == 3
        pages["up"] = None
        for t in (6.0, 8.0, 10.0):
            r = await s.sample(t)
            assert isinstance(r, Unavailable) and "connection refused" in r.reason
        pages["up"] = bump(re.sub(r"\} [0-9.]+\n", "} 0.0\n", VLLM), {"0.5": 7})
        r = await s.sample(12.0)
        assert isinstance(r, LatencyReading) and r.restarted_s == pytest.approx(8.0) and r.window.count == 7

    asyncio.run(run())


def test_an_slo_inside_a_bucket_is_logged_once_at_the_first_scrape(caplog: pytest.LogCaptureFixture) -> None:
    """The daemon says what `tailguard doctor` says, once: a 50 ms SLO falls inside the capture's
    40-60 ms bucket (estimated, not counted); 40 ms is a bound (counted exactly): nothing logged."""
    with serve() as pages:
        url = pages.set("/metrics", VLLM)

        async def scrapes(slo_s: float) -> None:
            s = PrometheusLatencySampler("latency:llm", url, timeout_s=2.0, slo_s=slo_s)
            for t in (0.0, 1.0, 2.0):
                await s.sample(t)

        with caplog.at_level("WARNING", logger="tailguard.latency"):
            asyncio.run(scrapes(0.05))
            asyncio.run(scrapes(0.04))
    (rec,) = caplog.records
    assert rec.getMessage() == (
        f"latency:llm ({url}): its SLO 50 ms falls inside the 40-60 ms bucket of vllm:time_to_first_token_seconds:"
        " the share over it is estimated from the buckets, and can read a violation as within budget -> an SLO on"
        " a bucket bound (40 or 60 ms) is counted exactly; so is a jsonl or mqtt latency source"
    )


def test_vllm_capture_single_scrape_matches_promql() -> None:
    s = PrometheusLatencySampler("x", "http://unused", labels={"model_name": "meta-llama/Llama-3.1-8B-Instruct"})
    h = s.parse(VLLM)
    assert isinstance(h, Histogram)
    # the capture was trimmed without a +Inf line; _count (140) stands in for it
    from controller.signals.latency import window_from_histogram

    w = window_from_histogram(h)
    assert w.count == 140
    # rank 0.5*140 = 70 falls in (0.02, 0.04]: 0.02 + 0.02*(70-13)/(97-13)
    assert w.p50 == pytest.approx(0.02 + 0.02 * 57 / 84)
    # rank 138.6 falls in (0.08, 0.1]: 0.08 + 0.02*(138.6-138)/(140-138)
    assert w.p99 == pytest.approx(0.08 + 0.02 * 0.6 / 2)


def test_scrape_failures_are_unavailable() -> None:
    async def run() -> None:
        with serve() as pages:
            s = PrometheusLatencySampler("x", pages.base + "/missing", timeout_s=2.0)
            r = await s.sample(1.0)
            assert isinstance(r, Unavailable) and "HTTP 404" in r.reason and "/missing" in r.reason
            url = pages.set("/other", "foo_total 3\n")
            r = await PrometheusLatencySampler("x", url).sample(1.0)
            assert isinstance(r, Unavailable) and "no vllm:time_to_first_token_seconds_bucket" in r.reason
            url = pages.set("/bad", VLLM.replace('le="0.04"', 'le="fast"'))
            r = await PrometheusLatencySampler("x", url).sample(1.0)
            assert isinstance(r, Unavailable) and "line 21" in r.reason and "'fast'" in r.reason
            r = await PrometheusLatencySampler("x", "http://127.0.0.1:9/metrics", timeout_s=0.5).sample(1.0)
            assert isinstance(r, Unavailable) and "127.0.0.1:9" in r.reason

    asyncio.run(run())


# -- JSON lines --------------------------------------------------------------------------
def _w(path: Path, text: str, mode: str = "a") -> None:
    with open(path, mode, encoding="utf-8") as fh:
        fh.write(text)


def test_jsonl_tail_rotation_truncation_partial_lines(tmp_path: Path) -> None:
    p = tmp_path / "lat.jsonl"

    async def run() -> None:
        s = JsonlLatencySampler("latency:t", str(p))
        r = await s.sample(0.0)
        assert isinstance(r, Unavailable) and "no such file" in r.reason
        # the file appears after we started: all of it is new
        _w(p, '{"latency_s": 0.1}\n{"latency_s": 0.3}\n{"latency_s": 0.2')
        r = await s.sample(1.0)
        assert isinstance(r, LatencyReading) and r.window.samples == (0.1, 0.3)
        _w(p, '}\n{"latency_s": 0.4}\n')  # the partial line completes
        r = await s.sample(2.0)
        assert isinstance(r, LatencyReading) and r.window.samples == (0.2, 0.4) and r.throughput == 2.0
        # rotation: the writer renames and starts a new file; the rest of the old one is not lost
        _w(p, '{"latency_s": 0.5}\n')
        os.rename(p, tmp_path / "lat.jsonl.1")
        _w(p, '{"latency_s": 0.6}\n', "w")
        r = await s.sample(3.0)
        assert isinstance(r, LatencyReading) and r.window.samples == (0.5, 0.6)
        # truncation in place (copytruncate): start from the beginning
        _w(p, '{"latency_s": 0.7}\n', "w")
        r = await s.sample(4.0)
        assert isinstance(r, LatencyReading) and r.window.samples == (0.7,)
        r = await s.sample(5.0)
        assert isinstance(r, LatencyReading) and r.window.count == 0
        # bad lines are named with their line number, never read as zero
        _w(p, 'garbage\n{"latency_s": "slow"}\n{"other": 1}\n')
        r = await s.sample(6.0)
        assert isinstance(r, Unavailable) and f"{p}: line 4:" in r.reason and "no field 'latency_s'" in r.reason
        assert s.bad_lines_total == 3 and "line 2: not JSON" not in s.last_bad
        _w(p, '{"latency_s": -1}\n{"latency_s": 0.25}\n')
        r = await s.sample(7.0)
        assert isinstance(r, LatencyReading) and r.window.samples == (0.25,)
        assert "line 5" in s.last_bad and "is not a latency in [0, 3600] s: -1" in s.last_bad

    asyncio.run(run())


def test_jsonl_quantiles_and_history_skipped(tmp_path: Path) -> None:
    p = tmp_path / "lat.jsonl"
    _w(p, '{"ttft": 9.0}\n{"ttft": 9.0}\n{"ttft": 9.')  # history from before we started, partial last line
    s = JsonlLatencySampler("x", str(p), field="ttft")

    async def run() -> LatencyReading | Unavailable:
        first = await s.sample(0.0)
        assert isinstance(first, LatencyReading) and first.window.count == 0
        _w(p, "5}\n" + "".join(f'{{"ttft": {i / 1000}}}\n' for i in range(1, 1001)))
        return await s.sample(1.0)

    r = asyncio.run(run())
    # the line that was half written when we started completes now: it counts, once
    assert isinstance(r, LatencyReading) and r.window.count == 1001 and r.window.samples[0] == 9.5
    assert r.window.p99 == pytest.approx(0.991) and r.window.quantile(0.99) == pytest.approx(0.991)


PLUS_INF = 'm_bucket{le="+Inf"} 10\n'


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('m_bucket{le="0.1"} 5\nm_bucket{le="+Inf"} +Inf\n', "m_bucket: inf is no count of requests"),
        ('m_bucket{le="0.1"} 5\nm_bucket{le="+Inf"} 1e300\n', "m_bucket: 1e+300 is no count of requests"),
        ('m_bucket{le="0.1"} -5\n' + PLUS_INF, "m_bucket: -5.0 is no count of requests"),
        ("m_count 1e400\n" + PLUS_INF, "m_count: inf is no count of requests"),
        ('m_bucket{le="-0.5"} 10\n' + PLUS_INF, "'le' '-0.5' is no latency bound"),
        ('m_bucket{le="0_05"} 10\n' + PLUS_INF, "bad 'le' value '0_05'"),
        ('m_bucket{le="0.1"} \u0661\u0660\n' + PLUS_INF, "not a number as the exposition format writes one"),
        ('m_bucket{le="0.1",le="20"} 10\n' + PLUS_INF, "label le given twice"),
        ('m_bucket{le="0.1"x="1"} 10\n' + PLUS_INF, "line 1: bad sample line"),
        ('m_bucket{le="0.1"} 5\n' + PLUS_INF + 'm_bucket{le="Inf"} 20\n', "one series given twice, 10 and 20"),
        ('m_bucket{le="0.1",a="' + '\\\\' * 20_000 + '"} 5\n' + PLUS_INF, "a sample line of 40025 characters"),
    ],
    ids=["inf", "absurd", "negative", "count-past-float", "negative-le", "underscore-le", "arabic-indic-value",
         "label-twice", "no-comma", "series-twice", "long-escaped-line"],
)  # fmt: skip
def test_histogram_garbage_is_named_not_read_as_a_latency(text: str, says: str) -> None:
    """Found by fuzzing: each was read as a window (10^300 requests, p99 = -0.5 s, a 5 s bound from
    "0_05", counts doubled), or raised OverflowError that named no source, or took seconds."""
    with pytest.raises(ParseError, match=re.escape(says)):
        PrometheusLatencySampler("x", "u", metric="m").parse(text)


def test_a_series_given_twice_alike_counts_once() -> None:
    """A proxy's or a federation's copy of a series says the same: counted once, not summed."""
    text = 'm_bucket{le="0.1"} 5\n' + PLUS_INF
    once = PrometheusLatencySampler("x", "u", metric="m").parse(text)
    assert PrometheusLatencySampler("x", "u", metric="m").parse(text + text) == once
    assert once is not None and once.total == 10


def _engines(*engines: tuple[int, int, int]) -> str:
    """One histogram in several series, as vLLM exposes it under data parallelism (`engine`)."""
    return "".join(
        f'm_bucket{{engine="{i}",le="0.1"}} {a}\nm_bucket{{engine="{i}",le="1"}} {b}\n'
        f'm_bucket{{engine="{i}",le="+Inf"}} {c}\nm_count{{engine="{i}"}} {c}\n'
        for i, (a, b, c) in enumerate(engines)
    )


def test_one_series_of_several_that_restarted_is_no_window_of_the_others_history() -> None:
    """Found by hunting: engine 1 of 2 restarted (its counters back to 0) while engine 0 served 10
    requests; the sum went down, the whole histogram was taken for reset, and engine 0's 1,000
    requests since its start were read as this window (1,012 requests). Deltas are per series."""
    pages = [_engines((900, 990, 1000), (900, 990, 1000)), _engines((909, 999, 1010), (1, 2, 2)),
             _engines((919, 1009, 1020), (2, 3, 3), (4, 4, 4))]  # fmt: skip

    async def fetch(url: str, timeout_s: float) -> str:
        return pages.pop(0)

    async def run() -> None:
        s = PrometheusLatencySampler("x", "u", metric="m", fetch=fetch)
        await s.sample(0.0)
        r = await s.sample(1.0)
        assert isinstance(r, LatencyReading) and r.window.count == 12 and r.restarted_s == 1.0
        r = await s.sample(2.0)  # a third engine appears: it counts from its start; no restart
        assert isinstance(r, LatencyReading) and r.window.count == 10 + 1 + 4 and r.restarted_s is None

    asyncio.run(run())


def test_jsonl_latency_past_an_hour_is_a_bad_line(tmp_path: Path) -> None:
    """Found by fuzzing: 1e300 s was a sample (a window's p50 5e307 s); MQTT's bound holds here too."""
    s = JsonlLatencySampler("t", str(tmp_path / "x.jsonl"))
    assert s._value(b'{"latency_s": 1e300}') == (None, "field 'latency_s' is not a latency in [0, 3600] s: 1e+300")
    assert s._value(b'{"latency_s": 3600}') == (3600.0, "")


def test_jsonl_line_without_end_is_dropped_not_buffered(tmp_path: Path) -> None:
    """Found by fuzzing: a writer that never wrote a newline grew the buffer by what it wrote each
    tick (152 MB after 19 ticks) while every window read as no traffic; a log that existed at the
    start was read whole into memory to find its end. A line past MAX_LINE is dropped up to its
    newline and counted bad; the start counts lines a chunk at a time."""
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"latency_s": 0.1}\n' * 3 + b"x" * 300)
    s = JsonlLatencySampler("t", str(p))
    s.MAX_LINE = 100  # type: ignore[misc]
    s.MAX_READ = 64  # type: ignore[misc]  # chunks smaller than the file: the start is counted in parts
    assert s.read_new() == ([], [])  # the start: tailed from the end, its partial line already too long
    assert s._line_no == 3 and s._buf == b"" and s._skipping
    s.MAX_READ = 1 << 20  # type: ignore[misc]
    with p.open("ab") as f:
        f.write(b"y" * 500 + b'\n{"latency_s": 0.2}\n{"latency_s": 0.3')
    samples, bad = s.read_new()
    assert samples == [0.2] and bad == [f"{p}: line 4: longer than 100 bytes, skipped"]
    with p.open("ab") as f:
        f.write(b"z" * 200)  # the partial line '{"latency_s": 0.3zzz...' passes MAX_LINE: dropped
    assert s.read_new() == ([], []) and s._buf == b"" and len(s._buf) <= 100
    with p.open("ab") as f:
        f.write(b'\n{"latency_s": 0.4}\n')
    samples, bad = s.read_new()
    assert samples == [0.4] and bad == [f"{p}: line 6: longer than 100 bytes, skipped"]


def test_jsonl_line_not_in_utf8_is_a_bad_line(tmp_path: Path) -> None:
    """Found by fuzzing: json.loads(bytes) guesses UTF-16 and UTF-32 (by a BOM, or by where the zero
    bytes are) and lets UTF-8-coded surrogates through, so such lines were read as latencies. A
    line is UTF-8 or it is malformed, named with its number like any other."""
    p = tmp_path / "x.jsonl"
    line = '{"latency_s": 0.5}'
    p.write_bytes(
        b'{"latency_s": 0.1}\n'
        + line.encode("utf-16") + b"\n"  # with a BOM
        + line.encode("utf-16-le") + b"\n"  # without: the zero bytes gave it away
        + line.encode("utf-32") + b"\n"
        + b'{"latency_s": 0.5, "id": "\xed\xa0\x80"}\n'  # a lone surrogate, UTF-8-coded
        + b'{"latency_s": 0.2}\n'
    )  # fmt: skip
    s = JsonlLatencySampler("t", str(p))
    s._seen_missing = True  # the file appeared after the start: read from its first line
    samples, bad = s.read_new()
    assert samples == [0.1, 0.2]
    assert bad == [
        f"{p}: line 2: not JSON (not UTF-8 text: invalid start byte at byte 0)",
        f"{p}: line 3: not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        f"{p}: line 4: not JSON (not UTF-8 text: invalid start byte at byte 0)",
        f"{p}: line 5: not JSON (not UTF-8 text: invalid continuation byte at byte 26)",
    ]


def test_jsonl_line_with_a_key_twice_is_a_bad_line(tmp_path: Path) -> None:
    """Found by fuzzing: the last of two values was read (10 s here, a violation out of nothing)."""
    p = tmp_path / "x.jsonl"
    p.write_bytes(
        b'{"latency_s": 0.1}\n{"latency_s": 0.1, "latency_s": 10}\n{"latency_s": 0.2, "m": {"a": 1, "a": 1}}\n'
    )
    s = JsonlLatencySampler("t", str(p))
    s._seen_missing = True
    assert s.read_new() == (
        [0.1],
        [
            f"{p}: line 2: not JSON (key 'latency_s' given twice in one object)",
            f"{p}: line 3: not JSON (key 'a' given twice in one object)",
        ],
    )


def test_jsonl_file_put_back_after_a_failed_read_is_read_from_its_start(tmp_path: Path) -> None:
    """Found by hunting: rotated to a directory, then a FIFO, then a regular file again; the new
    file was opened at its end, as at the first tick, and its lines were skipped. The rest of the
    rotated file is read even when the new path cannot be opened."""
    p = tmp_path / "x.jsonl"
    p.write_text('{"latency_s": 9}\n')
    s = JsonlLatencySampler("t", str(p))

    async def run() -> None:
        assert isinstance(await s.sample(0.0), LatencyReading)  # history: skipped
        with p.open("a") as f:
            f.write('{"latency_s": 0.1}\n')
        p.rename(tmp_path / "x.jsonl.1")
        p.mkdir()
        r = await s.sample(1.0)
        assert isinstance(r, LatencyReading) and r.window.samples == (0.1,)
        assert (await s.sample(2.0)) == Unavailable(f"{p}: a directory, not a regular file")
        p.rmdir()
        os.mkfifo(p)
        assert (await s.sample(3.0)) == Unavailable(f"{p}: a FIFO, not a regular file")
        p.unlink()
        p.write_text('{"latency_s": 0.5}\n')
        r = await s.sample(4.0)
        assert isinstance(r, LatencyReading) and r.window.samples == (0.5,)

    asyncio.run(run())


def test_jsonl_read_that_failed_goes_on_from_where_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that failed (EIO, EACCES for a moment) closed the file; opened again, the same file
    is read on from the first byte not yet taken: nothing skipped, nothing twice, and a partial
    line kept across it."""
    p = tmp_path / "x.jsonl"
    p.write_text("")
    s = JsonlLatencySampler("t", str(p))
    real = s._read_chunk

    def fail() -> bytes:
        raise OSError(5, "Input/output error")

    async def run() -> None:
        await s.sample(0.0)
        with p.open("a") as f:
            f.write('{"latency_s": 0.1}\n{"latency_s": 0.')
        r = await s.sample(1.0)
        assert isinstance(r, LatencyReading) and r.window.samples == (0.1,)
        with p.open("a") as f:
            f.write('2}\n{"latency_s": 0.3}\n')
        monkeypatch.setattr(s, "_read_chunk", fail)
        assert (await s.sample(2.0)) == Unavailable(f"{p}: Input/output error")
        monkeypatch.setattr(s, "_read_chunk", real)
        with p.open("a") as f:
            f.write("x\n")
        r = await s.sample(3.0)
        assert isinstance(r, LatencyReading) and r.window.samples == (0.2, 0.3)
        assert s.last_bad == f"{p}: line 4: not JSON (Expecting value: line 1 column 1 (char 0))"

    asyncio.run(run())
