"""Observation traces: what `tailguard record` writes and `tailguard replay --shadow` reads.

Format `tailguard.trace/2`, JSON lines (UTF-8, one object per line):

    {"kind": "header", "schema": "tailguard.trace/2", "host": NAME, "created": ISO8601,
     "spec": <fsm.codec.encode(HostSpec)>}
    {"kind": "obs", "obs": <fsm.codec.encode(Observation)>}          one per tick
    {"kind": "decision", ...}                                         optional; readers skip it

/2 adds `over_slo` to each latency window (requests over the tenant's SLO; null when the source
cannot tell). `tailguard.trace/1` files still read: their windows carry no `over_slo`, so it is None
(unknown), whatever a /1 line holds under that key; their spec's `move_outage_s` and
`reconfig_outage_s` (the tenant fields of that time) are read as `relaunch_s` and `reconfig_s`.

The writer is line-buffered and fsyncs every few seconds, so a crash loses at most the last few
seconds and leaves at worst one torn line, which the reader skips and reports (with its line
number) through `on_cut`: the last line without its newline, or, after a restart appended to the
file, a line whose JSON stops short. Any other bad line is an error naming the file and the line
number. A file that grows past `max_bytes` is rotated to
`PATH.1` (older ones shift to `.2`, ... up to `keep`), and the new file starts with a fresh header,
so every file can be read on its own.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from fsm.codec import DecodeError, decode_as, encode
from fsm.observation import Observation
from fsm.spec import HostSpec
from replay.policy_ranges import policy_problems
from schema.files import STREAM_ERRORS, open_text
from schema.jsontext import JsonTextError, loads_json

SCHEMA = "tailguard.trace/2"
SCHEMA_V1 = "tailguard.trace/1"
READABLE = (SCHEMA, SCHEMA_V1)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class TraceError(Exception):
    """A trace that cannot be read; the message names the file and, for a bad line, its number."""

    def __init__(self, file: str, message: str, line: int | None = None) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message}")
        self.file = file
        self.line = line


@dataclass(frozen=True, slots=True)
class TraceHeader:
    schema: str
    host: str
    created: str
    spec: HostSpec


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


class TraceWriter:
    """Append observations to a trace file. Not thread-safe; one writer per file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        host: str,
        spec: HostSpec,
        max_bytes: int = DEFAULT_MAX_BYTES,
        fsync_every_s: float = 5.0,
        keep: int = 5,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = Path(path)
        self.host = host
        self.spec = spec
        self.max_bytes = max_bytes
        self.fsync_every_s = fsync_every_s
        self.keep = max(1, keep)
        self._spec_json = encode(spec)  # encoded once: the spec is static for a writer
        self._f: IO[str] | None = None
        self._bytes = 0
        self._last_sync = time.monotonic()
        if self._older_schema():
            self._shift()  # records of this schema never go under another schema's header
        self._open()

    # -- file handling -------------------------------------------------------------------------
    def _older_schema(self) -> bool:
        try:
            with open(self.path, encoding="utf-8") as f:
                first = f.readline()
        except (OSError, UnicodeDecodeError):
            return False
        try:
            head = loads_json(first)
        except json.JSONDecodeError:
            return False
        return isinstance(head, dict) and head.get("kind") == "header" and head.get("schema") != SCHEMA

    def _shift(self) -> None:
        """PATH -> PATH.1, PATH.1 -> PATH.2, ... (up to `keep`)."""
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = self.path.exists() and self.path.stat().st_size > 0
        self._f = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - kept open
        self._bytes = self.path.stat().st_size
        if exists and not self._ends_with_newline():
            # A torn last line from a crash: start on a fresh line so ours stay parseable.
            self._emit("\n")
        if not exists:
            header = {
                "kind": "header",
                "schema": SCHEMA,
                "host": self.host,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "spec": self._spec_json,
            }
            self._emit(_dumps(header) + "\n")
            self._sync()

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def _emit(self, text: str) -> None:
        assert self._f is not None, "trace writer is closed"
        self._f.write(text)
        self._bytes += len(text.encode("utf-8"))

    def _sync(self) -> None:
        if self._f is None:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._last_sync = time.monotonic()

    def _rotate(self) -> None:
        assert self._f is not None
        self._sync()
        self._f.close()
        self._f = None
        self._shift()
        self._open()

    # -- API -------------------------------------------------------------------------------------
    def write(self, obs: Observation) -> None:
        self.write_record({"kind": "obs", "obs": encode(obs)})

    def write_record(self, record: dict[str, Any]) -> None:
        """Write one line (an observation or a `decision` record readers skip)."""
        if self._f is None:
            raise ValueError(f"{self.path}: trace writer is closed")
        line = _dumps(record) + "\n"
        if self._bytes + len(line) > self.max_bytes and self._bytes > 0:
            self._rotate()
        self._emit(line)
        if time.monotonic() - self._last_sync >= self.fsync_every_s:
            self._sync()

    def flush(self) -> None:
        self._sync()

    def close(self) -> None:
        if self._f is not None:
            self._sync()
            self._f.close()
            self._f = None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_header(file: str, line: str) -> TraceHeader:
    try:
        data = loads_json(line)
    except json.JSONDecodeError as e:
        raise TraceError(file, f"header is not JSON: {e.msg}", 1) from None
    if not isinstance(data, dict) or data.get("kind") != "header":
        raise TraceError(file, 'the first line must be the header ({"kind": "header", ...})', 1)
    schema = data.get("schema")
    if schema not in READABLE:
        known = ", ".join(repr(x) for x in READABLE)
        raise TraceError(file, f"unsupported schema {schema!r} (this reader knows {known})", 1)
    for key in ("host", "created"):
        if not isinstance(data.get(key), str):
            raise TraceError(file, f"header.{key}: expected a string", 1)
    raw_spec = _v1_spec(data.get("spec")) if schema == SCHEMA_V1 else data.get("spec")
    try:
        spec = decode_as(HostSpec, raw_spec, "header.spec")
    except (DecodeError, ValueError, TypeError) as e:
        raise TraceError(file, f"bad spec: {e}", 1) from None
    bad = policy_problems(spec.policy)
    if bad:  # the decision core divides by some (sm_busy, y_windows): a shadow replay would crash
        raise TraceError(file, "bad spec: " + "; ".join(f"header.spec.policy.{p}" for p in bad), 1)
    return TraceHeader(schema=schema, host=data["host"], created=data["created"], spec=spec)


def read_trace(
    path: str | os.PathLike[str], on_cut: Callable[[int], None] | None = None
) -> tuple[TraceHeader, Iterator[Observation]]:
    """The header (read now) and a lazy iterator over the observations.

    A line cut short by a crash (see the module docstring) is skipped and its number given to
    `on_cut`; any other bad line raises TraceError naming the file and line number.
    """
    file = str(path)
    try:
        f = open_text(path)  # closed by the generator; decompressed if gzip, bzip2 or xz
    except OSError as e:
        raise TraceError(file, f"cannot read: {e.strerror or e}") from None
    try:
        first = f.readline()
    except UnicodeDecodeError as e:
        f.close()
        raise TraceError(file, f"not UTF-8 text: {e.reason}", 1) from None
    except STREAM_ERRORS as e:
        f.close()
        raise TraceError(file, f"cannot read: {e}", 1) from None
    if not first.strip():
        f.close()
        raise TraceError(file, "empty trace (no header)", 1)
    try:
        header = _parse_header(file, first)
    except TraceError:
        f.close()
        raise
    return header, _observations(f, file, on_cut, v1=header.schema == SCHEMA_V1)


def _v1_spec(spec: Any) -> Any:
    """A /1 header's spec as today's TenantSpec reads it: the outage figures the recording host
    budgeted with (move_outage_s, reconfig_outage_s) carry over as relaunch_s and reconfig_s."""
    tenants = spec.get("tenants") if isinstance(spec, dict) else None
    if isinstance(tenants, dict):
        for t in tenants.values():
            if not isinstance(t, dict):
                continue
            for old, new in (("move_outage_s", "relaunch_s"), ("reconfig_outage_s", "reconfig_s")):
                if old in t:
                    value = t.pop(old)
                    t.setdefault(new, value)
    return spec


def _v1_windows(obs: Any) -> Any:
    """A /1 observation as /2 reads it: no latency window knows its requests over the SLO."""
    tenants = obs.get("tenants") if isinstance(obs, dict) else None
    if isinstance(tenants, dict):
        for ts in tenants.values():
            lat = ts.get("latency") if isinstance(ts, dict) else None
            if isinstance(lat, dict):
                lat.pop("over_slo", None)
    return obs


def _cut_short(line: str, e: json.JSONDecodeError) -> bool:
    """The JSON parser ran out of text: a line that stops mid-record, not one that is garbage."""
    return e.msg.startswith("Unterminated string") or e.pos >= len(line.rstrip("\n"))


def _observations(
    f: IO[str], file: str, on_cut: Callable[[int], None] | None, v1: bool = False
) -> Iterator[Observation]:
    with f:
        lineno = 1
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                raise TraceError(file, f"not UTF-8 text: {e.reason}", lineno + 1) from None
            except STREAM_ERRORS as e:  # a compressed trace cut short or damaged
                raise TraceError(file, f"cannot read: {e}", lineno + 1) from None
            if not line:
                return
            lineno += 1
            torn = not line.endswith("\n")
            if not line.strip():
                continue
            try:
                data = loads_json(line)
            except JsonTextError as e:  # a whole line refused for what it says (a key twice): no column
                raise TraceError(file, f"not JSON: {e.msg}", lineno) from None
            except json.JSONDecodeError as e:
                if torn or (line.lstrip().startswith("{") and _cut_short(line, e)):
                    # The writer died mid-line (a restart starts on a fresh line): skipped, reported.
                    if on_cut is not None:
                        on_cut(lineno)
                    continue
                raise TraceError(file, f"not JSON: {e.msg} at column {e.colno}", lineno) from None
            if not isinstance(data, dict):
                raise TraceError(file, "expected a JSON object", lineno)
            kind = data.get("kind")
            if kind in ("decision", "header"):
                continue  # decisions are for people; a header may start a concatenated file
            if kind != "obs":
                raise TraceError(file, f"unknown record kind {kind!r} (expected obs, decision or header)", lineno)
            raw = _v1_windows(data.get("obs")) if v1 else data.get("obs")
            try:
                yield decode_as(Observation, raw, "obs")
            except (DecodeError, ValueError, TypeError) as e:
                raise TraceError(file, f"bad observation: {e}", lineno) from None
