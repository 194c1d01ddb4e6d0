"""The batched-prefill server (replay/batching.py) and the vllm-ttft scenario that uses it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm.mig import model_by_name
from fsm.observation import InstanceRef
from replay.batching import BatchServer, StepCost, kv_blocks
from replay.queueing import lindley
from replay.runner import run_host
from replay.scenario import SCENARIO_DIR, ScenarioError, parse_scenario
from replay.simulator import HostSim

VLLM = (SCENARIO_DIR / "vllm-ttft.toml").read_text()


def _serve(
    c: StepCost,
    arr: np.ndarray,
    tok: np.ndarray,
    gen: np.ndarray,
    noise: np.ndarray,
    tick: float,
    free_at: float = 0.0,
    b: BatchServer | None = None,
) -> np.ndarray:
    """TTFTs in arrival order, fed tick by tick as the simulator does, then drained."""
    b = BatchServer() if b is None else b
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
    # The ETL job on vLLM's switch (on 900-1800 s): its host -> GPU leg shrinks vLLM's downstream
    # transfer share (its reads go up the switch and do not), which stretches every step that
    # carries prompt chunks. Drive and NIC links widened so the demand is what limits the ETL.
    text = VLLM.replace('link_gbps = 7.0\naliases = ["nvme0n1"]', 'link_gbps = 50.0\naliases = ["nvme0n1"]')
    text = text.replace('link_gbps = 25.0\naliases = ["mlx5_0"]', 'link_gbps = 50.0\naliases = ["mlx5_0"]')
    p99 = []
    for demand in (0.5, 10.0, 20.0, 30.0):
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
        ("kv_block_tokens = 16", "kv_block_tokens = 0", r"requests\.kv_block_tokens: Input should be greater"),
        ("gpu_memory_utilization = 0.9", "gpu_memory_utilization = 1.5", r"requests\.gpu_memory_utilization: Input"),
        ("weights_gb = 14.6", "weights_gb = 40", r"requests\.weights_gb: .*leave no KV cache on 4g\.40gb"),
        (
            "kv_bytes_per_token = 524288",
            "kv_bytes_per_token = 0",
            r"requests: .*gpu_memory_utilization, kv_block_tokens, overhead_gb, weights_gb: only with kv_bytes_per",
        ),
    ],
)
def test_bad_batched_keys_name_file_and_key(old: str, new: str, expect: str) -> None:
    assert old in VLLM
    with pytest.raises(ScenarioError, match=r"(?s)bad\.toml: .*tenants\[0\]\(vllm\)\." + expect):
        parse_scenario(VLLM.replace(old, new, 1), "bad.toml")


# -- KV-cache capacity: admission control and preemption -----------------------------------------
KV_KEYS = ("kv_bytes_per_token", "weights_gb", "overhead_gb", "gpu_memory_utilization", "kv_block_tokens")


def _without_kv(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(KV_KEYS)) + "\n"


def _quiet(text: str, speed: float) -> str:
    text = text.replace("on = [[900, 1800]] }", "on = [[900, 1800]], level = 0 }")
    text = text.replace("on = [[1500, 2400]] }", "on = [[1500, 2400]], level = 0 }")
    return text.replace("trace_speed = 0.4", f"trace_speed = {speed}")


def _sim(text: str, duration: float, seed: int = 1, instance: str | None = None) -> tuple[np.ndarray, BatchServer]:
    """Static run (no controller) of the vllm tenant, optionally on another instance."""
    sc = parse_scenario(text, "/tmp/kv.toml")
    sim = HostSim(sc.hosts[0], sc.meta, seed, 0)
    if instance is not None:
        sim.instance["vllm"] = InstanceRef.parse(instance)
    for _ in range(int(duration / sc.meta.tick_s)):
        sim.step(None)
    sim.drain()
    b = sim.sensitive["vllm"].batch
    assert b is not None
    return np.concatenate(sim.stats.latencies), b


def _kv_consistent(b: BatchServer) -> bool:
    """The blocks the server counts are the ones its admitted sequences hold (decodes may still be
    running after a drain: it serves the queue, not the decodes)."""
    return b.kv_used == sum(b._held(q, b.step) for q in b.running if q.alive) and b.n_run == sum(
        q.alive for q in b.running
    )


def test_a_cache_big_enough_for_everything_is_todays_model() -> None:
    # Pinned from the model before it had a KV cache (commit 9fbf7df): the same scenario and a
    # synthetic mix with decodes, a floor, long_prefill and ticks that cut steps.
    # (and before vLLM's max_model_len admission check: no limit here, so no prompt is refused)
    base = VLLM.replace("max_model_len = 4096\n", "")
    huge = base.replace("kv_bytes_per_token = 524288", "kv_bytes_per_token = 1.0")
    a = _vllm(huge, "huge", 1800.0, seed=4)
    assert np.array_equal(a, _vllm(_without_kv(base), "nokv", 1800.0, seed=4))
    # Re-pinned when PCIe links became full duplex (the ETL's drive reads no longer share vLLM's
    # downstream capacity: 294.435 -> 286.785 s in total; with the ETL off both models give 278.629).
    assert a.size == 3470 and float(a.sum()) == 286.7850341796875
    rng = np.random.default_rng(7)
    n = 400
    arr = np.sort(rng.uniform(0, 20, n))
    tok = rng.integers(0, 6000, n).astype(float)
    gen = rng.integers(1, 400, n).astype(float)
    noise = rng.lognormal(-0.005, 0.1, n)
    base = dict(budget=2048, max_seqs=64, long_prefill=700, fixed_s=0.001, floor_s=0.009, per_token_s=4.4e-5)
    more = dict(per_ctx_s=3e-7, per_byte_s=2e-11, bytes_fixed=1e6, bytes_per_token=262144.0)
    b = BatchServer()
    got = _serve(StepCost(**base, **more, kv_blocks=10**9), arr, tok, gen, noise, 0.7, b=b)  # type: ignore[arg-type]
    assert np.array_equal(got, _serve(StepCost(**base, **more), arr, tok, gen, noise, 0.7))  # type: ignore[arg-type]
    assert float(got.sum()) == 20779.96436073559 and b.preemptions == 0 and _kv_consistent(b)


def test_a_cache_too_small_for_two_long_prompts_serialises_them() -> None:
    # Two 3,000-token prompts; the first then decodes 50 tokens. 200 blocks hold one prompt (188
    # blocks) and its decodes, not both prompts: the second waits until the first's decodes end.
    arr, tok, gen, one = np.array([0.0, 0.001]), np.array([3000.0, 3000.0]), np.array([50.0, 1.0]), np.ones(2)
    c = dict(budget=2048, max_seqs=256, per_token_s=4.4e-5, floor_s=0.01)
    free = _serve(StepCost(**c), arr, tok, gen, one, 5.0)  # type: ignore[arg-type]
    b = BatchServer()
    small = _serve(StepCost(**c, kv_blocks=200), arr, tok, gen, one, 5.0, b=b)  # type: ignore[arg-type]
    assert small[0] == pytest.approx(4.4e-5 * 3000)  # the first alone (it shared a step before)
    assert free[1] < free[0] + 0.2  # unlimited: the second rides along the first's decodes
    assert small[1] > small[0] + 49 * 0.01  # limited: after 49 decode steps of at least 10 ms
    assert b.preemptions == 0 and _kv_consistent(b) and b.queued == 0


def test_preemption_when_decodes_outgrow_the_cache_and_the_request_still_completes() -> None:
    # A's decodes grow a block every 16 steps; B (1,600 tokens, 100 blocks) is admitted beside it
    # but prefills slowly (32 tokens a step); A outgrows the 104 blocks while B still prefills, so
    # B, the newest, is preempted, waits for A's blocks, and is prefilled again: its TTFT counts it.
    arr, tok, gen, one = np.array([0.0, 0.0005]), np.array([16.0, 1600.0]), np.array([1000.0, 1.0]), np.ones(2)
    c = dict(budget=32, max_seqs=256, fixed_s=0.001)
    free = _serve(StepCost(**c), arr, tok, gen, one, 0.5)  # type: ignore[arg-type]
    b = BatchServer()
    small = _serve(StepCost(**c, kv_blocks=104), arr, tok, gen, one, 0.5, b=b)  # type: ignore[arg-type]
    assert free[1] < 0.06  # 1600 / 31 steps of 1 ms
    assert b.preemptions >= 1
    assert small.size == 2 and small[0] == free[0]
    assert small[1] > 0.999 + 0.05  # after A's 999 decode steps, then its whole prefill again
    assert _kv_consistent(b) and b.queued == 0


def test_every_request_completes_once_under_heavy_preemption() -> None:
    rng = np.random.default_rng(3)
    n = 300
    arr = np.sort(rng.uniform(0.0, 10.0, n))
    tok = rng.integers(1, 2000, n).astype(float)
    gen = rng.integers(1, 600, n).astype(float)
    c = StepCost(budget=2048, max_seqs=256, fixed_s=0.001, floor_s=0.009, per_token_s=4.4e-5, kv_blocks=600)
    b = BatchServer()
    got = _serve(c, arr, tok, gen, np.ones(n), 2.0, b=b)
    assert b.preemptions > 10 and got.size == n and np.all(got > 0)
    assert b.kv_peak <= 600 and _kv_consistent(b)


def test_the_kv_cache_grows_with_the_slice() -> None:
    req = parse_scenario(VLLM, "v.toml").hosts[0].tenants["vllm"].requests
    assert req is not None
    h100 = model_by_name("H100-80GB-HBM3")
    small, big = (kv_blocks(req, h100.profile(p).gib) for p in ("4g.40gb", "7g.80gb"))
    assert 2300 < small < 2500 and big > 2.8 * small  # ~38,700 and ~112,000 tokens
    # In the simulator the same load preempts on the 4g.40gb slice and not on a 7g.80gb.
    text = _quiet(VLLM, 0.7)
    _, b4 = _sim(text, 900.0)
    _, b7 = _sim(text, 900.0, instance="gpu1/7g.80gb@0")
    assert b4.preemptions > 0 and b4.kv_peak == small
    assert b7.preemptions == 0 and b7.kv_peak < big and b7.cost is not None and b7.cost.kv_blocks == big


def test_kv_limited_replay_is_deterministic_by_seed() -> None:
    text = _quiet(VLLM, 0.8)
    a, ba = _sim(text, 600.0, seed=3)
    b, _ = _sim(text, 600.0, seed=3)
    c, _ = _sim(text, 600.0, seed=4)
    assert ba.preemptions > 0 and np.array_equal(a, b)
    assert a.size == c.size and not np.array_equal(a, c)
