"""vLLM's admission check: a prompt of max_model_len tokens or more is refused and never queued."""

from __future__ import annotations

from replay.runner import run_host
from replay.scenario import SCENARIO_DIR, parse_scenario
from replay.simulator import HostSim, load_request_trace, resolve_data

VLLM = (SCENARIO_DIR / "vllm-ttft.toml").read_text()
P4D = (SCENARIO_DIR / "paper-p4d.toml").read_text().replace("copies = 2", "copies = 1")


def _with_limit(text: str, limit: int | None) -> str:
    text = "\n".join(line for line in text.splitlines() if not line.startswith("max_model_len"))
    if limit is None:
        return text
    return text.replace('\nserver = "batched"', f'\nserver = "batched"\nmax_model_len = {limit}')


def test_prompts_at_or_over_max_model_len_are_rejected_not_queued() -> None:
    # The Azure conversation trace replayed at 0.4x: 600 s covers trace seconds [0, 240).
    scen = parse_scenario(_with_limit(VLLM, 2048), "/tmp/adm.toml")
    req = scen.hosts[0].tenants["vllm"].requests
    assert req is not None and req.trace is not None and req.max_model_len == 2048
    path = resolve_data(req.trace, scen.hosts[0].base_dir)
    assert path is not None
    times, tokens, _ = load_request_trace(str(path))
    window = times / req.trace_speed < 600.0
    want_rejected = int((tokens[window] >= 2048).sum())  # vLLM: prompt_len == max_model_len is refused too
    assert want_rejected > 10
    sim = HostSim(scen.hosts[0], scen.meta, seed=1)
    for _ in range(120):  # 600 s
        sim.advance()
    sim.drain()
    served = sum(a.size for a in sim.stats.latencies)
    assert sim.stats.rejected == {"vllm": want_rejected}
    assert served + want_rejected == int(window.sum())
    assert sim.stats.delivered["vllm"] == served


def test_without_a_limit_nothing_is_rejected_and_fcfs_rejects_too() -> None:
    r = run_host(parse_scenario(_with_limit(VLLM, None), "/tmp/nolim.toml"), 0, "static", 300.0, seed=1)
    assert r.rejected == {"vllm": 0}
    # FCFS with a fixed prompt length: all or nothing.
    fcfs = P4D.replace("noise_cv = 0.25", "noise_cv = 0.25\ntokens = 500\nmax_model_len = 500")
    r = run_host(parse_scenario(fcfs, "/tmp/fcfs.toml"), 0, "static", 60.0, seed=1)
    assert r.latencies.size == 0 and r.rejected["t1"] > 4000
    ok = P4D.replace("noise_cv = 0.25", "noise_cv = 0.25\ntokens = 500\nmax_model_len = 501")
    r2 = run_host(parse_scenario(ok, "/tmp/fcfs2.toml"), 0, "static", 60.0, seed=1)
    assert r2.rejected["t1"] == 0 and r2.latencies.size == r.rejected["t1"]  # the same arrivals, all served
