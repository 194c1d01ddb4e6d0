"""Run a tool without a shell, with a timeout, killing its whole process group when it hangs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class ToolError(Exception):
    """A tool could not be run, timed out, or failed; the message names the command."""

    def __init__(self, argv: Sequence[str], message: str, rc: int | None = None, output: str = "") -> None:
        self.argv = tuple(argv)
        self.rc = rc
        self.output = output
        super().__init__(f"{' '.join(argv[:6])}: {message}")


@dataclass(frozen=True, slots=True)
class Result:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        """stdout and stderr together: nvidia-smi prints errors on either."""
        return self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr


def check_argv(argv: Sequence[str]) -> None:
    if not argv:
        raise ValueError("empty command")
    for a in argv:
        if not isinstance(a, str) or "\0" in a:
            raise ValueError(f"bad argument {a!r}: arguments must be strings without NUL")


async def run(
    argv: Sequence[str],
    timeout: float,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    max_output: int = 1 << 20,
) -> Result:
    """Run argv (a list, never a shell line). Raises ToolError on a start failure or a timeout;
    a non-zero exit is returned in Result.rc for the caller to interpret."""
    check_argv(argv)
    try:
        p = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
    except OSError as e:
        raise ToolError(argv, f"cannot run: {e.strerror or e}") from None
    try:
        out, err = await asyncio.wait_for(p.communicate(stdin.encode() if stdin is not None else None), timeout)
    except (TimeoutError, asyncio.CancelledError) as e:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(p.wait(), 5)
        if isinstance(e, asyncio.CancelledError):
            raise
        raise ToolError(argv, f"timed out after {timeout:g} s (killed)") from None
    rc = p.returncode if p.returncode is not None else -1
    return Result(
        tuple(argv),
        rc,
        out[:max_output].decode("utf-8", "replace"),
        err[:max_output].decode("utf-8", "replace"),
    )
