"""Latency sources for sensitive tenants: a Prometheus histogram scrape (window quantiles from
bucket deltas between scrapes) and a JSON-lines file the tenant appends to (tailed across
rotation and truncation). MQTT ingest lives in the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from controller.signals.base import InlineOrThread, ParseError, Unavailable
from controller.signals.http import FetchError, fetch_text
from controller.signals.promtext import (
    Histogram,
    PromSample,
    histogram_delta,
    histograms_from_samples,
    parse_samples,
    restarted,
)
from fsm.histogram import slo_bucket, window_from_buckets
from fsm.observation import LatencyWindow
from fsm.quantiles import window_from_samples
from schema.files import open_regular
from schema.jsontext import finite_float, loads_json, shown

log = logging.getLogger("tailguard.latency")

Fetch = Callable[[str, float], Awaitable[str]]
# The longest latency a source may report: an hour (no request waits that long for its first
# token and is still served); 1e300 read from a file made a window's p50 5e307 s. MQTT's too.
MAX_LATENCY_S = 3600.0
# A time in Unix seconds a source reports (a JSON-lines request's, a pushed service's start): before
# 2001-09-09 is a clock that was never set, past 1e11 a timestamp in milliseconds.
UNIX_SECONDS_RANGE = (1e9, 1e11)


@dataclass(frozen=True, slots=True)
class LatencyReading:
    window: LatencyWindow
    throughput: float | None  # completed requests per second over the window, when known
    # The source restarted since the last scrape that answered (its histogram's counters went back):
    # the seconds since that scrape, about how long it served nothing (TenantSample.restarted_s)
    restarted_s: float | None = None
    # The requests the source has counted since its server started (the histogram's cumulative
    # count, this window's included) and the seconds since it started: TenantSample.served_total
    served_total: float | None = None
    uptime_s: float | None = None


# What prometheus_client's process collector exports by default on Linux (a vLLM server without
# PROMETHEUS_MULTIPROC_DIR has it): the Unix time its process started.
START_METRIC = "process_start_time_seconds"


def server_start(samples: Sequence[PromSample]) -> float | None:
    """The unlabelled process_start_time_seconds of a scrape (None: absent, or not one of them)."""
    found = [s.value for s in samples if s.name == START_METRIC and not s.labels]
    return found[0] if len(found) == 1 and math.isfinite(found[0]) and found[0] > 0 else None


def window_from_histogram(h: Histogram, slo_s: float | None = None) -> LatencyWindow:
    """The window of a histogram delta: quantiles by histogram_quantile, `over_slo` interpolated at
    the tenant's SLO (fsm.histogram, the estimator the simulator's exported histogram goes through)."""
    buckets = list(h.buckets)
    if (not buckets or not math.isinf(buckets[-1][0])) and h.count is not None:
        # A histogram's _count equals its +Inf bucket by definition of the exposition format;
        # trimmed captures (the vLLM docs excerpt) drop the +Inf line but keep _count.
        buckets.append((math.inf, h.count))
    return window_from_buckets(buckets, slo_s)


def window_from_raw(samples: Sequence[float], slo_s: float | None) -> LatencyWindow:
    """A window of raw latencies (JSON lines, MQTT pushes): exact quantiles and an exact over_slo."""
    w = window_from_samples(samples)
    over = float(sum(1 for x in samples if x > slo_s)) if slo_s is not None else None
    return LatencyWindow(w.count, w.p50, w.p99, w.p999, tuple(samples), over_slo=over)


def slo_inside_bucket(slo_s: float | None, bounds: Sequence[float], metric: str) -> tuple[str, str] | None:
    """(what, fix) when the SLO falls strictly inside a bucket of the histogram: the share over it is
    then estimated from the buckets, and a server's step-quantised latencies bunch under the upper
    bound, where the fit reads them low (a true 3.5% over a 213 ms SLO read as 0.7% in vLLM's
    100-250 ms bucket; docs/results.md, "Low request rates"). None on a bound or without an SLO."""
    bucket = slo_bucket(slo_s, bounds) if slo_s is not None else None
    if bucket is None:
        return None
    slo_ms, lo, hi = (round(1000.0 * v, 6) for v in (slo_s or 0.0, *bucket))
    return (
        f"its SLO {slo_ms:g} ms falls inside the {lo:g}-{hi:g} ms bucket of {metric}: the share over it is"
        " estimated from the buckets, and can read a violation as within budget",
        f"an SLO on a bucket bound ({lo:g} or {hi:g} ms) is counted exactly; so is a jsonl or mqtt latency source",
    )


class PrometheusLatencySampler:
    """Scrapes `<metric>_bucket` and reports the window since the previous scrape. At its first
    scrape it says, once, when the tenant's SLO falls inside one of the histogram's buckets. With
    each window goes what the histogram has counted since the server started, and its uptime when
    the scrape has process_start_time_seconds (against `wall`, the Unix clock)."""

    def __init__(
        self,
        name: str,
        url: str,
        metric: str = "vllm:time_to_first_token_seconds",
        labels: Mapping[str, str] | None = None,
        timeout_s: float = 1.0,
        fetch: Fetch = fetch_text,
        slo_s: float | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._wall = wall
        self.slo_s = slo_s  # the tenant's SLO: over_slo is interpolated there
        self.url = url
        self.metric = metric
        self.labels = dict(labels or {})
        self.timeout_s = timeout_s
        self._fetch = fetch
        self._prev: Histogram | None = None
        self._prev_t: float | None = None
        self._start: float | None = None  # the last scrape's process_start_time_seconds

    def parse(self, text: str) -> Histogram | Unavailable:
        samples = parse_samples(text, [self.metric, START_METRIC], self.url)
        self._start = server_start(samples)
        h = histograms_from_samples(samples, self.metric, self.labels, self.url)
        if h is None:
            sel = ",".join(f'{k}="{v}"' for k, v in self.labels.items())
            return Unavailable(f"{self.url}: no {self.metric}_bucket{{{sel}}} series in the scrape")
        return h

    @property
    def bounds(self) -> tuple[float, ...]:
        """The bucket upper bounds of the last scrape (empty before one)."""
        return tuple(le for le, _ in self._prev.buckets) if self._prev is not None else ()

    @property
    def history_known(self) -> bool:
        """The last scrape had process_start_time_seconds: each window carries the server's history."""
        return self._start is not None

    def bucket_note(self) -> tuple[str, str] | None:
        """slo_inside_bucket for this tenant's SLO and the last scrape's buckets."""
        return slo_inside_bucket(self.slo_s, self.bounds, self.metric)

    async def sample(self, now: float) -> LatencyReading | Unavailable:
        try:
            text = await self._fetch(self.url, self.timeout_s)
            h = self.parse(text)
        except (FetchError, ParseError) as e:
            return Unavailable(str(e))
        if isinstance(h, Unavailable):
            return h
        prev, prev_t = self._prev, self._prev_t
        self._prev, self._prev_t = h, now
        if prev is None or prev_t is None:
            note = self.bucket_note()
            if note is not None:
                log.warning("%s (%s): %s -> %s", self.name, self.url, *note)
            return Unavailable("first scrape: a window needs two scrapes")
        delta = histogram_delta(h, prev)
        window = window_from_histogram(delta, self.slo_s)
        dt = now - prev_t
        # A server that restarted counts again from zero: whoever restarted it (tailguard's move,
        # a deploy, a crash), it served nothing from about the last scrape that answered until now.
        down = dt if restarted(h, prev) else None
        uptime = self._wall() - self._start if self._start is not None else None
        up = uptime if uptime is not None and uptime > 0 else None  # a start in the future: a clock off
        total = h.total if up is not None else None
        return LatencyReading(window, window.count / dt if dt > 0 else None, down, total, up)


class JsonlLatencySampler:
    """Tails a JSON-lines file: one object per completed request with `field` in seconds.

    Starts at the end of a file that exists at the first tick (its history is not a window).
    Survives rotation (a new inode: the rest of the old file is read first, then the new one from
    the start) and truncation (size below our offset: start again from 0). A partial last line is
    kept until its newline arrives. Bad lines are counted and named, never read as zero.
    """

    MAX_READ = 8 * 1024 * 1024  # per tick; the rest is read on the next tick
    # A line (one request's JSON object) is a few hundred bytes; a partial line longer than this is
    # dropped up to its newline and counted bad: kept, a writer that never wrote one grew the
    # buffer by 16 MB a tick while every window read as no traffic.
    MAX_LINE = 1 << 20

    def __init__(
        self,
        name: str,
        path: str,
        field: str = "latency_s",
        timeout_s: float = 1.0,
        slo_s: float | None = None,
        time_field: str | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.slo_s = slo_s  # the tenant's SLO: over_slo is counted exactly against it
        self.path = path
        self.field = field
        self.timeout_s = timeout_s
        # With each request's time (Unix seconds), the lines already there at the first tick are
        # the tenant's history: (their count, the first one's time); None when not known.
        self.time_field = time_field
        self._wall = wall
        self.history: tuple[int, float] | None = None
        self._read_since = 0  # samples read since, which the count so far adds
        self._fh: BinaryIO | None = None
        self._ino: int | None = None
        self._buf = b""
        self._skipping = False  # dropping a line longer than MAX_LINE until its newline
        self._line_no = 0
        self._mtime_ns: int | None = None
        self._seen_missing = False
        self._opened = False  # a file was read: any file opened after it is new data from its start
        # (inode, offset of the first byte not yet taken, line number there) of the file a failed
        # read closed: the same file is read on from there when it opens again
        self._back: tuple[int, int, int] | None = None
        self._prev_t: float | None = None
        self.bad_lines_total = 0
        self.last_bad = ""
        self._runner = InlineOrThread()  # a local file: on the loop unless it turns out slow

    def _open(self, at_end: bool = False) -> None:
        self._close()
        # kept open across ticks on purpose; a FIFO or a device is refused, not waited on
        fh = os.fdopen(open_regular(self.path), "rb")
        self._fh = fh
        self._ino = os.fstat(fh.fileno()).st_ino
        self._buf = b""
        self._skipping = False
        self._line_no = 0
        self._opened = True
        back, self._back = self._back, None
        if back is not None and back[0] == self._ino and back[1] <= os.fstat(fh.fileno()).st_size:
            fh.seek(back[1])
            self._line_no = back[2]
        elif at_end:  # like tail -F: what was there before we started is not this window
            first = fh.readline(self.MAX_LINE + 1) if self.time_field is not None else b""
            fh.seek(0)
            # Counted a chunk at a time (line numbers for messages), not read whole: a 1 GiB log
            # took 1 GiB of memory. Then the partial last line, if any, from the end.
            while chunk := fh.read(self.MAX_READ):
                self._line_no += chunk.count(b"\n")
            size = fh.tell()
            fh.seek(max(0, size - self.MAX_LINE - 1))
            tail = fh.read()
            cut = tail.rfind(b"\n")
            if cut < 0 and size > self.MAX_LINE:
                self._skipping = True  # a partial line already too long
            else:
                self._buf = tail[cut + 1 :]
            start = self._time_of(first) if first.endswith(b"\n") else None
            self.history = (self._line_no, start) if start is not None and self._line_no > 0 else None

    def _read_chunk(self) -> bytes:
        fh = self._fh
        assert fh is not None
        return fh.read(self.MAX_READ)

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = None
        self._ino = None

    def read_new(self) -> tuple[list[float], list[str]]:
        """New samples since the last call, and the bad-line messages."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if self._fh is None:
            if st is None:
                self._seen_missing = True
                raise FileNotFoundError(f"{self.path}: no such file")
            # a file that existed when we started: tail it; one that appeared later: read it all
            # (after a failed read too: a file put in place of a directory had its lines skipped)
            self._open(at_end=not self._seen_missing and not self._opened)
        elif st is not None and st.st_ino != self._ino:
            lines = self._split(self._read_chunk())  # the rest of the rotated file
            try:
                self._open()
            except OSError:
                if not lines:
                    raise
                return self._finish(lines)  # the new file's error is the next tick's
            out = self._finish(lines, self._split(self._read_chunk()))
            self._mtime_ns = os.fstat(self._fh.fileno()).st_mtime_ns if self._fh is not None else None
            return out
        elif st is not None:
            fh = self._fh
            assert fh is not None
            pos = fh.tell()
            # shorter than what we read: truncated; same size but rewritten since: truncated and
            # refilled to the same length (copytruncate between two ticks)
            if st.st_size < pos or (st.st_size == pos and st.st_mtime_ns != self._mtime_ns):
                fh.seek(0)
                self._buf = b""
                self._line_no = 0
        out = self._finish([], self._split(self._read_chunk()))
        self._mtime_ns = os.fstat(self._fh.fileno()).st_mtime_ns if self._fh is not None else None
        return out

    def _split(self, data: bytes) -> list[tuple[int, bytes | None]]:
        """(line number, bytes) of each complete line; None for one longer than MAX_LINE."""
        data = self._buf + data
        parts = data.split(b"\n")
        self._buf = parts.pop()
        out: list[tuple[int, bytes | None]] = []
        for p in parts:
            self._line_no += 1
            out.append((self._line_no, None if self._skipping or len(p) > self.MAX_LINE else p))
            self._skipping = False
        if len(self._buf) > self.MAX_LINE:
            self._buf = b""
            self._skipping = True
        return out

    def _finish(self, *groups: list[tuple[int, bytes | None]]) -> tuple[list[float], list[str]]:
        samples: list[float] = []
        bad: list[str] = []
        for group in groups:
            for n, raw in group:
                if raw is None:
                    bad.append(f"{self.path}: line {n}: longer than {self.MAX_LINE} bytes, skipped")
                    continue
                if not raw.strip():
                    continue
                v, err = self._value(raw)
                if err:
                    bad.append(f"{self.path}: line {n}: {err}")
                elif v is not None:
                    samples.append(v)
        return samples, bad

    def _time_of(self, raw: bytes) -> float | None:
        """A line's time_field as Unix seconds (1e9 to 1e11: not a clock never set, not ms); None
        when it has none that reads as one."""
        try:
            obj = loads_json(raw)
        except (ValueError, UnicodeDecodeError):
            return None
        v = obj.get(self.time_field) if isinstance(obj, dict) and self.time_field is not None else None
        t = finite_float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
        lo, hi = UNIX_SECONDS_RANGE
        return t if t is not None and lo <= t <= hi else None

    def _value(self, raw: bytes) -> tuple[float | None, str]:
        try:
            obj = loads_json(raw)
        except (ValueError, UnicodeDecodeError) as e:
            return None, f"not JSON ({e})"
        if not isinstance(obj, dict):
            return None, "not a JSON object"
        if self.field not in obj:
            return None, f"no field {self.field!r}"
        v = obj[self.field]
        if isinstance(v, bool) or not isinstance(v, int | float):
            return None, f"field {self.field!r} is not a number: {v!r}"
        fv = finite_float(v)
        if fv is None or not 0 <= fv <= MAX_LATENCY_S:
            return None, f"field {self.field!r} is not a latency in [0, {MAX_LATENCY_S:g}] s: {shown(v)}"
        return fv, ""

    async def sample(self, now: float) -> LatencyReading | Unavailable:
        try:
            samples, bad = await self._runner.call(self.read_new)
        except OSError as e:
            fh = self._fh
            if fh is not None and not fh.closed:
                with contextlib.suppress(OSError):
                    self._back = (self._ino or 0, fh.tell() - len(self._buf), self._line_no)
            self._close()
            return Unavailable(f"{self.path}: {e.strerror or e}" if not str(e).startswith(self.path) else str(e))
        if bad:
            self.bad_lines_total += len(bad)
            self.last_bad = bad[-1]
            if not samples:
                return Unavailable(bad[-1])
        prev_t, self._prev_t = self._prev_t, now
        window = window_from_raw(samples, self.slo_s)
        tput = len(samples) / (now - prev_t) if prev_t is not None and now > prev_t else None
        self._read_since += len(samples)
        hist = self.history
        if hist is None:
            return LatencyReading(window, tput)
        # The lines there at the start and the requests read since, over the seconds since the
        # first line's time: the rate the core seeds the tenant's usual rate with (a rotated file's
        # first line is the rotation's: the rate over the file's span, as good a history).
        up = self._wall() - hist[1]
        return LatencyReading(
            window, tput, served_total=float(hist[0] + self._read_since), uptime_s=up if up > 0 else None
        )
