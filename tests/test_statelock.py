"""One tailguard per state directory (controller/statelock.py): a second `run` on the directory of a
running daemon is refused naming the holder's pid, before it recovers, lifts or overwrites anything
of the first; `--dry-run` with its own `--state-dir` may run beside it (hands off, the journal only
read); a holder killed with SIGKILL leaves no stale lock; a directory where no lock can be made does
not stop the start."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_act_faults import fake_v2
from test_reload_and_modes import _config, _run_args

from controller import cmd_run
from controller.cli import main
from controller.statelock import LOCK_NAME, StateDirBusy, lock_state_dir

HOLD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from controller.statelock import lock_state_dir
    fh = lock_state_dir(sys.argv[1])
    print("held" if fh is not None else "none", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)
    """
)


def _holder(directory: Path) -> subprocess.Popen[str]:
    code = HOLD.format(root=str(Path(__file__).resolve().parents[1]))
    p = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)  # fmt: skip
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_second_lock_in_one_directory_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    first = lock_state_dir(str(tmp_path / "state"))
    assert first is not None
    with pytest.raises(StateDirBusy, match=rf"pid {__import__('os').getpid()}\).*{tmp_path}/state"):
        lock_state_dir(str(tmp_path / "state"))
    first.close()
    again = lock_state_dir(str(tmp_path / "state"))
    assert again is not None
    again.close()


def test_run_beside_a_running_daemon_is_refused_and_dry_run_elsewhere_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_v2(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(_config(tmp_path, "enforce"))
    service = _holder(tmp_path / "state")
    try:
        assert main(["run", "--config", str(cfg), "--duration", "1"]) == 2
        err = capsys.readouterr().err
        assert f"another tailguard (pid {service.pid}) runs with state directory {tmp_path}/state" in err
        assert "--state-dir" in err
        assert not (tmp_path / "state" / "journal.jsonl").exists()  # nothing recovered, nothing written
        with pytest.raises(cmd_run.UsageError):  # --dry-run in the same directory: its status and state files
            cmd_run.build(_run_args("--config", str(cfg), "--dry-run"))
        setup = cmd_run.build(_run_args("--config", str(cfg), "--dry-run", "--state-dir", str(tmp_path / "rec")))
        assert [Path(f.name).parent for f in setup.locks] == [tmp_path / "rec"]
    finally:
        service.send_signal(signal.SIGKILL)
        service.wait(10)
    # killed: the kernel released its lock
    setup = cmd_run.build(_run_args("--config", str(cfg)))
    assert sorted(Path(f.name).parent for f in setup.locks) == [tmp_path / "state"]
    assert (tmp_path / "state" / LOCK_NAME).read_text().strip() == str(__import__("os").getpid())


def test_no_lock_where_none_can_be_made_does_not_stop_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    with caplog.at_level(logging.WARNING, logger="tailguard"):
        assert lock_state_dir(str(tmp_path / "file" / "state")) is None
    assert "cannot make the state directory's lock" in caplog.text


def test_status_tells_a_killed_daemon_from_a_stalled_one(tmp_path: Path) -> None:
    """`tailguard status`: a status file that says "running" is read against the directory's lock."""
    import os

    from controller.statelock import holder
    from controller.status import render

    d = str(tmp_path / "state")
    assert holder(d) == ("unknown", None)  # no lock made there yet: the status file's age decides
    fh = lock_state_dir(d)
    assert fh is not None
    assert holder(d) == ("held", os.getpid())
    fresh = {"state": "running", "wall": 1000.0, "period_s": 2.0, "host": "h1", "mode": "enforce"}
    assert f"running (pid {os.getpid()})" in render(fresh, now=1001.0, lock=holder(d))
    assert "still holds its state directory (stalled?)" in render(fresh, now=1600.0, lock=holder(d))
    fh.close()  # the daemon is gone (SIGKILL releases it the same way)
    assert holder(d) == ("free", None)
    assert "NOT RUNNING: no process holds its state directory" in render(fresh, now=1001.0, lock=holder(d))
    assert "stopped" in render({**fresh, "state": "stopped"}, now=1001.0, lock=holder(d))
    assert "killed or stalled?" in render(fresh, now=1600.0)  # nothing known of the lock: as before


@pytest.mark.faults
def test_status_does_not_hang_on_a_lock_file_that_is_a_fifo(tmp_path: Path) -> None:
    """holder() opened the lock file blocking: a FIFO at its path hung `tailguard status` for good
    (doctor had the same, tests/test_doctor.py). It is refused: nothing known of the lock."""
    import os
    import threading

    from controller.statelock import holder

    d = tmp_path / "state"
    d.mkdir()
    os.mkfifo(d / LOCK_NAME)
    got: list[tuple[str, int | None]] = []
    t = threading.Thread(target=lambda: got.append(holder(str(d))), daemon=True)
    t.start()
    t.join(10)
    assert got == [("unknown", None)]
