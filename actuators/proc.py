"""Run a tool without a shell, with a timeout, killing its whole process group when it hangs or
floods its output."""

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
    def status(self) -> str:
        """How the tool ended, for a message: "exit 3", or "killed by SIGKILL" (asyncio reports a
        death by signal N as -N, which read "exit -9")."""
        if self.rc < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-self.rc).name}"
            return f"killed by signal {-self.rc}"
        return f"exit {self.rc}"

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
    """Run argv (a list, never a shell line). Raises ToolError on a start failure, a timeout, or
    more than max_output bytes on stdout or stderr (the tool is killed then too); a non-zero exit
    is returned in Result.rc for the caller to interpret."""
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
        out, err = await asyncio.wait_for(_communicate(p, stdin, max_output), timeout)
    except (TimeoutError, asyncio.CancelledError, _TooMuch) as e:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):  # what is left in the pipes of a killed tool is bounded
            await asyncio.wait_for(p.communicate(), 5)  # and read so that they close (and it is reaped)
        if isinstance(e, asyncio.CancelledError):
            raise
        if isinstance(e, _TooMuch):
            raise ToolError(argv, f"printed more than {max_output} bytes on {e.stream} (killed)") from None
        raise ToolError(argv, f"timed out after {timeout:g} s (killed)") from None
    rc = p.returncode if p.returncode is not None else -1
    return Result(tuple(argv), rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


class _TooMuch(Exception):
    def __init__(self, stream: str) -> None:
        self.stream = stream


async def _communicate(p: asyncio.subprocess.Process, stdin: str | None, max_output: int) -> tuple[bytes, bytes]:
    """communicate(), but reading at most max_output bytes of each stream: a tool that floods its
    output (a broken nvidia-smi printing without end) was read whole before it was cut, gigabytes
    within one timeout. _TooMuch once a stream has more; the caller kills the tool."""

    async def feed() -> None:
        assert p.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            p.stdin.write(stdin.encode() if stdin is not None else b"")
            await p.stdin.drain()
        p.stdin.close()

    async def drain(stream: asyncio.StreamReader | None, name: str) -> bytes:
        assert stream is not None
        data = bytearray()
        while chunk := await stream.read(1 << 16):
            data += chunk
            if len(data) > max_output:
                raise _TooMuch(name)
        return bytes(data)

    out = asyncio.ensure_future(drain(p.stdout, "stdout"))
    err = asyncio.ensure_future(drain(p.stderr, "stderr"))
    fed = asyncio.ensure_future(feed()) if stdin is not None else None
    try:
        if fed is not None:
            await fed
        got_out, got_err = await asyncio.gather(out, err)
    finally:
        for t in (out, err, fed):
            if t is not None:
                t.cancel()
    await p.communicate()  # both at their end: closes the pipes' transports, reaps the tool
    return got_out, got_err
