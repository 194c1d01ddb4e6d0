"""Confine every cgroup path to the configured root: no '..', no absolute path, no odd bytes, no
symlink that leads outside, no over-long component. Hostile names fail with a clear error."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

MAX_PATH = 1024
MAX_COMPONENT = 255  # NAME_MAX on Linux


class PathError(ValueError):
    pass


def check_rel(rel: str, what: str = "cgroup path") -> PurePosixPath:
    if not isinstance(rel, str) or not rel or len(rel) > MAX_PATH:
        raise PathError(f"{what} {rel!r}: must be a non-empty relative path of at most {MAX_PATH} characters")
    bad = [c for c in rel if c in "\0\n\r\t" or ord(c) < 32]
    if bad:
        raise PathError(f"{what} {rel!r}: must not contain control characters (NUL, newline, tab)")
    if not rel.isascii():
        try:
            rel.encode()
        except UnicodeEncodeError:  # a lone surrogate (a non-UTF-8 name read with surrogateescape)
            raise PathError(f"{what} {rel!r}: must be valid UTF-8 text") from None
    p = PurePosixPath(rel)
    if p.is_absolute():
        raise PathError(f"{what} {rel!r}: must be relative to the cgroup root (no leading '/')")
    for part in rel.split("/"):  # the raw text: PurePosixPath would drop '.' silently
        if part in (".", ".."):
            raise PathError(f"{what} {rel!r}: must not contain '.' or '..' components")
        if len(part.encode()) > MAX_COMPONENT:
            raise PathError(f"{what} {rel!r}: component longer than {MAX_COMPONENT} bytes")
    return p


def confine(root: str | os.PathLike[str], rel: str, what: str = "cgroup path") -> Path:
    """root/rel after resolving symlinks, guaranteed to lie inside root (or be root itself).

    The directory need not exist (a tenant's group may come and go); whatever part exists is
    resolved, so a symlink anywhere on the way that points outside is refused."""
    p = check_rel(rel, what)
    base = Path(os.path.realpath(root))
    full = Path(os.path.realpath(base / p))
    if full != base and base not in full.parents:
        raise PathError(f"{what} {rel!r}: resolves to {full}, outside the cgroup root {base}")
    return full
