"""A JSON state file shared by emulator invocations: locked (flock) while one command runs, and
replaced atomically, so a command killed half-way leaves the previous state, never a torn one."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the state for reading and changing; it is written back when the block ends normally."""
    p = Path(path)
    with open(p.with_name(p.name + ".lock"), "a+") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        state = json.loads(p.read_text()) if p.exists() else {}
        before = json.dumps(state, sort_keys=True)
        yield state
        if json.dumps(state, sort_keys=True) != before:
            save(p, state)


def save(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, p)


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    with locked(path) as s:
        return json.loads(json.dumps(s))
