"""Request arrivals of the sensitive tenants: a real trace (replay.request_traces), or a
Poisson, Gamma-renewal or two-state MMPP process at a schedule's peak rate, thinned to its level.

Random draws depend only on (seed, host, tenant) and simulated time, never on the policy or the
tick length: every policy sees the same arrivals and noise (common random numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

from replay.queueing import Array
from replay.request_traces import read_request_trace
from replay.scenario import Requests, resolve_data

CHUNK_S = 600.0  # arrivals are generated this many simulated seconds at a time
HISTORY_STEP_S = 60.0  # RequestStream.history: the schedule's level is read once a minute


@cache
def load_request_trace(path: str) -> tuple[Array, Array, Array]:
    """(arrival seconds from the earliest request, context tokens, generated tokens; 0 where the
    trace has none) of a request trace (replay.request_traces: Azure, BurstGPT, Mooncake or Qwen-Bailian). A
    ValueError names the file and the line."""
    try:
        return read_request_trace(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None


def trace_cycle(times: Array) -> float:
    """Seconds after which a trace (arrival times from 0) starts again: its last arrival plus its
    mean gap, so that the last request and the next cycle's first are as far apart as usual."""
    gap = float(np.mean(np.diff(times))) if times.size > 1 else 1.0
    return float(times[-1]) + gap


class RequestStream:
    """Arrivals (absolute seconds) and context tokens of one sensitive tenant, tick by tick."""

    def __init__(
        self, req: Requests, base: Path, seed: int, host_index: int, tenant_index: int, schedule_level: float = 1.0
    ) -> None:
        self.req = req
        self.seed = (seed, host_index, tenant_index)
        sigma2 = math.log1p(req.noise_cv**2)
        self.sigma = math.sqrt(sigma2)
        self.mu = -sigma2 / 2  # mean-one lognormal
        self.trace: tuple[Array, Array, Array] | None = None
        if req.trace is not None:
            path = resolve_data(req.trace, base)
            if path is None:
                raise ValueError(f"request trace {req.trace!r} not found")
            times, tokens, generated = load_request_trace(str(path))
            self.trace = (times / req.trace_speed, tokens, generated)
            self.cycle = trace_cycle(times) / req.trace_speed
        # One generator per (seed, host, tenant). How many numbers a tick draws depends only on
        # its arrivals, never on the policy, so every policy sees the same requests and noise.
        self.rng = np.random.default_rng(list(self.seed))
        self.level_max = max(1.0, schedule_level)
        self.buf_t = self.buf_m = self.buf_n = np.empty(0)
        self.buf_lo = 0
        self.buf_end = 0.0
        self.next_t: float | None = None  # gamma: the first arrival past the generated chunks
        self.burst = False  # mmpp: the state now, and when it ends
        self.state_end: float | None = None

    def history(self, uptime_s: float, level: Callable[[float], float], rng: np.random.Generator) -> int:
        """Requests that arrived in the `uptime_s` seconds before the run: the trace's (it cycles
        backwards as forwards) or the process's, thinned by the schedule's `level` per minute, drawn
        from `rng` (never the stream's: the run's arrivals stay those of uptime 0). A process's count
        is Poisson's at its mean rate (a Gamma or MMPP process's spread over hours is not modelled)."""
        if uptime_s <= 0:
            return 0
        edges = np.append(np.arange(-uptime_s, 0.0, HISTORY_STEP_S), 0.0)
        mids = (edges[:-1] + edges[1:]) / 2
        levels = np.array([level(float(x)) for x in mids])
        if self.trace is None:
            assert self.req.rate is not None
            return int(rng.poisson(float(np.sum(self.req.rate * levels * np.diff(edges)))))
        times = self.trace[0]
        cum = np.floor(edges / self.cycle) * times.size + np.searchsorted(times, np.mod(edges, self.cycle), "left")
        per_bin = np.diff(cum).astype(np.int64)
        return int(np.sum(rng.binomial(per_bin, np.clip(levels, 0.0, 1.0))))

    def _gamma(self, a: float, b: float, rate: float) -> Array:
        """Arrivals in [a, b) of a renewal process with Gamma gaps (mean 1/rate, CV req.cv)."""
        shape = 1.0 / self.req.cv**2
        scale = 1.0 / (rate * shape)
        if self.next_t is None:  # start in equilibrium-ish: a first gap from the same law
            self.next_t = a + float(self.rng.gamma(shape, scale))
        out = []
        t = self.next_t  # the pending arrival
        batch = int(rate * (b - a) * 1.1) + 16
        while t < b:
            ts = t + np.concatenate(([0.0], np.cumsum(self.rng.gamma(shape, scale, batch))))
            head = ts[:-1]  # arrivals; ts[-1] is the next pending one
            inside = head < b  # non-decreasing, so a prefix
            out.append(head[inside])
            if not inside.all():
                t = float(head[~inside][0])  # the gaps drawn beyond it are dropped (same for every policy)
                break
            t = float(ts[-1])
        self.next_t = t
        return np.concatenate(out) if out else np.empty(0)

    def _mmpp(self, a: float, b: float, rate: float) -> Array:
        """Arrivals in [a, b) of a two-state Markov-modulated Poisson process with mean `rate`."""
        req = self.req
        calm = rate * (req.calm_mean_s + req.burst_mean_s) / (req.calm_mean_s + req.burst_ratio * req.burst_mean_s)
        if self.state_end is None:  # the stationary state at the start, memoryless residual
            self.burst = bool(self.rng.random() < req.burst_mean_s / (req.burst_mean_s + req.calm_mean_s))
            self.state_end = a + float(self.rng.exponential(req.burst_mean_s if self.burst else req.calm_mean_s))
        out = []
        cur = a
        while cur < b:
            end = min(self.state_end, b)
            r = calm * (req.burst_ratio if self.burst else 1.0)
            n = int(self.rng.poisson(r * (end - cur)))
            out.append(self.rng.uniform(cur, end, n))
            if self.state_end <= b:
                self.burst = not self.burst
                self.state_end += float(self.rng.exponential(req.burst_mean_s if self.burst else req.calm_mean_s))
            cur = end
        return np.sort(np.concatenate(out))

    def _fill(self, until: float) -> None:
        """Generate arrivals (Poisson, Gamma renewal or MMPP at the schedule's peak rate), thinning
        marks and noise in fixed 600 s chunks (cheap per tick, and the same numbers whatever the
        tick length)."""
        assert self.req.rate is not None
        parts = [(self.buf_t[self.buf_lo :], self.buf_m[self.buf_lo :], self.buf_n[self.buf_lo :])]
        while self.buf_end < until:
            a = self.buf_end
            rate = self.req.rate * self.level_max
            if self.req.arrivals == "gamma":
                t = self._gamma(a, a + CHUNK_S, rate)
            elif self.req.arrivals == "mmpp":
                t = self._mmpp(a, a + CHUNK_S, rate)
            else:
                n = int(self.rng.poisson(rate * CHUNK_S))
                t = np.sort(self.rng.uniform(a, a + CHUNK_S, n))
            n = t.size
            marks = self.rng.random(n)
            noise = self.rng.lognormal(self.mu, self.sigma, n) if self.sigma > 0 else np.ones(n)
            parts.append((t, marks, noise))
            self.buf_end = a + CHUNK_S
        self.buf_t = np.concatenate([p[0] for p in parts])
        self.buf_m = np.concatenate([p[1] for p in parts])
        self.buf_n = np.concatenate([p[2] for p in parts])
        self.buf_lo = 0

    def window(self, t0: float, t1: float, level: float) -> tuple[Array, Array, Array, Array]:
        """(arrival times, context tokens, generated tokens, noise factors) of the requests arriving
        in [t0, t1)."""
        rng = self.rng
        if self.trace is None:
            if t1 > self.buf_end:
                self._fill(t1)
            lo: int = self.buf_lo + int(np.searchsorted(self.buf_t[self.buf_lo :], t0, "left"))
            hi: int = lo + int(np.searchsorted(self.buf_t[lo:], t1, "left"))
            self.buf_lo = hi
            arr, noise = self.buf_t[lo:hi], self.buf_n[lo:hi]
            if level < self.level_max:  # thinning: a rate below the peak (or an off period)
                keep = self.buf_m[lo:hi] < level / self.level_max
                arr, noise = arr[keep], noise[keep]
            return arr, np.full(arr.size, self.req.tokens), np.full(arr.size, self.req.generated_tokens), noise
        times, tokens, generated = self.trace
        k0, k1 = math.floor(t0 / self.cycle), math.floor(t1 / self.cycle)
        parts_t, parts_k, parts_g = [], [], []
        for k in range(k0, k1 + 1):
            a = int(np.searchsorted(times, t0 - k * self.cycle, "left"))
            b = int(np.searchsorted(times, t1 - k * self.cycle, "left"))
            parts_t.append(times[a:b] + k * self.cycle)
            parts_k.append(tokens[a:b])
            parts_g.append(generated[a:b])
        arr = np.concatenate(parts_t)
        tok = np.concatenate(parts_k)
        gen = np.concatenate(parts_g)
        if level < 1.0:  # thin the trace (a schedule's level below 1)
            keep = rng.random(arr.size) < level
            arr, tok, gen = arr[keep], tok[keep], gen[keep]
        noise = rng.lognormal(self.mu, self.sigma, arr.size) if self.sigma > 0 else np.ones(arr.size)
        return arr, tok, gen, noise
