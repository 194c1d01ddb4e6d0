"""Reading a small file a user names (a config, a scenario, a topology, a password, a state file):
only a regular file, and only up to a size such a file never reaches.

`open()` on a FIFO blocks until someone writes to it, and `read()` of /dev/zero or /dev/urandom
never ends: a mistyped path must not hang `check-config` or the daemon's start, nor fill its memory.
The refusals are OSErrors with a strerror, so every caller's `except OSError` already names the
file and says why.

And opening a trace, which may come compressed (open_text).
"""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import stat
import zlib
from pathlib import Path
from typing import IO

# Far above any real config or topology (an NCCL XML of a 16-GPU host is ~100 KiB), far below
# what would hurt the daemon's memory.
SMALL_FILE_LIMIT = 8 << 20

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_a_file(path: str | Path) -> str | None:
    """What `path` is when it is there but not a regular file ("a directory", "a character device",
    ...), None otherwise (a regular file, a symlink to one, or nothing there)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # not there, a name too long, a NUL in it
        return None
    return None if stat.S_ISREG(mode) else _kind(mode)


def open_regular(path: str | Path) -> int:
    """A read-only descriptor of `path`, refused (OSError, EINVAL) unless a regular file. Opened
    non-blocking so that a FIFO is refused rather than waited on; a symlink to a file is fine."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"{_kind(mode)}, not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small_bytes(path: str | Path, limit: int = SMALL_FILE_LIMIT) -> bytes:
    """The whole content of regular file `path`, at most `limit` bytes (OSError EFBIG beyond:
    st_size is not trusted, /proc and sysfs files say 0)."""
    fd = open_regular(path)
    try:
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            b = os.read(fd, min(1 << 20, limit + 1 - got))
            if not b:
                break
            chunks.append(b)
            got += len(b)
    finally:
        os.close(fd)
    if got > limit:
        raise OSError(errno.EFBIG, f"larger than {limit >> 20} MiB: not a file of this kind", str(path))
    return b"".join(chunks)


def read_small_text(path: str | Path, limit: int = SMALL_FILE_LIMIT, errors: str = "strict") -> str:
    """read_small_bytes decoded as UTF-8 (UnicodeDecodeError when `errors` is strict)."""
    return read_small_bytes(path, limit).decode("utf-8", errors=errors)


# Compressed files by their first bytes (not their names: a rotated `trace.jsonl.2.gz` and a
# downloaded trace renamed by hand read alike). Public request traces ship compressed, and
# logrotate compresses a recorder's rotated parts.
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "lzma"))

# What reading a damaged compressed stream raises, beside OSError (gzip.BadGzipFile, bz2's
# "Invalid data stream"): a truncated stream ends in EOFError, corrupt deflate data in zlib.error,
# a corrupt xz stream in lzma.LZMAError. Readers report them as the file's, at the line reached.
STREAM_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error, lzma.LZMAError)


def open_text(path: str | os.PathLike[str], encoding: str = "utf-8", newline: str | None = None) -> IO[str]:
    """`path` opened for reading text, decompressed on the fly when it is gzip, bzip2 or xz. Anything but a
    regular file (a pipe) is read as plain text: sniffing would eat its first bytes."""
    if not os.path.isfile(path):
        return open(path, encoding=encoding, newline=newline)
    with open(path, "rb") as f:
        head = f.read(6)
    kind = next((k for magic, k in _MAGIC if head.startswith(magic)), None)
    if kind == "gzip":
        return gzip.open(path, "rt", encoding=encoding, newline=newline)
    if kind == "bz2":
        return bz2.open(path, "rt", encoding=encoding, newline=newline)
    if kind == "lzma":
        return lzma.open(path, "rt", encoding=encoding, newline=newline)
    return open(path, encoding=encoding, newline=newline)
