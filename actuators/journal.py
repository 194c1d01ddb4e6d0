"""The actuation journal (write-ahead log): one JSON object per line, fsync'd.

Every operation writes an `intent` record before it touches the host and an `outcome` record
after; recovery reads the tail to find what may be applied. Rotation by size: the current file is
renamed to .1 (older ones shift, the oldest is dropped) and the new file starts with a `snapshot`
record holding everything recovery needs, so dropping old files loses nothing.

A record is whole or absent:
- a short write (ENOSPC in the middle of a line) is cut off again at once, and a torn last line
  left by a crash is cut off when the file is next opened, so the next record never lands glued
  onto half a line;
- before each append the open descriptor is compared with the path (st_dev/st_ino, st_nlink): a
  deleted or replaced file (or state dir) is reopened and a snapshot written first, so the new file
  holds everything tailguard owns; when it cannot be reopened the append fails loudly.
Write failures raise JournalError and are counted in `stats` (by errno name); the caller decides
(no new cap without its intent; lifting goes on).

Records carry `v` (SCHEMA_VERSION). Records without `v` were written before versioning (version 0,
same fields) and are read as they are. See docs/actuators.md ("Journal versions").
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schema.files import read_small_bytes
from schema.jsontext import loads_json

log = logging.getLogger("tailguard.journal")

SCHEMA_VERSION = 1  # 0: records without "v" (before versioning); 1: "v" added, fields unchanged
_TAIL_CHUNK = 64 << 10


class JournalError(Exception):
    """The journal cannot be written (disk full, read-only, EIO). Fail safe: apply nothing new."""

    def __init__(self, message: str, code: str = "EIO") -> None:
        super().__init__(message)
        self.code = code  # errno name (ENOSPC, EROFS, EACCES, ...), what the metrics count by


# The most of one journal file read: it rotates at max_bytes (4 MiB by default), a snapshot and an
# append may pass that; 256 MiB is none that rotation left.
MAX_FILE_BYTES = 256 << 20


@dataclass(slots=True)
class JournalStats:
    appends_total: int = 0
    errors_total: dict[str, int] = field(default_factory=dict)  # errno name -> failed appends
    torn_repairs_total: int = 0  # torn tails cut off before an append
    reopens_total: int = 0  # the file (or its directory) was deleted or replaced under us
    skipped_lines_total: int = 0  # lines recovery could not decode (torn, garbage)
    newer_records_total: int = 0  # records of a later schema version (read as far as understood)
    failing_since: float | None = None  # time.time() of the first failure of the current run
    last_error: str = ""

    @property
    def failing(self) -> bool:
        return self.failing_since is not None


@dataclass(frozen=True, slots=True)
class Located:
    """A record and where it was read (file:line), for messages that point at the bad one."""

    where: str
    rec: dict[str, Any]


def _code(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, "EIO")


class Journal:
    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int = 4 << 20,
        keep: int = 3,
        snapshot: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.snapshot = snapshot  # called on rotation and reopen: the state to carry into the new file
        self.stats = JournalStats()
        self.unreadable: list[str] = []  # files that exist and could not be read (recovery reports them)
        self._seq = 0
        self._fd: int | None = None
        self._torn = False  # a torn tail could not be cut: the next record starts with a newline

    # ------------------------------------------------------------------ the open file

    def _open(self) -> int:
        if self._fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise JournalError(f"journal {self.path}: cannot open: {e.strerror}", _code(e)) from None
            self._fd = fd
            self._repair_tail(fd)
        return self._fd

    def _repair_tail(self, fd: int) -> None:
        """Cut a torn last line (no trailing newline) off, so the next record starts a line."""
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                return
            end = st.st_size
            if os.pread(fd, 1, end - 1) == b"\n":
                return
            pos = end
            keep = 0
            while pos > 0:  # the last newline, reading backwards in chunks
                start = max(0, pos - _TAIL_CHUNK)
                i = os.pread(fd, pos - start, start).rfind(b"\n")
                if i >= 0:
                    keep = start + i + 1
                    break
                pos = start
            os.ftruncate(fd, keep)
            os.fsync(fd)
        except OSError as e:
            # Not fatal here: the record that follows starts with a newline instead (see _write).
            self._torn = True
            log.warning("journal %s: cannot cut the torn last line: %s", self.path, e.strerror)
            return
        self.stats.torn_repairs_total += 1
        log.warning("journal %s: cut a torn last line (%d bytes) before appending", self.path, end - keep)

    def _stale(self, fd: int) -> str:
        """Why the open descriptor no longer is the file at self.path ('' when it still is)."""
        try:
            fst = os.fstat(fd)
        except OSError as e:
            return f"fstat failed: {e.strerror}"
        if not stat.S_ISREG(fst.st_mode):
            return ""  # a device (tests use /dev/full): nothing to compare
        try:
            pst = os.stat(self.path)
        except FileNotFoundError:
            return "the journal file (or its directory) was deleted"
        except OSError as e:
            return f"stat failed: {e.strerror}"
        if fst.st_nlink == 0:
            return "the journal file was deleted"
        if (fst.st_dev, fst.st_ino) != (pst.st_dev, pst.st_ino):
            return "the journal file (or its directory) was replaced"
        return ""

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    # ------------------------------------------------------------------ writing

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one record and fsync it; raises JournalError when that is not possible."""
        try:
            rec = self._append(kind, fields)
        except JournalError as e:
            st = self.stats
            st.errors_total[e.code] = st.errors_total.get(e.code, 0) + 1
            if st.failing_since is None:
                st.failing_since = time.time()
                log.error("%s (journal writes failing from now on; no new cap is applied)", e)
            st.last_error = str(e)
            raise
        if self.stats.failing_since is not None:
            log.warning("journal %s: writable again after %.0f s", self.path, time.time() - self.stats.failing_since)
            self.stats.failing_since = None
        self.stats.appends_total += 1
        return rec

    def _append(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        fd = self._open()
        why = self._stale(fd)
        if why:
            self.stats.reopens_total += 1
            log.error("journal %s: %s; reopening it%s", self.path, why,
                      " and writing a snapshot of what tailguard owns" if self.snapshot else "")  # fmt: skip
            self.close()
            fd = self._open()
            if self.snapshot is not None and kind != "snapshot":
                self._write(fd, "snapshot", {"state": self.snapshot(), "note": f"reopened: {why}"})
        if kind != "snapshot":
            # Rotate before writing, so the snapshot holds the state this record builds on.
            try:
                if os.fstat(fd).st_size > self.max_bytes:
                    self.rotate()
                    fd = self._open()
            except OSError as e:
                raise JournalError(f"journal {self.path}: cannot rotate: {e.strerror}", _code(e)) from None
        return self._write(fd, kind, fields)

    def _write(self, fd: int, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        self._seq += 1
        rec = {"v": SCHEMA_VERSION, "t": time.time(), "seq": self._seq, "kind": kind, **fields}
        line = (json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n").encode()
        if self._torn:
            line = b"\n" + line
        try:
            n = os.write(fd, line)
        except OSError as e:
            self.close()  # reopened (and its tail checked) by the next append
            raise JournalError(f"journal {self.path}: cannot write: {e.strerror}", _code(e)) from None
        if n != len(line):
            # A short write (the disk filled up mid-line): take the partial line back at once.
            cut = False
            with contextlib.suppress(OSError):
                os.ftruncate(fd, os.fstat(fd).st_size - n)
                cut = True
            if cut:
                self.stats.torn_repairs_total += 1
            self.close()
            raise JournalError(f"journal {self.path}: cannot write: short write ({n} of {len(line)} bytes, "
                               "No space left on device?)", "ENOSPC")  # fmt: skip
        try:
            os.fsync(fd)
        except OSError as e:
            self.close()
            raise JournalError(f"journal {self.path}: cannot fsync: {e.strerror}", _code(e)) from None
        self._torn = False
        return rec

    def rotate(self) -> None:
        self.close()
        for i in range(self.keep - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.path.exists():
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        oldest = self.path.with_name(f"{self.path.name}.{self.keep + 1}")
        with contextlib.suppress(FileNotFoundError):
            oldest.unlink()
        _fsync_dir(self.path.parent)
        if self.snapshot is not None:
            self._write(self._open(), "snapshot", {"state": self.snapshot()})

    # ------------------------------------------------------------------ reading

    def files(self) -> list[Path]:
        """Oldest first."""
        rotated = [self.path.with_name(f"{self.path.name}.{i}") for i in range(self.keep, 0, -1)]
        return [p for p in [*rotated, self.path] if p.exists()]

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable record, oldest first; torn or garbage lines are skipped (and counted)."""
        for f in self.files():
            yield from (r.rec for r in self._read(f))

    def tail_from_snapshot(self) -> list[dict[str, Any]]:
        return [r.rec for r in self.tail_located()]

    def tail_located(self) -> list[Located]:
        """The records from the latest snapshot on (everything when there is none), with file:line.

        Files are read newest first and older ones only while no snapshot has been found: every
        rotated-to file starts with one, so a restart parses one file, not all `keep + 1`."""
        newer: list[Located] = []
        for f in reversed(self.files()):
            recs = self._read(f)
            for i in range(len(recs) - 1, -1, -1):
                if recs[i].rec["kind"] == "snapshot":
                    return recs[i:] + newer
            newer = recs + newer
        return newer

    def _read(self, f: Path) -> list[Located]:
        try:
            recs, skipped = read_file(f)
        except OSError as e:  # the other files are still read; recovery reports this one
            why = f"journal {f}: cannot read: {e.strerror or type(e).__name__}"
            log.warning("%s", why)
            if why not in self.unreadable:
                self.unreadable.append(why)
            return []
        self.stats.skipped_lines_total += len(skipped)
        for where in skipped[:5]:
            log.warning("journal %s; the line is skipped", where)
        newer = sum(1 for r in recs if _version(r.rec) > SCHEMA_VERSION)
        if newer:
            self.stats.newer_records_total += newer
            log.warning("journal %s: %d records of a newer schema version than %d (a downgrade?); read as far as "
                        "their fields are known", f, newer, SCHEMA_VERSION)  # fmt: skip
        return recs


def _version(rec: dict[str, Any]) -> int:
    v = rec.get("v", 0)
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def file_bytes(f: Path) -> bytes:
    """A journal file's bytes: b"" when it does not exist; OSError when it cannot be read, or is no
    regular file (a FIFO there blocked the daemon's start for good), or holds more than
    MAX_FILE_BYTES (a link to /dev/zero took memory without bound)."""
    try:
        return read_small_bytes(f, MAX_FILE_BYTES)
    except FileNotFoundError:
        return b""


def read_file(f: Path) -> tuple[list[Located], list[str]]:
    """(records, where the undecodable lines were and why: "file:line: why") of one journal file;
    OSError when it cannot be read (file_bytes). Version 0 records (no "v") read like version 1."""
    data = file_bytes(f)
    out: list[Located] = []
    skipped: list[str] = []
    for i, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            rec = loads_json(raw)
        except json.JSONDecodeError as e:  # torn, garbage, or refused whole (a key given twice)
            skipped.append(f"{f}:{i}: not JSON: {e.msg}")
            continue
        if isinstance(rec, dict) and isinstance(rec.get("kind"), str):
            out.append(Located(f"{f}:{i}", rec))
        else:
            skipped.append(f"{f}:{i}: no record (an object with a kind)")
    return out, skipped


def _file_records(f: Path) -> list[dict[str, Any]]:
    return [r.rec for r in read_file(f)[0]]


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
