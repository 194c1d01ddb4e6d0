"""One tailguard per state directory.

The daemon's state directory holds its journal (the caps and MIG changes it owns, which a start
recovers and a dry run lifts), state.json (resumed at the next start) and status.json (what
`tailguard status` shows). Two processes on one directory would recover, lift and overwrite each
other's: a `tailguard run` typed in a shell while the service runs, or `record --dry-run` beside
it without `--state-dir`. So `run` holds an exclusive flock on `STATE_DIR/tailguard.lock` for its
lifetime (released by the kernel however it exits) and a second one is refused, naming the
holder's pid. A directory where the lock cannot be made (read-only, not ours) does not stop the
start: the daemon runs degraded there as before, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from schema.files import open_regular
from schema.jsontext import ascii_digits

log = logging.getLogger("tailguard")
LOCK_NAME = "tailguard.lock"
_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)  # flock's "another holds it"


class StateDirBusy(Exception):
    """Another process holds the directory's lock."""


def lock_state_dir(directory: str) -> IO[str] | None:
    """The open lock file (keep it open: closing it releases the lock), or None when no lock could
    be made there. Raises StateDirBusy when another process holds it."""
    path = Path(directory) / LOCK_NAME
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the process's lifetime)
    except OSError as e:
        log.warning("%s: cannot make the state directory's lock (%s): a second tailguard would not be stopped",
                    path, e.strerror or e)  # fmt: skip
        return None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        pid = _pid_in(fh)
        fh.close()
        if e.errno in _HELD:
            who = f" (pid {pid})" if pid is not None else ""
            raise StateDirBusy(
                f"another tailguard{who} runs with state directory {directory} (it holds {path}): one daemon"
                " per state directory; give this one its own with --state-dir, or stop the other"
            ) from None
        log.warning("%s: cannot lock (%s): a second tailguard would not be stopped", path, e.strerror or e)
        return None
    with contextlib.suppress(OSError):
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
    return fh


def holder(directory: str) -> tuple[str, int | None]:
    """Who holds the directory's lock, for `tailguard status`: ("held", pid or None), ("free", None)
    when no process does (a daemon that was killed leaves its status file saying "running"), or
    ("unknown", None) when the lock cannot be looked at (none made yet, not ours to open)."""
    path = Path(directory) / LOCK_NAME
    try:
        # not open(): a FIFO there blocked it for good (`tailguard status` hung); refused instead
        fh = os.fdopen(open_regular(path), encoding="utf-8")  # closed below, which drops a shared lock
    except OSError:
        return "unknown", None
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            return ("held", _pid_in(fh)) if e.errno in _HELD else ("unknown", None)
        return "free", None


def _pid_in(fh: IO[str]) -> int | None:
    """The pid the lock's holder wrote into it (None: unreadable, or not written yet)."""
    with contextlib.suppress(OSError, ValueError):
        fh.seek(0)
        pid = fh.read(32).strip()
        return int(pid) if ascii_digits(pid) and len(pid) < 12 else None
    return None
