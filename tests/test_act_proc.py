"""actuators.proc.run: a tool run without a shell, with a timeout, and with a bound on what it may
print (real child processes)."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from actuators.proc import ToolError, run

PY = sys.executable


def test_output_exit_code_and_stdin_come_back() -> None:
    code = "import sys; d = sys.stdin.read(); print(d.upper()); print('warn', file=sys.stderr); sys.exit(3)"
    r = asyncio.run(run([PY, "-c", code], timeout=30, stdin="gpu0"))
    assert (r.rc, r.stdout, r.stderr) == (3, "GPU0\n", "warn\n")
    assert r.text == "GPU0\n\nwarn\n"


def test_output_up_to_the_bound_is_kept_whole() -> None:
    r = asyncio.run(run([PY, "-c", "import sys; sys.stdout.write('x' * 70000)"], timeout=30, max_output=70000))
    assert r.rc == 0 and len(r.stdout) == 70000


@pytest.mark.faults
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_tool_that_floods_its_output_is_killed_at_the_bound_not_read_whole(stream: str) -> None:
    """Found by fuzzing `tailguard doctor`: a broken nvidia-smi printing without end (`yes`) was read
    whole before its output was cut, 2.8 GB within one 5 s timeout, in the doctor and the daemon
    alike. Now reading stops past max_output and the tool's process group is killed at once."""
    code = f"import sys\nwhile True: sys.{stream}.write('y' * 65536)"
    t0 = time.monotonic()
    with pytest.raises(ToolError, match=rf"printed more than 1048576 bytes on {stream} \(killed\)$"):
        asyncio.run(run([PY, "-c", code], timeout=60))
    assert time.monotonic() - t0 < 30  # killed at the bound, not at the timeout


@pytest.mark.faults
def test_a_hanging_tool_and_its_children_are_killed_at_the_timeout() -> None:
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)']);"
    code += " print('started', flush=True); time.sleep(3600)"
    with pytest.raises(ToolError, match=r"timed out after 1 s \(killed\)$"):
        asyncio.run(run([PY, "-c", code], timeout=1))


def test_a_tool_that_cannot_start_names_itself() -> None:
    with pytest.raises(ToolError, match=r"^/nonexistent/nvidia-smi: cannot run: "):
        asyncio.run(run(["/nonexistent/nvidia-smi"], timeout=5))
    assert os.path.exists(PY)


def test_how_a_tool_ended_reads_as_an_exit_code_or_the_signal_that_killed_it() -> None:
    """Found by fuzzing doctor: a tool killed by a signal read "exit -9" in every message."""
    dead = asyncio.run(run([PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], timeout=30))
    assert (dead.rc, dead.status) == (-9, "killed by SIGKILL")
    assert asyncio.run(run([PY, "-c", "raise SystemExit(3)"], timeout=30)).status == "exit 3"
