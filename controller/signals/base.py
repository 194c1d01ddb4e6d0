"""The sampler contract.

Every sampler is async and returns either its typed result or `Unavailable(reason)`; it never
raises into the tick. `SamplerRunner` wraps one sampler with its own timeout, counts errors, and
keeps the last good value with its age, so one slow or broken source never delays the tick and the
exporter can show `errors_total`, `last_success_age_s` and the last error reason per sampler.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from schema.files import open_regular
from schema.jsontext import kernel_u64, shown

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

# A tick's observation must finish within this (the daemon's deadline); one that does not is
# skipped whole, every source's readings with it.
MIN_OBSERVE_DEADLINE_S = 1.0


def observe_deadline_s(period_s: float) -> float:
    """How long the daemon waits for one tick's observation: the sample period, at least 1 s."""
    return max(MIN_OBSERVE_DEADLINE_S, period_s)


@dataclass(frozen=True, slots=True)
class Unavailable:
    """A source could not be read this tick; `reason` says why, for operators and the FSM."""

    reason: str

    def __bool__(self) -> bool:  # `if result:` reads naturally for "we have data"
        return False


class ParseError(ValueError):
    """A tool's output or a file did not have the expected format. Names the source and the line."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        where = f"{source}: line {line}" if line is not None else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line


def counter(tok: str, source: str, line: int, what: str) -> int:
    """An ASCII decimal u64 counter (kernel_u64), else a ParseError naming the line and the value
    (shortened): a count past a double's range would also make the rate an OverflowError."""
    v = kernel_u64(tok)
    if v is None:
        raise ParseError(source, line, f"{what} is not a 64-bit counter: {shown(tok)}")
    return v


class Sampler(Protocol[T_co]):
    """What the collector runs. `name` is the source key used in `Observation.unavailable`."""

    @property
    def name(self) -> str: ...

    @property
    def timeout_s(self) -> float: ...

    async def sample(self, now: float) -> T_co | Unavailable: ...


@dataclass(slots=True)
class SamplerStats:
    """Per-sampler health, read by the Prometheus exporter."""

    name: str
    samples_total: int = 0
    errors_total: int = 0
    timeouts_total: int = 0
    last_error: str = ""
    last_success_t: float | None = None  # monotonic seconds of the last good sample
    last_duration_s: float = 0.0

    def last_success_age_s(self, now_mono: float | None = None) -> float | None:
        if self.last_success_t is None:
            return None
        return max(0.0, (time.monotonic() if now_mono is None else now_mono) - self.last_success_t)


class SamplerRunner(Generic[T]):
    """Runs one sampler under its timeout and keeps its stats and last good value."""

    def __init__(self, sampler: Sampler[T], clock: Callable[[], float] = time.monotonic) -> None:
        self.sampler = sampler
        self.stats = SamplerStats(sampler.name)
        self.last_good: T | None = None
        self._clock = clock

    @property
    def name(self) -> str:
        return self.sampler.name

    def last_good_age_s(self) -> float | None:
        return self.stats.last_success_age_s(self._clock())

    async def run(self, now: float) -> T | Unavailable:
        start = self._clock()
        self.stats.samples_total += 1
        try:
            async with asyncio.timeout(self.sampler.timeout_s):  # no extra task, unlike wait_for
                result = await self.sampler.sample(now)
        except TimeoutError:
            self.stats.timeouts_total += 1
            result = Unavailable(f"timed out after {self.sampler.timeout_s:g} s")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a sampler bug must not take the tick down; it is counted and named
            result = Unavailable(f"{type(e).__name__}: {e}")
        self.stats.last_duration_s = self._clock() - start
        if isinstance(result, Unavailable):
            self.stats.errors_total += 1
            self.stats.last_error = result.reason
        else:
            self.stats.last_success_t = self._clock()
            self.last_good = result
        return result


class InlineOrThread:
    """Runs a sampler's synchronous read on the event loop while it is fast, in a worker thread
    once it was not. Reads of procfs/cgroupfs through kept-open descriptors take microseconds, and
    a thread hop plus GIL ping-pong with the loop costs more than the read (measured: 5.2 ms vs
    8 ms per tick of the 8-GPU bench). Reads slower than `inline_budget_s` several times in a row (a
    stuck filesystem, a huge /proc/interrupts) move that sampler to threads, where the runner's
    timeout can abandon it."""

    inline_budget_s = 0.05
    strikes = 3  # consecutive slow reads; one preemption of a busy 2-core machine is not a verdict

    def __init__(self) -> None:
        self._slow_in_a_row = 0
        self.threaded = False

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        if self.threaded:
            return await asyncio.to_thread(fn, *args)
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            if time.perf_counter() - t0 > self.inline_budget_s:
                self._slow_in_a_row += 1
                self.threaded = self._slow_in_a_row >= self.strikes
            else:
                self._slow_in_a_row = 0


def _text(b: bytes) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b.decode("utf-8", errors="replace")


class FileReader:
    """Re-reads small kernel files (cgroupfs, procfs) through descriptors kept open across ticks:
    `os.pread` at offset 0 makes seq_file regenerate the content, and skips an open() per file per
    tick (150 files for 50 tenants). A descriptor that fails (a removed cgroup's files answer
    ENODEV) is closed and the path opened again once. Only for files rewritten in place, which is
    what kernel files are; a file replaced by rename would keep being read from the old inode.
    Only regular files, up to LIMIT bytes (OSError otherwise): a FIFO in a fake or misconfigured
    root would block open() for ever, and /dev/zero would be read until memory runs out."""

    CHUNK = 65536
    LIMIT = 64 << 20  # /proc/interrupts of a 224-CPU host is 1.5 MB

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def _pread_all(self, fd: int, path: str) -> bytes:
        first = os.pread(fd, self.CHUNK, 0)
        if len(first) < self.CHUNK:
            return first
        parts = [first]
        off = len(first)
        while True:
            if off > self.LIMIT:
                raise OSError(errno.EFBIG, f"larger than {self.LIMIT >> 20} MiB: not a kernel file of this kind", path)
            b = os.pread(fd, self.CHUNK, off)
            parts.append(b)
            if len(b) < self.CHUNK:
                return b"".join(parts)
            off += len(b)

    def read(self, path: str) -> str:
        fd = self._fds.get(path)
        if fd is not None:
            try:
                return _text(self._pread_all(fd, path))
            except OSError:  # ENODEV: the cgroup was removed; open the path again
                self._drop(path)
        fd = open_regular(path)
        self._fds[path] = fd
        try:
            return _text(self._pread_all(fd, path))
        except OSError:
            self._drop(path)
            raise

    def _drop(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        for p in list(self._fds):
            self._drop(p)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
