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


# The common line shape: name{k="v",...} value [timestamp], no escapes in label values.
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LNAME = r"(?!__)[a-zA-Z_][a-zA-Z0-9_]*"  # label names: no colon; "__" prefix is reserved
_FAST = re.compile(rf'({_NAME})(?:\{{((?:{_LNAME}="[^"\\\n]*",?)*)\}})?[ \t]+(\S+)(?:[ \t]+-?\d+)?[ \t]*')
_LABEL = re.compile(rf'({_LNAME})="([^"\\\n]*)",?')


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
    labels = rf'(?:{_LNAME}="[^"\\\n]*",?)*'
    every = re.compile(head)
    sample = re.compile(
        rf"\n({re.escape(common)}(?:{alts})[a-zA-Z0-9_:]*)(?:\{{({labels})\}})?[ \t]+(\S+)(?:[ \t]+-?\d+)?[ \t]*(?=\n)"
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
            out.append(PromSample(m.group(1), dict(_LABEL.findall(body)) if body else {}, float(m.group(3)), line))
    except ValueError:
        out = []
    if len(out) == expected:
        return out
    return _parse_lines(text, pre, source)


def _parse_lines(text: str, pre: tuple[str, ...], source: str) -> list[PromSample]:
    out: list[PromSample] = []
    for n, ln in filter_families(text, pre):
        m = _FAST.fullmatch(ln)
        value: float | None = None
        if m is not None:
            try:
                value = float(m.group(3))
            except ValueError:
                value = None
        if m is not None and value is not None:
            body = m.group(2) or ""
            labels = dict(_LABEL.findall(body))
            out.append(PromSample(m.group(1), labels, value, n))
            continue
        try:
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

    @property
    def total(self) -> float:
        if self.buckets and math.isinf(self.buckets[-1][0]):
            return self.buckets[-1][1]
        return self.count if self.count is not None else 0.0


def histograms_from_samples(
    samples: Iterable[PromSample], metric: str, match: Mapping[str, str], source: str
) -> Histogram | None:
    """Sum the series of `metric` whose labels include `match` (like sum by (le)); None if none."""
    buckets: dict[float, float] = {}
    count: float | None = None
    found = False
    for s in samples:
        if any(s.labels.get(k) != v for k, v in match.items()):
            continue
        if s.name == metric + "_bucket":
            le_text = s.labels.get("le")
            if le_text is None:
                raise ParseError(source, s.line, f"{metric}_bucket sample without an 'le' label")
            try:
                le = float(le_text)
            except ValueError:
                raise ParseError(source, s.line, f"bad 'le' value {le_text!r}") from None
            if math.isnan(le):
                raise ParseError(source, s.line, "'le' is NaN")
            buckets[le] = buckets.get(le, 0.0) + s.value
            found = True
        elif s.name == metric + "_count":
            count = (count or 0.0) + s.value
            found = True
    if not found:
        return None
    return Histogram(tuple(sorted(buckets.items())), count)


def histogram_delta(cur: Histogram, prev: Histogram | None) -> Histogram:
    """Observations between two scrapes. Per series, a counter that went down was reset (the
    server restarted): its delta is its current value, as PromQL's rate()/increase() assume."""
    if prev is None:
        return cur
    before = dict(prev.buckets)
    reset = cur.total < prev.total  # the whole histogram restarted
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
