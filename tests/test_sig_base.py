"""The sampler contract's helpers: runner stats, inline-or-thread switching, kept-open file reads,
counter rates."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from controller.signals.base import FileReader, InlineOrThread, SamplerRunner, Unavailable
from controller.signals.rates import CounterRates


class Flaky:
    name = "flaky"
    timeout_s = 0.5

    def __init__(self) -> None:
        self.results: list[object] = []

    async def sample(self, now: float) -> object:
        r = self.results.pop(0)
        if isinstance(r, Exception):
            raise r
        return r


def test_runner_keeps_last_good_value_and_counts_errors() -> None:
    s = Flaky()
    s.results = [1.5, Unavailable("down"), ValueError("boom"), 2.5]
    clock = [100.0]
    r = SamplerRunner(s, clock=lambda: clock[0])

    async def run() -> list[object]:
        out = []
        for _ in range(4):
            out.append(await r.run(0.0))
            clock[0] += 1.0
        return out

    out = asyncio.run(run())
    assert out[0] == 1.5 and out[1] == Unavailable("down") and out[2] == Unavailable("ValueError: boom")
    assert r.stats.samples_total == 4 and r.stats.errors_total == 2 and r.stats.timeouts_total == 0
    assert r.stats.last_error == "ValueError: boom" and r.last_good == 2.5
    assert r.last_good_age_s() == pytest.approx(1.0)  # last success at 103, clock now 104


def test_inline_until_slow_then_threads() -> None:
    runner = InlineOrThread()
    runner.inline_budget_s = 0.01
    seen: list[bool] = []

    def read(delay: float) -> int:
        seen.append(threading.current_thread() is threading.main_thread())
        time.sleep(delay)
        return 7

    async def run() -> None:
        assert await runner.call(read, 0.0) == 7
        assert await runner.call(read, 0.03) == 7  # one slow read: a hiccup
        assert await runner.call(read, 0.0) == 7
        for _ in range(runner.strikes):
            assert await runner.call(read, 0.03) == 7  # slow every time: the next calls go to a thread
        assert runner.threaded
        assert await runner.call(read, 0.0) == 7

    asyncio.run(run())
    assert seen == [True, True, True, True, True, True, False]


def test_file_reader_reuses_and_reopens(tmp_path: Path) -> None:
    p = tmp_path / "io.pressure"
    p.write_text("some avg10=1.00 avg60=0.00 avg300=0.00 total=1\n")
    fr = FileReader()
    assert fr.read(str(p)).startswith("some avg10=1.00")
    p.write_text("some avg10=2.00 avg60=0.00 avg300=0.00 total=2\n")  # rewritten in place, like kernel files
    assert fr.read(str(p)).startswith("some avg10=2.00")
    assert len(fr._fds) == 1
    big = "x" * (FileReader.CHUNK * 2 + 10)
    p.write_text(big)
    assert fr.read(str(p)) == big
    os.unlink(p)
    fr._drop(str(p))  # a removed cgroup answers ENODEV on the old fd; a plain file just vanishes
    with pytest.raises(FileNotFoundError):
        fr.read(str(p))
    fr.close()


def test_counter_rates() -> None:
    r = CounterRates(max_rate=1000.0)
    assert r.update("a", 0.0, 100) is None
    assert r.update("a", 2.0, 300) == 100.0
    assert r.update("a", 3.0, 50) is None  # reset
    assert r.update("a", 4.0, 60) == 10.0
    assert r.update("a", 5.0, 60 + 5000) is None  # beyond max_rate: a wrap, not data
    assert r.update("a", 5.0, 6000) is None  # no time passed
    assert r.update_many("b", 0.0, (1, 2)) == (None, None)
    assert r.update_many("b", 1.0, (3, 1)) == (2.0, None)
    r.forget_missing({"b"})
    assert r.update("a", 9.0, 1) is None  # forgotten: starts again


@pytest.mark.root
def test_file_reader_on_a_real_cgroup_removed_and_recreated() -> None:
    """A kept descriptor of a removed cgroup answers ENODEV; the reader opens the new one."""
    base = next(
        (b for b in ("/sys/fs/cgroup/blkio", "/sys/fs/cgroup/unified", "/sys/fs/cgroup") if os.access(b, os.W_OK)),
        None,
    )
    if base is None or os.geteuid() != 0:
        pytest.skip("needs root and a writable cgroup hierarchy (CI runs as root)")
    d = os.path.join(base, f"tailguard-test-{os.getpid()}")
    os.mkdir(d)
    try:
        fr = FileReader()
        path = os.path.join(d, "cgroup.procs")
        assert fr.read(path) == ""
        fd = fr._fds[path]
        os.rmdir(d)
        with pytest.raises(OSError):
            os.pread(fd, 10, 0)  # the kernel's answer for the old cgroup
        with pytest.raises(FileNotFoundError):
            fr.read(path)
        os.mkdir(d)
        assert fr.read(path) == "" and path in fr._fds  # the new cgroup, through a new descriptor
    finally:
        if os.path.isdir(d):
            os.rmdir(d)
