"""Where replay tasks run: `local` (a process pool on this machine, `--jobs`) or `ray[:ADDRESS]`
(a Ray cluster: a fresh one on loopback, or an existing one joined at ADDRESS).

Every task is a pure function of its arguments (scenario file, host, policy, duration, seed), so
the results do not depend on where, in which order or how many times a task ran: a task retried
after its worker died gives the same result. Both executors hand back concurrent.futures.Future
objects, so the callers (runner.run_all, suite.run_suite, fleet) are the same code for either.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

RAY_MAX_RETRIES = 3  # a task whose worker process died is run again, up to this many times
RAY_INSTALL_HINT = "--executor ray needs Ray: install tailguard[fleet] (pip install 'tailguard[fleet]')"


class ExecutorError(Exception):
    """A bad --executor value, or Ray missing or unreachable (a user error: exit 2)."""


@dataclass(frozen=True, slots=True)
class ExecutorSpec:
    kind: str  # "local" or "ray"
    address: str | None = None  # ray: None starts a local Ray on loopback


def parse_executor(text: str) -> ExecutorSpec:
    """`local`, `ray` or `ray:ADDRESS` (ADDRESS as ray.init takes it: host:port, ray://host:port, auto)."""
    t = text.strip()
    if t == "local":
        return ExecutorSpec("local")
    if t == "ray":
        return ExecutorSpec("ray")
    if t.startswith("ray:") and t[4:].strip():
        return ExecutorSpec("ray", t[4:].strip())
    raise ExecutorError(f"--executor {text!r}: expected local, ray or ray:ADDRESS")


class _Inline:
    """The pool's interface, run in this process (--jobs 1)."""

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future[Any]:
        f: Future[Any] = Future()
        try:
            f.set_result(fn(arg))
        except Exception as e:  # the caller's f.result() raises it, as a pool's future would
            f.set_exception(e)
        return f

    def shutdown(self) -> None:
        pass


class Executor:
    """submit(fn, arg) -> Future; `describe()` for the JSON; a context manager that shuts down
    whatever it started (a pool, a local Ray), never a cluster it joined."""

    kind = "local"

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future[Any]:
        raise NotImplementedError

    def workers(self) -> int:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"executor": self.kind}

    def shutdown(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class LocalExecutor(Executor):
    kind = "local"

    def __init__(self, jobs: int | None) -> None:
        self.jobs = jobs if jobs is not None else (os.cpu_count() or 1)
        self._pool: Any = ProcessPoolExecutor(max_workers=self.jobs) if self.jobs > 1 else _Inline()

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future[Any]:
        return self._pool.submit(fn, arg)

    def workers(self) -> int:
        return self.jobs

    def shutdown(self) -> None:
        self._pool.shutdown()


class RayExecutor(Executor):
    kind = "ray"

    def __init__(self, address: str | None, jobs: int | None) -> None:
        try:
            import ray
        except ImportError:
            raise ExecutorError(RAY_INSTALL_HINT) from None
        self._ray = ray
        self._started = False
        self._remote: dict[Callable[[Any], Any], Any] = {}
        if not ray.is_initialized():
            try:
                if address is None:
                    # A throwaway single-node Ray on loopback: no dashboard, workers' logs not
                    # echoed here (a failed task's error comes back through its future).
                    ray.init(
                        address="local",
                        num_cpus=jobs if jobs is not None else (os.cpu_count() or 1),
                        include_dashboard=False,
                        _node_ip_address="127.0.0.1",
                        log_to_driver=False,
                        configure_logging=False,
                    )
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError, TimeoutError) as e:
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise ExecutorError(f"--executor ray: cannot start or join {where}: {e}") from None
            self._started = True
        self.version = str(ray.__version__)

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future[Any]:
        remote = self._remote.get(fn)
        if remote is None:
            # retry_exceptions stays off: a task that raises (a bad trace) fails once, with its
            # error; only a dead worker (a system failure) makes Ray run the task again.
            remote = self._ray.remote(max_retries=RAY_MAX_RETRIES)(fn)
            self._remote[fn] = remote
        fut: Future[Any] = remote.remote(arg).future()
        return _unwrap_ray_error(fut)

    def workers(self) -> int:
        return int(self._ray.cluster_resources().get("CPU", 1))

    def describe(self) -> dict[str, Any]:
        return {"executor": "ray", "ray_version": self.version}

    def shutdown(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def _unwrap_ray_error(fut: Future[Any]) -> Future[Any]:
    """A task's own exception (Ray wraps it in RayTaskError) comes back as itself, as from a pool."""
    out: Future[Any] = Future()

    def done(f: Future[Any]) -> None:
        e = f.exception()
        if e is None:
            out.set_result(f.result())
            return
        cause = getattr(e, "cause", None)
        out.set_exception(cause if isinstance(cause, Exception) else e)

    fut.add_done_callback(done)
    return out


def make_executor(text: str | None, jobs: int | None) -> Executor:
    spec = parse_executor(text or "local")
    if jobs is not None and jobs < 1:
        raise ExecutorError("--jobs must be at least 1")
    if spec.kind == "local":
        return LocalExecutor(jobs)
    return RayExecutor(spec.address, jobs)


class Bar:
    """A progress bar over tasks on a terminal (tqdm when installed), silent otherwise."""

    def __init__(self, total: int, what: str = "tasks") -> None:
        self._tqdm: Any = None
        self._plain: Any = None
        if not (sys.stderr.isatty() or os.environ.get("TAILGUARD_PROGRESS") == "1"):
            return
        try:
            from tqdm import tqdm
        except ImportError:
            from replay.runner import Progress

            self._plain = Progress(total)
            return
        self._tqdm = tqdm(total=total, unit=what.rstrip("s"), desc="replay", file=sys.stderr, leave=False)

    def advance(self, n: int = 1) -> None:
        if self._tqdm is not None:
            self._tqdm.update(n)
        elif self._plain is not None:
            for _ in range(n):
                self._plain.advance()

    def grow(self, n: int) -> None:
        if self._tqdm is not None:
            self._tqdm.total += n
            self._tqdm.refresh()
        elif self._plain is not None:
            self._plain.total += n

    def done(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self._plain is not None:
            self._plain.done()


def results_in_order(futures: Iterable[Future[Any]], bar: Bar | None = None) -> list[Any]:
    """Every future's result in submission order (the merge is deterministic), the bar advancing
    as each finishes."""
    futs = list(futures)
    if bar is not None:
        for f in futs:
            f.add_done_callback(lambda _f: bar.advance())
    return [f.result() for f in futs]


class Tracked:
    """An executor whose every submitted task counts on a progress bar (the suite's oracle submits
    as it searches, so the total grows as it goes)."""

    def __init__(self, inner: Executor, bar: Bar) -> None:
        self.inner = inner
        self.bar = bar

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future[Any]:
        self.bar.grow(1)
        f = self.inner.submit(fn, arg)
        f.add_done_callback(lambda _f: self.bar.advance())
        return f
