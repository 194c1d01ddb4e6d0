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

KV cache (`kv_blocks` > 0, sized from the instance's memory by `kv_blocks()`): a waiting request is
admitted, first come first served, only when its prompt's blocks and one more fit; a decode takes
a block every `block_tokens` tokens; when the decodes' new blocks do not fit, the newest admitted
request is preempted (vLLM V1's recompute: its blocks are freed, it goes back to the head of the
waiting queue and its prefill, with the tokens it had generated, is redone later; no admission in
that step). A request preempted before its first token reports its TTFT after the redo.

With `max_seqs` = 1, an unlimited budget, no fixed cost, no floor and no decodes, every step is
one whole request and this is exactly the FCFS Lindley recursion of replay.queueing (the tests
hold it to that).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
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
    kv_blocks: int = 0  # KV-cache capacity of the instance, blocks (0: unlimited, no admission control)
    block_tokens: int = 16


def kv_blocks(req: Requests, mem_gib: float) -> int:
    """KV-cache blocks of `req`'s model on an instance with `mem_gib` GiB, as vLLM sizes it at start:
    memory x gpu_memory_utilization - weights - activation peak and non-torch memory, in blocks
    (0: the scenario gives no KV size, unlimited). At least one block: a slice too small for the
    weights would not start at all; we let it serve one sequence at a time instead."""
    if req.kv_bytes_per_token <= 0:
        return 0
    free = mem_gib * 2**30 * req.gpu_memory_utilization - (req.weights_gb + req.overhead_gb) * 1e9
    return max(1, int(free // (req.kv_bytes_per_token * req.kv_block_tokens)))


def step_cost(req: Requests, scale: float, per_byte: float, mem_gib: float = 0.0, cpu_factor: float = 1.0) -> StepCost:
    """The step costs of `req` for one tick: `scale` = 1e-3 x slowdown / slices ** exponent (ms at
    1 slice -> s on this instance), `per_byte` = 1 / the PCIe share the transfers get now, `mem_gib`
    the instance's memory (the KV cache), `cpu_factor` the CPU channel's slowdown of the CPU side."""
    return StepCost(
        budget=float(req.max_batched_tokens),
        long_prefill=float(req.long_prefill_tokens),
        max_seqs=req.max_seqs,
        fixed_s=req.step_ms * 1e-3 * cpu_factor,
        floor_s=req.step_floor_ms * scale,
        per_token_s=req.compute_ms_per_token * scale,
        per_request_s=req.compute_ms * scale,
        per_ctx_s=req.decode_ms_per_token * scale,
        per_byte_s=per_byte,
        bytes_fixed=req.bytes,
        bytes_per_token=req.bytes_per_token,
        kv_blocks=kv_blocks(req, mem_gib),
        block_tokens=req.kv_block_tokens,
    )


@dataclass(slots=True, eq=False)
class _Seq:
    """A request the engine has admitted (it holds KV-cache blocks), prefilling or decoding."""

    arr: float
    tok: float  # tokens to prefill: the prompt (+ what it had generated, when redone after a preemption)
    gen: float  # tokens still to generate; the prefill step gives the first
    noise: float
    reported: bool = False  # TTFT out: a redo after the first token does not report it again
    prog: float = 0.0  # tokens prefilled so far
    blocks: int = 0  # blocks taken at admission (the prompt's)
    fin: int = -1  # the step that finished its prefill; it decodes in steps fin+1 .. last
    last: int = -1
    ctx: float = 0.0  # mean context while decoding (what each decode step reads)
    alive: bool = True  # admitted and neither finished nor preempted


@dataclass(slots=True)
class BatchServer:
    """The queue of one instance: requests not admitted yet, the admitted ones (prefilling or
    decoding) and, with a KV cache (`StepCost.kv_blocks` > 0), the blocks they hold."""

    arr: list[float] = field(default_factory=list)  # not admitted yet, arrival order, from `head`
    tok: list[float] = field(default_factory=list)
    gen: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)
    head: int = 0  # first request never admitted
    redo: deque[_Seq] = field(default_factory=deque)  # preempted: the head of the waiting queue
    pre: list[_Seq] = field(default_factory=list)  # admitted, prefilling (admission order)
    running: list[_Seq] = field(default_factory=list)  # admitted, admission order (dead ones pruned lazily)
    n_run: int = 0  # alive in `running`
    step: int = 0  # engine steps so far: the decodes' clock
    decodes: list[tuple[int, float, int, _Seq]] = field(default_factory=list)  # heap (last step, ctx, id, seq)
    n_dec: int = 0  # running decodes (the heap may hold preempted ones)
    dec_ctx: float = 0.0  # context tokens of the running decodes
    dec_last: int = -1  # last step of the longest decode
    block: int = 16  # tokens per KV block
    kv_used: int = 0  # blocks held
    kv_grow: list[int] = field(default_factory=lambda: [0] * 16)  # decodes taking a block at step % block
    preemptions: int = 0
    kv_peak: int = 0  # most blocks held at once (for calibration)
    kv_stalls: int = 0  # steps in which a waiting request was not admitted for want of blocks (calibration)
    ids: int = 0
    cost: StepCost | None = None  # the last tick's costs (for drain)

    def push(self, arr: Array, tok: Array, gen: Array, noise: Array) -> None:
        if self.head > 4096 and self.head * 2 > len(self.arr):  # drop the admitted prefix now and then
            for lst in (self.arr, self.tok, self.gen, self.noise):
                del lst[: self.head]
            self.head = 0
        self.arr.extend(arr.tolist())
        self.tok.extend(tok.tolist())
        self.gen.extend(gen.tolist())
        self.noise.extend(noise.tolist())

    @property
    def queued(self) -> int:
        """Requests whose prefill is not done: not admitted, preempted, or prefilling."""
        return len(self.arr) - self.head + len(self.redo) + len(self.pre)

    # -- KV-cache bookkeeping (only with kv_blocks > 0) ------------------------------------------
    # A sequence holds ceil(tokens / block) blocks; a decode adds one token per step, so it takes a
    # new block exactly in the steps s with (prompt + s - fin) % block == 1: one residue of s mod
    # block. kv_grow counts the running decodes per residue, so a step's growth is one lookup.
    def _held(self, q: _Seq, upto: int) -> int:
        """Blocks `q` holds once the decode steps before `upto` are done."""
        if q.fin < 0:
            return q.blocks
        return -(-(math.ceil(q.tok) + min(upto - 1, q.last) - q.fin) // self.block)

    def _growth(self, s: int, m: int) -> int:
        """Blocks the running decodes take in steps s .. s+m-1 (no retirement among them)."""
        b = self.block
        q, m = divmod(m, b)
        if not m:
            return q * self.n_dec
        r = s % b
        g = self.kv_grow
        tail = sum(g[r : r + m]) + (sum(g[: r + m - b]) if r + m > b else 0)
        return q * self.n_dec + tail

    def _fits(self, cap: int, k: int) -> int:
        """How many of the next k decode-only steps run before the cache overflows (retirements
        ignored: a conservative cut, the step after it is simulated exactly)."""
        room = cap - self.kv_used
        if self.n_dec == 0 or k <= 0:
            return max(k, 0)
        if room < 0:
            return 0
        g, b, s = self.kv_grow, self.block, self.step
        q = min(k // b, room // self.n_dec)
        j, room = q * b, room - q * self.n_dec
        while j < k:
            x = g[(s + j) % b]
            if x > room:
                break
            room -= x
            j += 1
        return j

    def _drop(self, q: _Seq, upto: int) -> None:
        """`q` leaves the cache (finished or preempted) before step `upto`."""
        q.alive = False
        self.n_run -= 1
        if q.fin >= 0:
            self.n_dec -= 1
            self.dec_ctx -= q.ctx
            if self.n_dec == 0:
                self.dec_ctx = 0.0  # no float drift once idle
            if self.kv:
                self.kv_grow[(q.fin + 1 - math.ceil(q.tok)) % self.block] -= 1
        if self.kv:
            self.kv_used -= self._held(q, upto)

    def _preempt(self, s: int) -> _Seq:
        """vLLM's recompute preemption of the newest running request, at the start of step s: its
        blocks are freed and it goes back to the head of the waiting queue; redone, it prefills
        what it had (prompt and the tokens generated so far) and generates the rest."""
        run = self.running
        while not run[-1].alive:
            run.pop()
        q = run.pop()
        self._drop(q, s)
        self.preemptions += 1
        if q.fin >= 0:  # decoding: its first token is out, so is its TTFT
            done = s - 1 - q.fin  # decode steps done: the KV of prompt + done; one more token is out
            q.tok, q.gen = q.tok + done + 1, q.gen - done - 1
            self.dec_last = max((e[0] for e in self.decodes if e[3].alive and e[3].last == e[0]), default=-1)
        else:
            self.pre.remove(q)
        q.prog, q.fin, q.last, q.blocks = 0.0, -1, -1, 0
        self.redo.appendleft(q)
        return q

    @property
    def kv(self) -> bool:
        return self.cost is not None and self.cost.kv_blocks > 0

    def _retire(self, upto: int) -> None:
        """Drop the decodes whose last step is before step `upto`."""
        h = self.decodes
        while h and h[0][0] < upto:
            last, _, _, q = heapq.heappop(h)
            if q.alive and q.last == last:
                self._drop(q, upto)
        if self.n_dec == 0:
            self.dec_ctx = 0.0  # no float drift once idle
        if len(self.running) > 2 * self.n_run + 64:
            self.running = [q for q in self.running if q.alive]

    def _skip(self, k: int) -> None:
        """Run k decode-only steps at once: the clock, the cache's growth, the retirements."""
        end = self.step + k
        if self.kv:
            h = self.decodes
            while True:
                while h and not (h[0][3].alive and h[0][3].last == h[0][0]):
                    heapq.heappop(h)
                seg = min(end, h[0][0] + 1) if h else end
                self.kv_used += self._growth(self.step, seg - self.step)
                self.step = seg
                if seg >= end:
                    break
                self._retire(seg)
        self.step = end
        self._retire(end)

    def _admissible(self, tok: float, room: int) -> bool:
        """FCFS admission: the prompt's blocks and one for its first decode tokens must fit (an empty
        engine takes anything: vLLM refuses to start unless its longest sequence fits the cache)."""
        return self.n_run == 0 or -(-math.ceil(tok) // self.block) + 1 <= room

    def _decode_step_s(self, c: StepCost) -> float:
        n = self.n_dec
        return c.fixed_s + max(c.floor_s, c.per_token_s * n) + c.per_ctx_s * self.dec_ctx

    def run(self, c: StepCost, free_at: float, until: float) -> tuple[Array, Array, float, float]:
        """Run every step that starts before `until` (inf: drain the queue).

        Returns (completion times, TTFTs of the requests finished, in order; when the engine is free
        again; GPU seconds spent, for SM activity)."""
        if self.cost is None and c.kv_blocks > 0:
            self.block = c.block_tokens
            self.kv_grow = [0] * c.block_tokens
        self.cost = c
        kv, cap = c.kv_blocks > 0, c.kv_blocks
        arr, tok, gen, noise = self.arr, self.tok, self.gen, self.noise
        lim = c.long_prefill if c.long_prefill > 0 else math.inf
        n = len(arr)
        done: list[float] = []
        lat: list[float] = []
        busy = 0.0
        while self.pre or self.redo or self.head < n:
            a0 = -math.inf if self.pre or self.redo else arr[self.head]
            start = free_at
            skip = 0
            if a0 > free_at:
                start = a0
                if self.n_dec:
                    # Decode-only steps run meanwhile; the request joins at the next boundary
                    # (unless every decode has finished by then: the engine is idle).
                    d = self._decode_step_s(c)
                    k = math.ceil((a0 - free_at) / d) if d > 0 else 0
                    if k and self.step + k <= self.dec_last:
                        start, skip = free_at + k * d, k
                    if kv and skip:  # the decodes outgrow the cache first: stop there, preempt
                        j = self._fits(cap, skip)
                        if j < skip:
                            start, skip = free_at + j * d, j
            elif kv and not self.pre:
                nxt = self.redo[0].tok if self.redo else tok[self.head]
                g = self.kv_grow[self.step % self.block]
                if not self._admissible(nxt, cap - self.kv_used - g):
                    # Blocked until a decode ends and frees blocks: decode-only steps till then.
                    if free_at >= until:
                        break
                    d = self._decode_step_s(c)
                    h = self.decodes
                    while h and not (h[0][3].alive and h[0][3].last == h[0][0]):
                        heapq.heappop(h)
                    k = h[0][0] + 1 - self.step if h else 1
                    if d > 0 and until < math.inf:
                        k = min(k, math.ceil((until - free_at) / d))
                    k = self._fits(cap, k)
                    if k > 0:
                        self._skip(k)
                        free_at += k * d
                        continue
                    # the cache overflows in this very step: simulate it (it preempts)
            if start >= until:
                break
            if skip:
                self._skip(skip)
            s = self.step
            preempted = False
            if kv:  # the decodes' new blocks first; the newest requests give theirs up if short
                g = self.kv_grow[s % self.block]
                while self.kv_used + g > cap and self.n_run > 1:
                    q = self._preempt(s)
                    preempted = True
                    g = self.kv_grow[s % self.block]
                self.kv_used += g
            n_dec = self.n_dec
            budget = c.budget - n_dec
            seqs = c.max_seqs - n_dec
            # Chunks first come first served: the admitted prompts, then (none in a step that
            # preempted, as in vLLM V1) the waiting ones while their blocks fit; a prompt longer
            # than what is left is chunked.
            ptok = nbytes = 0.0
            fin: list[_Seq] = []
            nz = 1.0
            i = 0
            pre = self.pre
            while True:
                if i < len(pre):
                    q = pre[i]
                    i += 1
                elif budget > 0 and seqs > 0 and not preempted:
                    if self.redo:
                        if kv and not self._admissible(self.redo[0].tok, cap - self.kv_used):
                            self.kv_stalls += 1
                            break
                        q = self.redo.popleft()
                    elif self.head < n and arr[self.head] <= start:
                        h0 = self.head
                        if kv and not self._admissible(tok[h0], cap - self.kv_used):
                            self.kv_stalls += 1
                            break
                        q = _Seq(arr[h0], tok[h0], gen[h0], noise[h0])
                        self.head += 1
                    else:
                        break
                    q.alive = True
                    q.blocks = -(-math.ceil(q.tok) // self.block) if kv else 0
                    self.kv_used += q.blocks
                    self.n_run += 1
                    self.running.append(q)
                    pre.append(q)
                    i += 1
                else:
                    break
                if budget <= 0 or seqs <= 0:
                    break
                had = q.prog
                rem = q.tok - had
                take = min(rem, budget, lim)
                ptok += take
                budget -= take
                seqs -= 1
                nbytes += (c.bytes_fixed if had == 0.0 else 0.0) + c.bytes_per_token * take
                nz = q.noise
                q.prog = had + take
                if take >= rem:
                    fin.append(q)
            if kv and self.kv_used > self.kv_peak:
                self.kv_peak = self.kv_used
            lin = c.per_token_s * (ptok + n_dec)
            gpu = (max(c.floor_s, lin) + c.per_ctx_s * self.dec_ctx + c.per_request_s * len(fin)) * nz
            end = start + c.fixed_s + gpu + nbytes * c.per_byte_s
            busy += gpu
            if fin:
                self.pre = [q for q in pre if q.prog < q.tok]
            for q in fin:
                if not q.reported:
                    q.reported = True
                    done.append(end)
                    lat.append(end - q.arr)
                out = q.gen
                if out > 1:  # the prefill step gave the first token; out - 1 decode steps follow
                    q.fin, q.last = s, s + int(out) - 1
                    q.ctx = q.tok + out / 2  # mean context while decoding
                    self.ids += 1
                    heapq.heappush(self.decodes, (q.last, q.ctx, self.ids, q))
                    self.n_dec += 1
                    self.dec_ctx += q.ctx
                    self.dec_last = max(self.dec_last, q.last)
                    if kv:
                        self.kv_grow[(s + 1 - math.ceil(q.tok)) % self.block] += 1
                else:
                    self._drop(q, s + 1)
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
