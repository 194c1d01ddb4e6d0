"""Prometheus text exposition: keep only the families we use, then parse with
`prometheus_client.parser` (parsing a whole 2,400-line dcgm-exporter scrape costs ~40 ms; the
families we need are a small fraction of it).

Also classic histograms: the series summed by `le`, and the window between two scrapes. The PromQL
`histogram_quantile` interpolation lives in fsm.histogram (the simulator uses it too).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from controller.signals.base import ParseError

# The estimator is pure and shared with the simulator: fsm.histogram (re-exported here).
from fsm.histogram import histogram_quantile as histogram_quantile
from fsm.histogram import histogram_quantiles as histogram_quantiles
from fsm.histogram import over_threshold as over_threshold

Labels = tuple[tuple[str, str], ...]
MAX_COUNT = float(1 << 53)  # past it a float counter cannot count by ones: no request counter gets there


@dataclass(frozen=True, slots=True)
class PromSample:
    name: str
    labels: Mapping[str, str]
    value: float
    line: int  # 1-based line in the scraped text


def filter_families(text: str, prefixes: Iterable[str]) -> list[tuple[int, str]]:
    """(line number, line) for the sample lines of the wanted metric families, in order. HELP and
    TYPE comments are dropped: samples are read line by line and need neither."""
    pre = tuple(prefixes)
    # split on "\n" only: str.splitlines() also breaks at \x1c-\x1e, \x85, \u2028, which are legal
    # inside label values of the exposition format
    return [(i, ln.rstrip("\r")) for i, ln in enumerate(text.split("\n"), 1) if ln.startswith(pre)]


# The common line shape: name{k="v",...} value [timestamp], no escapes in label values. Labels
# are separated by commas (a trailing one allowed); `k="a"k="b"` is no label list.
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LNAME = r"(?!__)[a-zA-Z_][a-zA-Z0-9_]*"  # label names: no colon; "__" prefix is reserved
_PAIR = rf'{_LNAME}="[^"\\\n]*"'
_LABELS = rf"(?:{_PAIR}(?:,{_PAIR})*,?)?"
_FAST = re.compile(rf"({_NAME})(?:\{{({_LABELS})\}})?[ \t]+(\S+)(?:[ \t]+-?[0-9]+)?[ \t]*", re.ASCII)
_LABEL = re.compile(rf'({_LNAME})="([^"\\\n]*)"')
# A sample value as the format writes it (Go's ParseFloat: decimal, or Inf and NaN in any case).
# Python's float() also takes "1_000" and other scripts' digits ("١٠"): read as numbers, they were
# a 5 s bucket bound from "0_05".
_VALUE = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)", re.IGNORECASE | re.ASCII
)
# prometheus_client's parser (escaped label values) takes time quadratic in a line's length: a
# 1 MB line of escapes took seconds on the event loop. Exporters' lines are a few hundred bytes.
MAX_LINE = 16 << 10


def sample_value(text: str) -> float:
    """A value or an `le` bound as the exposition format writes it (ValueError otherwise)."""
    if _VALUE.fullmatch(text) is None:
        raise ValueError(f"not a number as the exposition format writes one: {text[:40]!r}")
    return float(text)


def _value_text(line: str) -> str:
    """The value's text in a sample line whose label values may hold escapes, braces and spaces."""
    i = line.find("{")
    if i < 0:
        return line.split()[1]
    quoted = escaped = False
    for j in range(i + 1, len(line)):
        c = line[j]
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == "}" and not quoted:
            return line[j + 1 :].split()[0]
    raise ValueError("no closing brace")


def _labels(body: str) -> dict[str, str]:
    """The labels of a plain label list; ValueError for a name given twice (the last one won, and
    `gpu="0",gpu="1"` was GPU 1)."""
    pairs = _LABEL.findall(body)
    out = dict(pairs)
    if len(out) != len(pairs):
        twice = sorted({k for k, _ in pairs if sum(1 for n, _ in pairs if n == k) > 1})
        raise ValueError(f"label {', '.join(twice)} given twice")
    return out


def _slow(line: str) -> list[tuple[str, dict[str, str], float]]:
    families = text_string_to_metric_families(line + "\n")
    return [(s.name, dict(s.labels), float(s.value)) for f in families for s in f.samples]


@functools.lru_cache(maxsize=64)
def _whole_text_patterns(prefixes: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    # Both start with a literal ("\n" + the prefixes' common start), which re searches for quickly;
    # a `^` with re.M would try every position of the text.
    common = os.path.commonprefix(list(prefixes))  # noqa: RUF071 (character-wise is what we want)
    alts = "|".join(re.escape(p[len(common) :]) for p in prefixes)
    head = rf"\n{re.escape(common)}(?:{alts})"
    every = re.compile(head)
    sample = re.compile(
        rf"\n({re.escape(common)}(?:{alts})[a-zA-Z0-9_:]*)(?:\{{({_LABELS})\}})?"
        r"[ \t]+(\S+)(?:[ \t]+-?[0-9]+)?[ \t]*(?=\n)",
        re.ASCII,
    )
    return every, sample


def parse_samples(text: str, prefixes: Iterable[str], source: str) -> list[PromSample]:
    """Samples of the wanted families. A malformed line raises ParseError naming it.

    When every wanted line has the plain shape (the case for exporters), one regex pass over the
    whole text reads them (prometheus_client's parser costs ~80 us per dcgm-exporter line here, too
    much for a 5 ms tick). Otherwise each line is read on its own, through prometheus_client's
    parser where the plain shape does not fit. tests/test_sig_props.py checks both agree.
    """
    pre = tuple(prefixes)
    if not pre:
        return []
    every, sample = _whole_text_patterns(pre)
    padded = "\n" + text + "\n"
    expected = len(every.findall(padded))
    out: list[PromSample] = []
    line, pos = 0, 0
    try:
        for m in sample.finditer(padded):
            line += padded.count("\n", pos, m.start() + 1)
            pos = m.start() + 1
            body = m.group(2)
            out.append(PromSample(m.group(1), _labels(body) if body else {}, sample_value(m.group(3)), line))
    except ValueError:
        out = []  # the line by line pass says which line
    if len(out) == expected:
        return out
    return _parse_lines(text, pre, source)


def _parse_lines(text: str, pre: tuple[str, ...], source: str) -> list[PromSample]:
    out: list[PromSample] = []
    for n, ln in filter_families(text, pre):
        m = _FAST.fullmatch(ln)
        if m is not None:  # the plain shape: its value and labels are read here, or it is bad
            try:
                out.append(PromSample(m.group(1), _labels(m.group(2) or ""), sample_value(m.group(3)), n))
            except ValueError as e:
                raise ParseError(source, n, f"bad sample line ({e}): {ln[:120]!r}") from None
            continue
        if len(ln) > MAX_LINE:
            raise ParseError(source, n, f"a sample line of {len(ln)} characters (at most {MAX_LINE}): {ln[:120]!r}")
        try:
            sample_value(_value_text(ln))
            parsed = _slow(ln)
        except Exception as e:  # prometheus_client raises ValueError/TypeError/IndexError on bad lines
            raise ParseError(source, n, f"bad sample line ({type(e).__name__}: {e}): {ln[:120]!r}") from None
        if not parsed:
            raise ParseError(source, n, f"no sample in line: {ln[:120]!r}")
        for name, labels, val in parsed:
            out.append(PromSample(name, labels, val, n))
    return out


# -- histograms ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative bucket counts by upper bound (`le`), plus _count when exposed."""

    buckets: tuple[tuple[float, float], ...]  # (le, cumulative count), sorted by le
    count: float | None = None
    # The series summed into it, by their labels other than `le` (empty for one built by hand):
    # deltas are taken per series, then summed, as PromQL's sum(rate()) does.
    series: tuple[tuple[Labels, Histogram], ...] = ()

    @property
    def total(self) -> float:
        if self.buckets and math.isinf(self.buckets[-1][0]):
            return self.buckets[-1][1]
        return self.count if self.count is not None else 0.0


def histograms_from_samples(
    samples: Iterable[PromSample], metric: str, match: Mapping[str, str], source: str
) -> Histogram | None:
    """Sum the series of `metric` whose labels include `match` (like sum by (le)); None if none.
    Each value a count (finite, >= 0, at most 2^53); each `le` a latency bound (>= 0); a series
    given twice (`le="Inf"` beside `le="+Inf"` is one series twice) counted once if both say the same,
    an error if not: summed, they were counted double."""
    parts: dict[Labels, tuple[dict[float, float], list[float]]] = {}  # series -> (buckets, [_count])
    seen: dict[tuple[str, frozenset[tuple[str, str]], float], float] = {}
    bucket_name, count_name = metric + "_bucket", metric + "_count"
    for s in samples:
        if any(s.labels.get(k) != v for k, v in match.items()):
            continue
        if s.name != bucket_name and s.name != count_name:
            continue
        if not (math.isfinite(s.value) and 0.0 <= s.value <= MAX_COUNT):
            raise ParseError(source, s.line, f"{s.name}: {s.value!r} is no count of requests (finite, >= 0)")
        le = math.nan
        if s.name == bucket_name:
            le_text = s.labels.get("le")
            if le_text is None:
                raise ParseError(source, s.line, f"{metric}_bucket sample without an 'le' label")
            try:
                le = sample_value(le_text)
            except ValueError:
                raise ParseError(source, s.line, f"bad 'le' value {le_text!r}") from None
            if not le >= 0.0:  # NaN too
                raise ParseError(source, s.line, f"'le' {le_text!r} is no latency bound (a number >= 0)")
        key = (s.name, frozenset((k, v) for k, v in s.labels.items() if k != "le"), le)
        before = seen.get(key)
        if before is not None:  # a copy (a proxy's, a federation's) counts once; two values are garbage
            if before == s.value:
                continue
            raise ParseError(
                source, s.line, f"{s.name}: one series given twice, {before:g} and {s.value:g} (le {le:g})"
            )
        seen[key] = s.value
        part = parts.setdefault(tuple(sorted(key[1])), ({}, []))
        if s.name == bucket_name:
            part[0][le] = s.value
        else:
            part[1].append(s.value)
    if not parts:
        return None
    series = tuple(
        (labels, Histogram(tuple(sorted(b.items())), c[0] if c else None)) for labels, (b, c) in sorted(parts.items())
    )
    return _summed(series)


def _summed(series: tuple[tuple[Labels, Histogram], ...]) -> Histogram:
    """The series summed by `le` (and their _count, None when no series has one)."""
    buckets: dict[float, float] = {}
    count: float | None = None
    for _, h in series:
        for le, c in h.buckets:
            buckets[le] = buckets.get(le, 0.0) + c
        if h.count is not None:
            count = (count or 0.0) + h.count
    return Histogram(tuple(sorted(buckets.items())), count, series)


def restarted(cur: Histogram, prev: Histogram) -> bool:
    """A histogram counts again from zero: its server restarted. With several series (vLLM's
    `engine` label under data parallelism), one of them did: the sum of the others can hide it."""
    if cur.series and prev.series:
        before = dict(prev.series)
        return any(h.total < before[k].total for k, h in cur.series if k in before)
    return cur.total < prev.total


def histogram_delta(cur: Histogram, prev: Histogram | None) -> Histogram:
    """Observations between two scrapes. Per series, a counter that went down was reset (the
    server restarted): its delta is its current value, as PromQL's rate()/increase() assume.
    Summed series are taken apart first: one engine of two restarting made the sum go down, and the
    other's whole history since its start was read as this window."""
    if prev is None:
        return cur
    if cur.series and prev.series:
        before_series = dict(prev.series)
        return _summed(tuple((k, _delta_one(h, before_series.get(k))) for k, h in cur.series))
    return _delta_one(cur, prev)


def _delta_one(cur: Histogram, prev: Histogram | None) -> Histogram:
    if prev is None:  # a series new since the last scrape counts from its start
        return Histogram(cur.buckets, cur.count)
    before = dict(prev.buckets)
    reset = restarted(cur, prev)
    out = []
    for le, c in cur.buckets:
        p = before.get(le)
        if reset or p is None or c < p:
            out.append((le, c))
        else:
            out.append((le, c - p))
    count = None
    if cur.count is not None:
        count = cur.count if (reset or prev.count is None or cur.count < prev.count) else cur.count - prev.count
    return Histogram(tuple(out), count)
