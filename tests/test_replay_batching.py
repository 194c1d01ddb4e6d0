"""The batched-prefill server (replay/batching.py) and the vllm-ttft scenario that uses it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.batching import BatchServer, StepCost
from replay.queueing import lindley
from replay.runner import run_host
from replay.scenario import SCENARIO_DIR, ScenarioError, parse_scenario

VLLM = (SCENARIO_DIR / "vllm-ttft.toml").read_text()


def _serve(
    c: StepCost, arr: np.ndarray, tok: np.ndarray, gen: np.ndarray, noise: np.ndarray, tick: float, free_at: float = 0.0
) -> np.ndarray:
    """TTFTs in arrival order, fed tick by tick as the simulator does, then drained."""
    b = BatchServer()
    done_lat: list[np.ndarray] = []
    horizon = float(arr[-1]) + tick if arr.size else tick
    t = 0.0
    while t < horizon:
        m = (arr >= t) & (arr < t + tick)
        b.push(arr[m], tok[m], gen[m], noise[m])
        done, lat, free_at, _ = b.run(c, free_at, t + tick)
        assert np.all(np.diff(done) >= 0) and np.all(lat >= 0)
        done_lat.append(np.stack((done - lat, lat)))
        t += tick
    done, lat, free_at = b.drain(free_at)
    done_lat.append(np.stack((done - lat, lat)))
    both = np.concatenate(done_lat, axis=1)
    return both[1][np.argsort(both[0], kind="stable")]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400), st.floats(0.0, 2.0), st.sampled_from([0.05, 0.7, 5.0]), st.integers(0, 2**31))
def test_one_request_per_step_is_the_fcfs_lindley_recursion(n: int, free_at: float, tick: float, seed: int) -> None:
    # max_seqs = 1, a budget no prompt exceeds, no fixed cost, no floor, no decodes: every step is
    # one whole request, so the engine is the FCFS server exactly (noise and transfer included).
    rng = np.random.default_rng(seed)
    arr = np.sort(rng.uniform(0.0, 20.0, n))
    tok = rng.integers(0, 5000, n).astype(float)
    noise = rng.lognormal(-0.02, 0.2, n)
    c = StepCost(
        budget=1e9, max_seqs=1, per_token_s=4e-5, per_request_s=1e-3, per_byte_s=2e-11, bytes_fixed=1e6,
        bytes_per_token=262144.0,
    )  # fmt: skip
    service = (c.per_request_s + c.per_token_s * tok) * noise + (c.bytes_fixed + c.bytes_per_token * tok) * c.per_byte_s
    want, _ = lindley(arr, service, free_at)
    got = _serve(c, arr, tok, np.zeros(n), noise, tick, free_at)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_short_prompt_behind_a_long_one() -> None:
    arr = np.array([0.0, 0.001])
    tok = np.array([20000.0, 100.0])
    one, zero = np.ones(2), np.zeros(2)
    per_token = 4.4e-5  # a 7B model on a 4g slice
    fcfs, _ = lindley(arr, per_token * tok, 0.0)
    chunked = _serve(StepCost(budget=2048, max_seqs=256, per_token_s=per_token), arr, tok, zero, one, 5.0)
    passing = _serve(
        StepCost(budget=2048, max_seqs=256, long_prefill=512, per_token_s=per_token), arr, tok, zero, one, 5.0
    )
    # FCFS: the short one waits for the whole long prefill (about 0.88 s).
    assert fcfs[1] > 0.85
    # Chunked prefill alone (vLLM's default): it rides in the long one's last step, never later.
    assert chunked[1] <= fcfs[1] + 1e-9
    # With long_prefill_token_threshold the long prompt takes 512 tokens a step: the short one
    # shares the second step (the first started before it arrived) and is served within ~50 ms.
    assert passing[1] < 0.05 < fcfs[1] / 10
    # The long one is done last, after both prompts' work (FCFS finishes it first).
    assert passing[0] == pytest.approx(per_token * tok.sum(), rel=1e-9)


def test_decodes_and_step_costs_slow_the_steps() -> None:
    rng = np.random.default_rng(1)
    n = 300
    arr = np.sort(rng.uniform(0.0, 30.0, n))
    tok = rng.integers(100, 3000, n).astype(float)
    one = np.ones(n)
    base = StepCost(budget=2048, max_seqs=256, per_token_s=4.4e-5)
    heavier = [
        base,
        StepCost(budget=2048, max_seqs=256, per_token_s=4.4e-5, floor_s=0.009, fixed_s=0.001),
        StepCost(budget=2048, max_seqs=256, per_token_s=4.4e-5, floor_s=0.009, fixed_s=0.001, per_ctx_s=3e-7),
    ]
    p99 = [float(np.quantile(_serve(c, arr, tok, np.full(n, 200.0), one, 5.0), 0.99)) for c in heavier]
    assert all(b > a for a, b in itertools.pairwise(p99)), p99


def _vllm(text: str, name: str, duration: float = 1800.0, seed: int = 1) -> np.ndarray:
    r = run_host(parse_scenario(text, f"/tmp/{name}.toml"), 0, "static", duration, seed)
    return r.latencies


def test_more_pcie_interference_never_improves_ttft_p99() -> None:
    # The ETL job on vLLM's switch (on 900-1800 s): its demand shrinks vLLM's transfer share, which
    # stretches every step that carries prompt chunks.
    text = VLLM.replace('link_gbps = 7.0\naliases = ["nvme0n1"]', 'link_gbps = 20.0\naliases = ["nvme0n1"]')
    p99 = []
    for demand in (0.5, 4.0, 8.0, 15.0):
        lat = _vllm(text.replace("demand_gbps = 6.0", f"demand_gbps = {demand}"), f"etl{demand}")
        p99.append(float(np.quantile(lat, 0.99)))
    assert all(b >= a for a, b in itertools.pairwise(p99)), p99
    assert p99[-1] > p99[0] * 1.02


def test_batched_replay_is_deterministic_by_seed() -> None:
    a = _vllm(VLLM, "a", 900.0, seed=4)
    b = _vllm(VLLM, "b", 900.0, seed=4)
    c = _vllm(VLLM, "c", 900.0, seed=5)
    assert a.size > 1000 and np.array_equal(a, b)
    assert a.size == c.size and not np.array_equal(a, c)  # same trace, other noise


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ('\nserver = "batched"', '\nserver = "vllm"', r"requests\.server: Input should be 'fcfs' or 'batched'"),
        ("max_batched_tokens = 2048", "max_batched_tokens = 0", r"requests\.max_batched_tokens: Input should be"),
        ("step_floor_ms = 35.0", "step_floor_ms = -1", r"requests\.step_floor_ms: Input should be greater"),
        (
            '\nserver = "batched"',
            '\nserver = "fcfs"',
            r"requests: .*max_batched_tokens.*only with server = \"batched\"",
        ),
        ("max_seqs = 256", "max_seq = 256", r"requests\.max_seq: unknown key"),
    ],
)
def test_bad_batched_keys_name_file_and_key(old: str, new: str, expect: str) -> None:
    assert old in VLLM
    with pytest.raises(ScenarioError, match=r"(?s)bad\.toml: .*tenants\[0\]\(vllm\)\." + expect):
        parse_scenario(VLLM.replace(old, new, 1), "bad.toml")
