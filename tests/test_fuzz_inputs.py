"""Inputs found by fuzzing the entry points (check-config, replay's scenario and trace loaders,
the policy canary's files): each ends in a message naming the file and the key or line, exit 2,
never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main
from replay.canary import CanaryError, load_policy_table

# tomllib recurses once per nesting level: a few thousand levels overflow Python's stack.
DEEP = "x = " + "[" * 3000 + "1" + "]" * 3000 + "\n"


def test_deeply_nested_config_is_a_syntax_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "deep.toml"
    f.write_text(DEEP)
    assert main(["check-config", str(f)]) == 2
    assert f"{f}: TOML syntax: arrays or tables nested too deeply" in capsys.readouterr().err


def test_deeply_nested_scenario_is_a_syntax_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "deep.toml"
    f.write_text(DEEP)
    assert main(["replay", str(f), "--jobs", "1"]) == 2
    assert f"{f}: TOML syntax: arrays or tables nested too deeply" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("body", "says"),
    [(DEEP.encode(), "nested too deeply"), (b'[policy]\ny_windows = "\xff"\n', "not UTF-8 text")],
    ids=["deep", "not-utf8"],
)
def test_canary_policy_file_that_is_not_toml(tmp_path: Path, body: bytes, says: str) -> None:
    f = tmp_path / "p.toml"
    f.write_bytes(body)
    with pytest.raises(CanaryError, match=f"^{f}: .*{says}"):
        load_policy_table(str(f))


def _config(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "c.toml"
    f.write_text(f'[host]\nstate_dir = "{tmp_path}/state"\ncgroup_root = "{tmp_path}"\n{text}')
    return f


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ('[signals]\nproc_root = "/' + "proc/" * 1000 + '"\n', "signals.proc_root", "at most 4095 bytes"),
        ('[signals]\nsys_root = "/' + "s" * 300 + '"\n', "signals.sys_root", "longer than 255 bytes"),
        (
            '[[tenants]]\nname = "etl"\nrole = "bulk"\ncgroup = "a/' + "b" * 300 + '"\n',
            "tenants[0](etl).cgroup",
            "longer than 255 bytes",
        ),
    ],
    ids=["path-over-4095", "component-over-255", "cgroup-component-over-255"],
)
def test_path_too_long_for_linux(
    tmp_path: Path, text: str, key: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: OSError ENAMETOOLONG from pathlib's exists()/is_dir() in the file checks."""
    f = _config(tmp_path, text)
    assert main(["check-config", str(f)]) == 2
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith(f"{f}: {key}: "))
    assert says in line and len(line) < 400, line  # the value shown cut short


def test_path_that_cannot_be_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state_dir under a directory this user may not search (as a non-root check-config sees
    /var/lib/private/...): pathlib's exists() raises PermissionError instead of answering."""
    f = _config(tmp_path, "")
    real = Path.stat

    def stat(self: Path, *, follow_symlinks: bool = True) -> object:
        if str(self).startswith(f"{tmp_path}/state"):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(Path, "stat", stat)
    monkeypatch.setattr("os.geteuid", lambda: 0)  # as root: an error, not a warning
    assert main(["check-config", str(f)]) == 2
    assert f"{f}: host.state_dir: {tmp_path}/state cannot be looked at: Permission denied" in capsys.readouterr().err


def test_scenario_trace_name_too_long(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: OSError ENAMETOOLONG from resolve_data's is_file()."""
    text = (Path(__file__).parents[1] / "replay" / "scenarios" / "vllm-ttft.toml").read_text()
    f = tmp_path / "s.toml"
    f.write_text(text.replace('trace = "AzureLLMInferenceTrace_conv.csv"', 'trace = "' + "x" * 300 + '.csv"'))
    assert main(["replay", str(f), "--jobs", "1"]) == 2
    assert f"{f}: hosts[0](a100x4).tenants[0](vllm).requests.trace: no such file" in capsys.readouterr().err


HEAD = b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        (b"2023-11-16 18:15:50.9951690,abc,109\n", ":3: bad row"),
        (b"2023-11-16 18:15:50.9951690,\xff\xfe,109\n", ": not UTF-8 text"),
        (b"2023-11-16 18:15:50.9951690,nan,109\n", ":3: bad row"),
        (b"2023-11-16 18:15:50+02:00,374,44\n", ":3: bad row"),
    ],
    ids=["non-numeric", "not-utf8", "nan-tokens", "naive-then-aware"],
)
def test_bad_request_trace_is_a_scenario_problem(
    tmp_path: Path, rows: bytes, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: a traceback from the simulator's run (ValueError, UnicodeDecodeError,
    TypeError), or nan taken as it came; now the scenario's key,
    then the trace's file and line, before any run."""
    text = (Path(__file__).parents[1] / "replay" / "scenarios" / "vllm-ttft.toml").read_text()
    f = tmp_path / "s.toml"
    f.write_text(text.replace('trace = "AzureLLMInferenceTrace_conv.csv"', 'trace = "t.csv"'))
    (tmp_path / "t.csv").write_bytes(HEAD + rows)
    assert main(["replay", str(f), "--jobs", "1", "--duration", "10", "--policies", "static"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tailguard replay: {f}: hosts[0](a100x4).tenants[0](vllm).requests.trace: {tmp_path}/t.csv")
    assert says in err and "Traceback" not in err


def test_a_request_trace_out_of_arrival_order_is_sorted(tmp_path: Path) -> None:
    """Requests logged at completion, or by several front ends, are not in arrival order: they are
    taken sorted, counted from the earliest (they were taken as they came, time running backwards)."""
    from replay.arrivals import load_request_trace

    f = tmp_path / "t.csv"
    f.write_bytes(
        b"TIMESTAMP,ContextTokens,GeneratedTokens\n"
        + b"2023-11-16 18:15:40.0000000,374,44\n"
        + b"2023-11-16 18:15:30.0000000,10,2\n"
        + b"2023-11-16 18:15:35.5000000,20,3\n"
    )
    times, tokens, generated = load_request_trace(str(f))
    assert times.tolist() == [0.0, 5.5, 10.0] and tokens.tolist() == [10.0, 20.0, 374.0]
    assert generated.tolist() == [2.0, 3.0, 44.0]


def test_policy_ranges_are_the_configs() -> None:
    """replay's table (it may not import controller/) against the config's [policy] bounds."""
    from annotated_types import Ge, Gt, Le, Lt

    from controller.config import PolicyConfig
    from replay.policy_ranges import RANGES

    for name, field in PolicyConfig.model_fields.items():
        lo = hi = None
        lo_x = hi_x = False
        for m in field.metadata:
            if isinstance(m, Gt | Ge):
                lo, lo_x = (m.gt, True) if isinstance(m, Gt) else (m.ge, False)
            if isinstance(m, Lt | Le):
                hi, hi_x = (m.lt, True) if isinstance(m, Lt) else (m.le, False)
        if lo is not None or hi is not None:
            assert RANGES[name] == (lo, lo_x, hi, hi_x), name


def test_scenario_policy_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: ZeroDivisionError from the decision core mid-run (fsm/ladder.py: y_windows = 0; sm_busy = 0)."""
    text = (Path(__file__).parents[1] / "replay" / "scenarios" / "p4d-demo.toml").read_text()
    f = tmp_path / "s.toml"
    assert text.count("\n[policy]\n") == 1
    f.write_text(text.replace("\n[policy]\n", "\n[policy]\nsm_busy = inf\ndram_busy = 0\n"))
    assert main(["replay", str(f), "--jobs", "1", "--duration", "10", "--policies", "full"]) == 2
    err = capsys.readouterr().err
    assert f"{f}: policy.sm_busy: must be a finite number (got inf); policy.dram_busy: must be > 0 (got 0)" in err


def test_trace_header_policy_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: ZeroDivisionError from fsm/diagnosis.py in `replay --shadow` for a recorded sm_busy = 0."""
    import json

    src = Path(__file__).parent / "data" / "trace-v1_example-spec_5-ticks.jsonl"
    lines = src.read_text().splitlines(keepends=True)
    head = json.loads(lines[0])
    head["spec"]["policy"]["sm_busy"] = 0
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps(head) + "\n" + "".join(lines[1:]))
    assert main(["replay", "--shadow", str(f), "--quiet"]) == 2
    assert f"{f}:1: bad spec: header.spec.policy.sm_busy: must be > 0 (got 0.0)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("trace_speed = 0.4", "trace_speed = inf", "hosts[0](a100x4).tenants[0](vllm).requests.trace_speed"),
        ("\nrelaunch_s = 60.0", "\nrelaunch_s = nan", "scenario.relaunch_s"),
    ],
    ids=["inf", "nan"],
)
def test_scenario_number_not_finite(
    old: str, new: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: ZeroDivisionError mid-run (replay/arrivals.py: trace_speed = inf makes the trace's cycle
    0); inf and nan are now refused by the scenario's schema, as by the config's."""
    text = (Path(__file__).parents[1] / "replay" / "scenarios" / "vllm-ttft.toml").read_text()
    f = tmp_path / "s.toml"
    assert text.count(old) == 1
    f.write_text(text.replace(old, new))
    assert main(["replay", str(f), "--jobs", "1", "--duration", "10", "--policies", "static"]) == 2
    assert f"{f}: {key}: Input should be a finite number" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "old", "new", "says"),
    [
        ("diurnal", "rate = 85.0", "rate = 85e8", "(t1): requests.rate x the schedule's peak level is 8.5e+09"),
        ("vllm-ttft", "trace_speed = 0.4", "trace_speed = 1e15", "requests.trace_speed: Input should be less than"),
        ("vllm-ttft", "kv_bytes_per_token = ", "kv_bytes_per_token = 5e-324 #", "kv_bytes_per_token: 0 (no KV"),
    ],
    ids=["peak-rate", "trace-speed", "kv-denormal"],
)
def test_scenario_number_out_of_the_simulators_range(
    name: str, old: str, new: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: MemoryError or numpy's 'lam value too large' (arrivals drawn per tick at 1e9-1e15
    requests/s), OverflowError in replay/batching.py (a KV cache of 5e-324 bytes per token)."""
    text = (Path(__file__).parents[1] / "replay" / "scenarios" / f"{name}.toml").read_text()
    f = tmp_path / "s.toml"
    assert text.count(old) == 1
    f.write_text(text.replace(old, new))
    assert main(["replay", str(f), "--jobs", "1", "--duration", "10", "--policies", "static"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


# -- found by the fuzzing of 2026-12-06 (session 20) -------------------------------------------------
MINI = """[scenario]
name = "mini"
{meta}
[[hosts]]
name = "h"
nodes = [
  {{ id = "numa0", kind = "numa", index = 0 }},
  {{ id = "rc0", kind = "root_complex", parent = "numa0" }},
  {{ id = "gpu0", kind = "gpu", parent = "rc0", model = "A100-SXM4-40GB", layout = ["7g.40gb@0"] }},
]

[[hosts.tenants]]
name = "llm"
role = "sensitive"
instance = "gpu0/7g.40gb@0"
slo_ms = 200
requests = {{ {requests} }}
{policy}"""


def _mini(tmp_path: Path, meta: str = "", requests: str = "", policy: str = "", trace: str = "") -> Path:
    """A one-GPU host with one sensitive tenant (10 requests/s, or `trace`), with what is given."""
    f = tmp_path / "mini.toml"
    meta = meta if "seed" in meta else f"seed = 1\n{meta}"
    arrivals = f'trace = "{trace}"' if trace else "rate = 10"
    f.write_text(MINI.format(meta=meta, requests=f"{arrivals}, compute_ms = 5{requests}", policy=policy))
    return f


@pytest.mark.parametrize(
    ("meta", "requests", "policy", "args", "says"),
    [
        ("", "", "", ["--seed", "-1"], "--seed must be a non-negative integer"),
        ("seed = -1", "", "", [], "scenario.seed: Input should be greater than or equal to 0"),
        ("", "", "", ["--duration", "1e12"], "--duration must be a positive number of seconds, at most 2678400"),
        ("duration_s = 1e12", "", "", [], "scenario.duration_s: Input should be less than or equal to 2678400"),
        ("", ', arrivals = "mmpp", burst_ratio = 2, burst_mean_s = 1e308', "", [], "requests.burst_mean_s: Input"),
        ("", "", "[policy]\nhold_retries_per_tick = 0.5", [], "policy.hold_retries_per_tick: must be an integer"),
        ("", "", "[policy]\ny_windows = 3.5", [], "policy.y_windows: must be an integer (got 3.5)"),
    ],
    ids=["seed-arg", "seed", "duration-arg", "duration", "mmpp-mean", "int-policy", "int-policy-report"],
)
def test_scenario_values_that_crashed_or_hung_the_run(
    meta: str,
    requests: str,
    policy: str,
    args: list[str],
    says: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Were: numpy's 'expected non-negative integer' (a negative seed), a run of 1e12 s that never
    ended, 'lam < 0 or lam is NaN' (an MMPP state of 1e308 s), 'slice indices must be integers'
    in fsm/ladder.py and replay/report.py (a count given as 0.5)."""
    f = _mini(tmp_path, meta, requests, policy)
    dur = [] if any("duration" in a for a in [meta, *args]) else ["--duration", "60"]
    assert main(["replay", str(f), "--jobs", "1", "--policies", "static,full", *dur, *args]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("name", "body", "says"),
    [
        ("same.csv", HEAD + b"2023-11-16 18:15:46.6805900,10,2\n", "its 2 requests arrive within 0 s"),
        ("tiny.csv", b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
         + b"0,m,1,1,2,x\n1e-300,m,1,1,2,x\n", "its 2 requests arrive within 1e-300 s"),
        ("huge.csv", b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
         + b"-1e308,m,1,1,2,x\n1e308,m,1,1,2,x\n", "its arrival times span more than a float holds"),
        ("big.jsonl", b'{"timestamp": 1' + b"0" * 400 + b', "input_length": 1}\n',
         "big.jsonl:1: bad line: int too large"),
    ],
    ids=["zero-span", "tiny-span", "span-past-float", "json-int-past-float"],
)  # fmt: skip
def test_request_traces_that_crashed_or_hung_the_run(
    name: str, body: bytes, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Were: ZeroDivisionError (every request at one time: a cycle of 0 s), a hang (a cycle of
    1e-300 s: 1e302 cycles a tick), 'cannot convert float NaN to integer' (a span past a float's
    range), OverflowError (a JSON integer of 400 digits)."""
    (tmp_path / name).write_bytes(body)
    f = _mini(tmp_path, trace=name)
    assert main(["replay", str(f), "--jobs", "1", "--duration", "60", "--policies", "static"]) == 2
    err = capsys.readouterr().err
    assert f"requests.trace: {tmp_path}/{name}" in err and says in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ('[signals]\ndcgm_exporter_url = "http://\\u0000/metrics"\n', "signals.dcgm_exporter_url",
         "a control or invisible character ('\\x00') at position 7"),
        ('[[gpus]]\nname = "gpu0"\nindex = 0\n[[tenants]]\nname = "a"\nrole = "bulk"\ninstance = "gpu0/3g.20gb@4"\n'
         '[[tenants]]\nname = "b"\nrole = "bulk"\ninstance = "gpu0/3g.20gb@04"\n', "tenants[1](b).instance",
         "START in ASCII digits, no leading zero"),
        ('[[gpus]]\nname = "gpu0"\nindex = 4294967296\n', "gpus[0](gpu0).index", "less than 4294967296"),
    ],
    ids=["url-nul", "instance-leading-zero", "gpu-index-past-uint"],
)  # fmt: skip
def test_config_values_check_config_took(
    tmp_path: Path, text: str, key: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Were: exit 0, then urllib's 'URL can't contain control characters' on every scrape; two
    tenants at home on one instance (@4 and @04, or an Arabic-Indic 4); ctypes wrapping the
    index to another GPU."""
    f = _config(tmp_path, text)
    assert main(["check-config", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"{f}: {key}: " in err and says in err, err


@pytest.mark.parametrize("kind", ["dangling", "loop", "proc"])
def test_state_dir_that_cannot_be_made(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: exit 0, then the daemon's mkdir failed (File exists, ELOOP, ENOENT) and it ran without a
    journal: exists() is False for a dangling link and for a loop, and root may 'write' /proc."""
    link = tmp_path / "link"
    if kind == "dangling":
        link.symlink_to(tmp_path / "nowhere")
        state, says = link, f"{link} is a symbolic link to {tmp_path}/nowhere, which does not resolve"
    elif kind == "loop":
        (tmp_path / "other").symlink_to(link)
        link.symlink_to(tmp_path / "other")
        state, says = link / "x", f"{link} is a symbolic link to {tmp_path}/other, which does not resolve"
    else:
        state, says = Path("/proc/tailguard-state"), "is under /proc, a kernel filesystem"
    f = tmp_path / "c.toml"
    f.write_text(f'[host]\nstate_dir = "{state}"\ncgroup_root = "{tmp_path}"\n')
    assert main(["check-config", str(f)]) == 2
    assert f"{f}: host.state_dir: " in (err := capsys.readouterr().err) and says in err, err


def test_from_trace_with_a_tenant_missing_from_one_observation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: KeyError in replay/fromtrace.py (the device set read with .get(), the rates by index)."""
    import json

    lines = (Path(__file__).parent / "data" / "trace-v1_example-spec_5-ticks.jsonl").read_text().splitlines()
    second = json.loads(lines[1])
    second["tenants"] = {}
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join([lines[0], json.dumps(second), *lines[2:]]) + "\n")
    assert main(["scenario", "from-trace", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tailguard scenario: ") and f"{f}: " in err and "Traceback" not in err, err


def test_status_url_that_is_no_url(capsys: pytest.CaptureFixture[str]) -> None:
    """Was: ValueError 'Invalid IPv6 URL' from urllib, a traceback."""
    assert main(["status", "--url", "http://[::1/"]) == 1
    assert "tailguard status: http://[::1/: not a URL (Invalid IPv6 URL)" in capsys.readouterr().err


def test_trace_header_policy_number_past_a_float(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: OverflowError from math.isfinite(10**400) in the policy's range check, a traceback."""
    import json

    src = Path(__file__).parent / "data" / "trace-v1_example-spec_5-ticks.jsonl"
    lines = src.read_text().splitlines(keepends=True)
    head = json.loads(lines[0])
    head["spec"]["policy"]["mps_guard_percent"] = 10**400
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps(head) + "\n" + "".join(lines[1:]))
    assert main(["replay", "--shadow", str(f), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{f}:1: bad spec: header.spec.policy.mps_guard_percent: must be a finite number (got 1000000" in err
