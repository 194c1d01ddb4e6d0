"""A vLLM-style batched-prefill server for one instance (`server = "batched"` in a scenario).

The engine runs one step at a time. Each step takes, first come first served, the next prompt
tokens of the requests that have arrived by the step's start, up to a token budget
(`max_batched_tokens`, chunked prefill: a long prompt is split over several steps) and a sequence
limit (`max_seqs`); the running decodes ride along, one token and one sequence each. A request's
TTFT ends with the step that finishes its prompt. Step time grows with what the step carries:

    step = fixed + noise x (max(floor, per_token x (prefill tokens + decodes))
                            + per_ctx x context tokens of the running decodes
                            + per_request x prompts finished) + bytes / PCIe share

`floor` is the memory-bound floor (the weights are read once per step), `per_ctx` the decodes'
KV-cache reads, `bytes` the host<->device transfer of the chunks in the step (so PCIe contention
stretches every step). A request that arrives while only decodes run joins at the next step
boundary; decode-only steps are not simulated one by one but counted over the idle gap.

`long_prefill` (vLLM's `long_prefill_token_threshold`, off by default) caps one prompt's chunk
per step, so short prompts behind a long one share its steps and finish first.

With `max_seqs` = 1, an unlimited budget, no fixed cost, no floor and no decodes, every step is
one whole request and this is exactly the FCFS Lindley recursion of replay.queueing (the tests
hold it to that).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from replay.queueing import Array
from replay.scenario import Requests


@dataclass(frozen=True, slots=True)
class StepCost:
    """What one engine step costs under the conditions of one tick (seconds; scaled already)."""

    budget: float  # prompt + decode tokens per step
    max_seqs: int  # sequences per step (prefilling + decoding)
    long_prefill: float = 0.0  # most prompt tokens of one request per step (0: the budget)
    fixed_s: float = 0.0  # per step, CPU side (scheduling, input preparation): not scaled
    floor_s: float = 0.0  # per step, memory-bound floor (weights read once)
    per_token_s: float = 0.0  # per batched token (prefill or decode): the linear layers
    per_request_s: float = 0.0  # per prompt finished in the step
    per_ctx_s: float = 0.0  # per context token of each running decode (KV reads)
    per_byte_s: float = 0.0  # host<->device transfer at the current PCIe share
    bytes_fixed: float = 0.0  # per request, with its first chunk
    bytes_per_token: float = 0.0


def step_cost(req: Requests, scale: float, per_byte: float) -> StepCost:
    """The step costs of `req` for one tick: `scale` = 1e-3 x slowdown / slices ** exponent (ms at
    1 slice -> s on this instance), `per_byte` = 1 / the PCIe share the transfers get now."""
    return StepCost(
        budget=float(req.max_batched_tokens),
        long_prefill=float(req.long_prefill_tokens),
        max_seqs=req.max_seqs,
        fixed_s=req.step_ms * 1e-3,
        floor_s=req.step_floor_ms * scale,
        per_token_s=req.compute_ms_per_token * scale,
        per_request_s=req.compute_ms * scale,
        per_ctx_s=req.decode_ms_per_token * scale,
        per_byte_s=per_byte,
        bytes_fixed=req.bytes,
        bytes_per_token=req.bytes_per_token,
    )


@dataclass(slots=True)
class BatchServer:
    """The queue of one instance: requests waiting or mid-prefill, and the running decodes."""

    arr: list[float] = field(default_factory=list)
    tok: list[float] = field(default_factory=list)
    gen: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)
    prog: list[float] = field(default_factory=list)  # prompt tokens prefilled so far; -1: finished
    head: int = 0  # first request whose prompt is not finished
    step: int = 0  # engine steps so far: the decodes' clock
    decodes: list[tuple[int, float]] = field(default_factory=list)  # heap of (last step, context)
    dec_ctx: float = 0.0  # context tokens of the running decodes
    dec_last: int = -1  # last step of the longest decode
    cost: StepCost | None = None  # the last tick's costs (for drain)

    def push(self, arr: Array, tok: Array, gen: Array, noise: Array) -> None:
        if self.head > 4096 and self.head * 2 > len(self.arr):  # drop the served prefix now and then
            for lst in (self.arr, self.tok, self.gen, self.noise, self.prog):
                del lst[: self.head]
            self.head = 0
        self.arr.extend(arr.tolist())
        self.tok.extend(tok.tolist())
        self.gen.extend(gen.tolist())
        self.noise.extend(noise.tolist())
        self.prog.extend([0.0] * arr.size)

    @property
    def queued(self) -> int:
        return len(self.arr) - self.head

    def _retire(self, upto: int) -> None:
        """Drop the decodes whose last step is before step `upto`."""
        h = self.decodes
        while h and h[0][0] < upto:
            self.dec_ctx -= heapq.heappop(h)[1]
        if not h:
            self.dec_ctx = 0.0  # no float drift once idle

    def _decode_step_s(self, c: StepCost) -> float:
        n = len(self.decodes)
        return c.fixed_s + max(c.floor_s, c.per_token_s * n) + c.per_ctx_s * self.dec_ctx

    def run(self, c: StepCost, free_at: float, until: float) -> tuple[Array, Array, float, float]:
        """Run every step that starts before `until` (inf: drain the queue).

        Returns (completion times, TTFTs of the requests finished, in order; when the engine is free
        again; GPU seconds spent, for SM activity)."""
        self.cost = c
        arr, tok, gen, noise, prog = self.arr, self.tok, self.gen, self.noise, self.prog
        cap = c.long_prefill if c.long_prefill > 0 else math.inf
        n = len(arr)
        done: list[float] = []
        lat: list[float] = []
        busy = 0.0
        while self.head < n:
            a0 = arr[self.head]
            start = free_at
            skip = 0
            if a0 > free_at:
                start = a0
                if self.decodes:
                    # Decode-only steps run meanwhile; the request joins at the next boundary
                    # (unless every decode has finished by then: the engine is idle).
                    d = self._decode_step_s(c)
                    k = math.ceil((a0 - free_at) / d) if d > 0 else 0
                    if k and self.step + k <= self.dec_last:
                        start, skip = free_at + k * d, k
            if start >= until:
                break
            if skip:
                self.step += skip
                self._retire(self.step)
            n_dec = len(self.decodes)
            budget = c.budget - n_dec
            seqs = c.max_seqs - n_dec
            # First come first served over the arrived prompts (those already started come first
            # anyway, being older); a prompt longer than what is left is chunked.
            i = self.head
            ptok = nbytes = 0.0
            fin: list[int] = []
            nz = 1.0
            while i < n and budget > 0 and seqs > 0 and arr[i] <= start:
                had = prog[i]
                if had < 0:  # finished out of order (long_prefill lets short prompts pass)
                    i += 1
                    continue
                rem = tok[i] - had
                take = min(rem, budget, cap)
                ptok += take
                budget -= take
                seqs -= 1
                nbytes += (c.bytes_fixed if had == 0.0 else 0.0) + c.bytes_per_token * take
                nz = noise[i]
                if take < rem:
                    prog[i] = had + take
                else:
                    prog[i] = -1.0
                    fin.append(i)
                i += 1
            lin = c.per_token_s * (ptok + n_dec)
            gpu = (max(c.floor_s, lin) + c.per_ctx_s * self.dec_ctx + c.per_request_s * len(fin)) * nz
            end = start + c.fixed_s + gpu + nbytes * c.per_byte_s
            busy += gpu
            s = self.step
            for j in fin:
                done.append(end)
                lat.append(end - arr[j])
                g = gen[j]
                if g > 1:  # the prefill step gave the first token; g - 1 decode steps follow
                    last = s + int(g) - 1
                    heapq.heappush(self.decodes, (last, tok[j] + g / 2))  # mean context while decoding
                    self.dec_ctx += tok[j] + g / 2
                    self.dec_last = max(self.dec_last, last)
            while self.head < n and prog[self.head] < 0:
                self.head += 1
            free_at = end
            self.step = s + 1
            self._retire(self.step)
        return np.asarray(done), np.asarray(lat), free_at, busy

    def drain(self, free_at: float) -> tuple[Array, Array, float]:
        """Serve what is still queued, with no further arrivals (the end of a run)."""
        if self.cost is None or self.queued == 0:
            return np.empty(0), np.empty(0), free_at
        done, lat, free_at, _ = self.run(self.cost, free_at, math.inf)
        return done, lat, free_at
