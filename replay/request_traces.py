"""Request traces a sensitive tenant's arrivals can come from, told apart by the file's first line:

- the Azure LLM inference trace (the 2023 `conv` and `code` traces and the 2024 week-long ones,
  github.com/Azure/AzurePublicDataset): CSV `TIMESTAMP,ContextTokens,GeneratedTokens`, ISO times
  (the 2023 traces' naive, with seven digits of a second; the 2024 ones' with a UTC offset); and
  its multimodal sibling, the Azure LMM inference trace 2025 (`TIMESTAMP,NumImages,ContextTokens,
  GeneratedTokens`: the same columns found by name, `NumImages` not used);
- BurstGPT (Wang et al., arXiv 2401.17644; github.com/HPMLL/BurstGPT): CSV `Timestamp,Model,Request
  tokens,Response tokens,Total tokens,Log Type`, seconds from the trace's start (failed requests,
  0 response tokens, are arrivals too);
- Mooncake (Qin et al., FAST '25; github.com/kvcache-ai/Mooncake): JSON lines with `timestamp`
  (milliseconds from the first request), `input_length`, `output_length` (`hash_ids` not used);
- the Alibaba Qwen-Bailian traces (Wang et al., "KVCache Cache in the Wild", ATC '25;
  github.com/alibaba-edu/qwen-bailian-usagetraces-anon): JSON lines with the same three keys, but
  `timestamp` in *seconds* from the trace's start (61.114), told apart by the session keys every
  record of theirs carries (`chat_id`, `parent_chat_id`, `turn`). Read as Mooncake's, a two-hour
  trace played in 7 s.

Each gives (arrival seconds from the earliest request, context tokens, generated tokens), in
arrival order. A bad line is a ValueError naming the file and the line.
"""

from __future__ import annotations

import csv
import math
from array import array
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

import numpy as np

from replay.queueing import Array
from schema.files import STREAM_ERRORS, open_text
from schema.jsontext import loads_json

Trace = tuple[Array, Array, Array]
# Arrival seconds, context and generated tokens as read: C doubles (a week of the Azure trace is
# tens of millions of rows; Python lists of floats would take four times the memory).
_Columns = tuple["array[float]", "array[float]", "array[float]"]
_BURSTGPT = ("Timestamp", "Request tokens", "Response tokens")
_AZURE = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")  # the last may be absent
MIN_SPAN_S = 1.0  # the shortest span of arrivals a trace may have (two requests or more)
# The most tokens one request can have (a scenario's `tokens` and `generated_tokens` too): the
# longest context any model offers is 10 million tokens (Llama 4 Scout); the longest output any
# allows is about 128 thousand. A trace row of 1e9 made a 60 s replay run for minutes (a batched
# server simulates its decodes step by step).
MAX_CONTEXT_TOKENS = 10_000_000
MAX_GENERATED_TOKENS = 1_000_000


def read_request_trace(path: str) -> Trace:
    # utf-8-sig: a CSV saved by a spreadsheet starts with a byte-order mark; gzip, bzip2 or xz: as
    # public traces ship
    with open_text(path, encoding="utf-8-sig", newline="") as f:
        first = next(_lines(path, f), (1, ""))[1]
        f.seek(0)
        if first.lstrip().startswith("{"):
            return _finish(path, *_json_lines(path, f))
        rows = _rows(path, f)
        head = next(rows, None)
        names = [h.strip() for h in head[1]] if head is not None else []
        if all(c in names for c in _AZURE[:2]):
            return _finish(path, *_azure(path, rows, [names.index(c) if c in names else -1 for c in _AZURE]))
        if all(c in names for c in _BURSTGPT):
            return _finish(path, *_burstgpt(path, rows, [names.index(c) for c in _BURSTGPT]))
    raise ValueError(
        f"{path}:1: not a request trace this reads: expected the Azure LLM trace's header"
        " TIMESTAMP,ContextTokens,GeneratedTokens (its multimodal one with NumImages too), BurstGPT's"
        " Timestamp,Model,Request tokens,Response tokens,..., or Mooncake's or Qwen-Bailian's JSON lines"
    )


def _rows(path: str, f: IO[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each CSV row (a line that cannot be read: _lines says so)."""
    rows = csv.reader(line for _, line in _lines(path, f))
    n = 0
    while True:
        n += 1
        try:
            row = next(rows, None)
        except csv.Error as e:  # a NUL byte, an unterminated quote
            raise ValueError(f"{path}:{n}: not CSV: {e}") from None
        if row is None:
            return
        yield n, row


def _count(text: Any, what: str, limit: float) -> float:
    """A token count: finite and >= 0 (nan, inf or a negative one would reach the service times),
    at most `limit` (a request of a billion tokens simulated for minutes)."""
    v = float(text)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError("token counts must be finite and >= 0")
    if v > limit:
        raise ValueError(f"{what} {v:g}: at most {limit:.0f} tokens a request (docs/scenarios.md)")
    return v


def _context(text: Any, what: str) -> float:
    return _count(text, what, MAX_CONTEXT_TOKENS)


def _generated(text: Any, what: str) -> float:
    return _count(text, what, MAX_GENERATED_TOKENS)


def _instant(text: str) -> datetime:
    """An ISO time, whole: cut to 26 characters before (for 3.10's parser, which took no seventh
    digit of a second), a 2024 row with a fraction lost its UTC offset and one without (a whole
    second) kept it, and the two could not be subtracted."""
    return datetime.fromisoformat(text.strip())


def _azure(path: str, rows: Iterator[tuple[int, list[str]]], cols: list[int]) -> _Columns:
    times, tokens, generated = _columns()
    at_col, tok_col, gen_col = cols
    need = max(at_col, tok_col) + 1  # GeneratedTokens may be absent, or empty in a row
    t0: datetime | None = None
    for n, row in rows:
        if not any(c.strip() for c in row):
            continue  # a blank line (as BurstGPT's and Mooncake's readers skip them)
        try:
            if len(row) < need:
                raise ValueError(f"{len(row)} field(s); the header puts TIMESTAMP and ContextTokens in {need}")
            ts = _instant(row[at_col])
            if t0 is not None and (ts.tzinfo is None) != (t0.tzinfo is None):
                raise ValueError(
                    f"a time {'without' if ts.tzinfo is None else 'with'} a UTC offset where the first row's"
                    f" {'has one' if t0.tzinfo is not None else 'has none'}: which zone it is in is not known"
                )
            tok = _context(row[tok_col], "ContextTokens")
            has_gen = 0 <= gen_col < len(row) and row[gen_col].strip()
            gen = _generated(row[gen_col], "GeneratedTokens") if has_gen else 0.0
            at = (ts - (t0 or ts)).total_seconds()
        except (ValueError, OverflowError) as e:
            raise ValueError(f"{path}:{n}: bad row {row!r}: {e}") from None
        t0 = t0 or ts
        times.append(at)
        tokens.append(tok)
        generated.append(gen)
    return times, tokens, generated


def _burstgpt(path: str, rows: Iterator[tuple[int, list[str]]], cols: list[int]) -> _Columns:
    times, tokens, generated = _columns()
    at_col, tok_col, gen_col = cols
    need = max(cols) + 1  # fields up to the last of the three read (a short row: a cut-off line)
    for n, row in rows:
        if not any(c.strip() for c in row):
            continue  # a blank line
        try:
            if len(row) < need:
                raise ValueError(f"{len(row)} field(s); the header puts Timestamp and the token counts in {need}")
            at = float(row[at_col])
            if not math.isfinite(at):
                raise ValueError("Timestamp must be finite")
            tok, gen = _context(row[tok_col], "Request tokens"), _generated(row[gen_col], "Response tokens")
        except (ValueError, OverflowError) as e:
            raise ValueError(f"{path}:{n}: bad row {row!r}: {e}") from None
        times.append(at)
        tokens.append(tok)
        generated.append(gen)
    return times, tokens, generated


# Keys every record of the Qwen-Bailian traces has and Mooncake's have not: their times are seconds.
_BAILIAN_KEYS = ("chat_id", "parent_chat_id", "turn")


def _json_lines(path: str, f: IO[str]) -> _Columns:
    """Mooncake's JSON lines (milliseconds) or Qwen-Bailian's (seconds): the first record decides,
    and a later one of the other kind is refused, since one file with both units has no time scale."""
    times, tokens, generated = _columns()
    seconds: bool | None = None
    for n, line in _lines(path, f):
        if not line.strip():
            continue
        try:
            rec = loads_json(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
            stamp = float(rec["timestamp"])
            if not math.isfinite(stamp):
                raise ValueError("timestamp must be finite")
            tok = _context(rec["input_length"], "input_length")
            gen = _generated(rec.get("output_length", 0), "output_length")
            bailian = all(k in rec for k in _BAILIAN_KEYS)
            if seconds is None:
                seconds = bailian
            elif bailian != seconds:
                first, this = ("Qwen-Bailian's", "Mooncake's") if seconds else ("Mooncake's", "Qwen-Bailian's")
                raise ValueError(
                    f"a record of {this} kind ({'with' if bailian else 'without'} {', '.join(_BAILIAN_KEYS)})"
                    f" where the first was {first}: their times are seconds and milliseconds"
                )
        except KeyError as e:
            raise ValueError(f"{path}:{n}: no {e.args[0]!r}") from None
        except (ValueError, TypeError, OverflowError) as e:  # JSONDecodeError is a ValueError;
            # OverflowError: an integer past a float's range (JSON's have no bound)
            raise ValueError(f"{path}:{n}: bad line: {e}") from None
        times.append(stamp if seconds else stamp / 1000.0)
        tokens.append(tok)
        generated.append(gen)
    return times, tokens, generated


def _lines(path: str, f: IO[str]) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line; one that cannot be read is a ValueError naming it."""
    n = 0
    while True:
        n += 1
        try:
            line = f.readline()
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{n}: not UTF-8 text: {e.reason}") from None
        except STREAM_ERRORS as e:
            raise ValueError(f"{path}:{n}: cannot read: {e}") from None
        if not line:
            return
        yield n, line


def _columns() -> _Columns:
    return array("d"), array("d"), array("d")


def _finish(path: str, times: array[float], tokens: array[float], generated: array[float]) -> Trace:
    if not times:
        raise ValueError(f"{path}: no requests")
    t, tok, gen = (np.frombuffer(c, dtype=np.float64).copy() for c in (times, tokens, generated))
    span = float(t.max()) - float(t.min())  # Python floats: past a float's range, inf and no warning
    if not math.isfinite(span):
        raise ValueError(f"{path}: its arrival times span more than a float holds ({t.min():g} to {t.max():g})")
    if t.size > 1 and span < MIN_SPAN_S:
        # It is replayed in cycles of its span: one of nothing would never advance, one of a few
        # microseconds would take the simulator ~1e6 cycles a tick.
        raise ValueError(
            f"{path}: its {t.size} requests arrive within {span:.3g} s; a request trace must span at least"
            f" {MIN_SPAN_S:g} s (it is replayed in cycles of its length)"
        )
    if t.size > 1 and bool(np.any(np.diff(t) < 0)):
        # Logs merged from several front ends, or written at completion, are not in arrival order:
        # arrivals are, so sort them (stably).
        order = np.argsort(t, kind="stable")
        t, tok, gen = t[order], tok[order], gen[order]
    if t.size > 1 and np.count_nonzero(np.diff(t) == 0) >= TIED_SHARE * (t.size - 1):
        t, tok, gen = _spread_ties(t, tok, gen)
    return t - t[0], tok, gen


# A trace whose times are rounded to a coarse step shows it in ties: BurstGPT's are whole
# seconds, the Mooncake traces' about 3 s apart (0, 3000, 5999, 9000 ms). At and above this share
# of requests tied with the one before, the trace is taken for rounded.
TIED_SHARE = 0.05


def _spread_ties(t: Array, tok: Array, gen: Array) -> Trace:
    """A rounded trace's requests spread over the step their time was rounded to: replayed as they
    stand, each step's requests arrived together, a batch every 3 s that made every prefill but the
    first wait for the others (vLLM-sized tenants 70% over a TTFT SLO they met within 10% on the
    same requests unrounded). The step is the tenth percentile of the gaps between distinct times
    (not the shortest: a trace rounded to 3 s with a millisecond of jitter has 5999 and 6000 ms
    both, and a 1 ms step would spread nothing); a time's requests go to uniform draws over
    [time, time + step), cut at the next time (as a Poisson process places a known count in an
    interval), from a generator seeded by the request count: the same trace reads the same every
    time. Rows keep their tokens."""
    distinct, counts = np.unique(t, return_counts=True)
    gaps = np.diff(distinct)
    step = float(np.quantile(gaps, 0.1, method="lower")) if gaps.size else MIN_SPAN_S
    width = np.minimum(np.append(gaps, step), step)
    spread = t + np.random.default_rng(t.size).random(t.size) * np.repeat(width, counts)
    order = np.argsort(spread, kind="stable")
    return spread[order], tok[order], gen[order]
