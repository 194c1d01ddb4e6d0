"""The actuation journal (write-ahead log): one JSON object per line, fsync'd.

Every operation writes an `intent` record before it touches the host and an `outcome` record
after; recovery reads the tail to find what may be applied. Rotation by size: the current file is
renamed to .1 (older ones shift, the oldest is dropped) and the new file starts with a `snapshot`
record holding everything recovery needs, so dropping old files loses nothing.
A torn last line (a crash in the middle of a write) is ignored on reading.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class JournalError(Exception):
    """The journal cannot be written (disk full, read-only, EIO). Fail safe: apply nothing new."""


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
        self.snapshot = snapshot  # called on rotation: the state to carry into the new file
        self._seq = 0
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise JournalError(f"journal {self.path}: cannot open: {e.strerror}") from None
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one record and fsync it; raises JournalError when that is not possible."""
        self._seq += 1
        rec = {"t": time.time(), "seq": self._seq, "kind": kind, **fields}
        line = (json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n").encode()
        fd = self._open()
        if kind != "snapshot":
            # Rotate before writing, so the snapshot holds the state this record builds on.
            try:
                if os.fstat(fd).st_size > self.max_bytes:
                    self.rotate()
                    fd = self._open()
            except OSError as e:
                raise JournalError(f"journal {self.path}: cannot rotate: {e.strerror}") from None
        try:
            n = os.write(fd, line)
            if n != len(line):
                raise OSError(28, "short write (No space left on device?)")
            os.fsync(fd)
        except OSError as e:
            # Leave no half line behind to confuse the next record: close, reopen on next write.
            self.close()
            raise JournalError(f"journal {self.path}: cannot write: {e.strerror}") from None
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
            self.append("snapshot", state=self.snapshot())

    def files(self) -> list[Path]:
        """Oldest first."""
        rotated = [self.path.with_name(f"{self.path.name}.{i}") for i in range(self.keep, 0, -1)]
        return [p for p in [*rotated, self.path] if p.exists()]

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable record, oldest first; torn or garbage lines are skipped."""
        for f in self.files():
            yield from _file_records(f)

    def tail_from_snapshot(self) -> list[dict[str, Any]]:
        """The records from the latest snapshot on (everything when there is none).

        Files are read newest first and older ones only while no snapshot has been found: every
        rotated-to file starts with one, so a restart parses one file, not all `keep + 1`."""
        newer: list[dict[str, Any]] = []
        for f in reversed(self.files()):
            recs = _file_records(f)
            for i in range(len(recs) - 1, -1, -1):
                if recs[i]["kind"] == "snapshot":
                    return recs[i:] + newer
            newer = recs + newer
        return newer


def _file_records(f: Path) -> list[dict[str, Any]]:
    try:
        data = f.read_bytes()
    except OSError:
        return []
    out = []
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("kind"), str):
            out.append(rec)
    return out


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
