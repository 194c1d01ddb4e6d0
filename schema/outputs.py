"""Output paths given on the command line (`--json`, `--plot`, `--out`), checked before any long
work starts, so that a typo costs a message and exit 2, not a traceback after a whole replay.

Shared by controller/ and replay/ (which may import only fsm/ and schema/). The check is real:
the file is opened for appending (and removed again if it did not exist), because permission
bits, read-only mounts and pseudo-filesystems like /proc are only known by trying.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def check_output_file(path: str, mkdir: bool = False) -> str | None:
    """Why `path` cannot be written as a file (None when it can). `mkdir`: create missing parents."""
    if not path:
        return "empty path"
    if os.path.isdir(path):
        return "is a directory, not a file"
    parent = os.path.dirname(path) or "."
    if mkdir:
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            return f"cannot create directory {parent}: {e.strerror or e}"
    if not os.path.exists(parent):
        return f"directory {parent} does not exist"
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    existed = os.path.exists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        return f"cannot write: {e.strerror or e}"
    if not existed:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return None


def check_output_dir(path: str) -> str | None:
    """Why `path` cannot be used as a directory to write files into (None when it can); creates it."""
    if not path:
        return "empty path"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        return f"cannot create directory: {e.strerror or e}"
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".tailguard-probe-"):
            pass
    except OSError as e:
        return f"cannot write into it: {e.strerror or e}"
    return None


def write_output(path: str, text: str) -> str | None:
    """Write `text` to an output file checked earlier; why it failed (None when it did not). The
    disk may have filled since the check: a partial file is removed, so no reader trips on it."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return str(e.strerror or e)
    return None
