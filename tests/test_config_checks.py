"""The checks across sections and against the filesystem (controller/config_checks.py,
controller/config_files.py): warnings, the model hook `--probe` builds on, strictness, and the
same checks at `run` start and on a SIGHUP reload."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError, model_validator

from controller import cmd_run
from controller.cli import main
from controller.config import ConfigError, check_loaded, load_checked, parse_config
from controller.config_checks import cross_problems
from controller.config_files import file_problems
from fsm.mig import MODELS
from schema.problems import KeyProblem, KeyProblems, problems_of

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = (ROOT / "systemd" / "tailguard.toml").read_text()

SENS = (
    '[[tenants]]\nname = "llm"\nrole = "sensitive"\nslo_ms = 100\nrelaunch_s = 30\n'
    '[tenants.latency]\nkind = "prometheus"\nurl = "http://127.0.0.1:8000/metrics"\n'
)


def lines(text: str) -> list[str]:
    return [p.line() for p in cross_problems(parse_config(text))]


def test_warnings_do_not_fail_but_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.toml"
    (tmp_path / "x.slice").mkdir()
    f.write_text(
        f'[host]\ncgroup_root = "{tmp_path}"\n' + SENS + '[[tenants]]\nname = "a"\nrole = "bulk"\ncgroup = "x.slice"\n'
        '[[tenants]]\nname = "b"\nrole = "compute"\ncgroup = "x.slice"\n'
        '[exporters.prometheus]\nlisten = "0.0.0.0:9433"\nallow_remote = true\n'
    )
    assert main(["check-config", str(f)]) == 0
    out = capsys.readouterr()
    assert "OK" in out.out and "2 warning(s)" in out.out
    assert f"{f}: tenants[2](b).cgroup: warning: tenants a and b share cgroup x.slice" in out.err
    assert f"{f}: exporters.prometheus.listen: warning: 0.0.0.0:9433" in out.err


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        ("", "tenants: warning: no [[tenants]]"),
        ('[[tenants]]\nname = "a"\nrole = "bulk"\n', 'tenants: warning: no tenant has role = "sensitive"'),
    ],
)
def test_empty_and_unprotected_configs_warn(text: str, warning: str) -> None:
    assert any(warning in ln for ln in lines(text))


def test_a_move_longer_than_the_whole_outage_budget_warns() -> None:
    """A p99 tenant's budget is 0.5 x 1% x 4 h = 72 s: a 120 s relaunch never fits it (the ladder
    would hold every move and resize for the budget, however bad the tail); 60 s fits, and so does
    120 s with the budget doubled, a p999 tenant's 7.2 s does not fit 60 s, and without placement
    or MIG there is no move to warn about."""
    relaunch = SENS.replace("relaunch_s = 30\n", "relaunch_s = 120\n")
    (w,) = lines(relaunch)
    assert w.startswith("tenants[0](llm).relaunch_s: warning: its cheapest move is an outage of 120 s")
    assert "72 s per 14400 s" in w and "never moved or resized" in w
    assert lines(relaunch.replace("relaunch_s = 120", "relaunch_s = 60")) == []
    assert lines(relaunch + "[policy]\noutage_budget_share = 1.0\n") == []
    p999 = SENS.replace("relaunch_s = 30\n", "quantile = 0.999\nrelaunch_s = 60\n")
    assert any("7.2 s per 14400 s" in ln for ln in lines(p999))
    off = "[policy.levers]\nplacement = false\nmig = false\n"
    assert lines(relaunch + off) == []


def test_a_movable_tenant_without_its_relaunch_warns() -> None:
    """Left at the default 5 s, a vLLM server's first moves are priced at a fraction of their
    outage; no lever that moves, nothing to price."""
    unset = SENS.replace("relaunch_s = 30\n", "")
    (w,) = lines(unset)
    assert w.startswith("tenants[0](llm).relaunch_s: warning: not set: tenant llm's moves and resizes are priced")
    assert "default 5 s" in w
    assert lines(unset + "[policy.levers]\nplacement = false\nmig = false\n") == []
    assert lines('[host]\nplatform = "kubernetes"\n' + unset) == []  # the platform moves nobody
    assert lines(SENS) == []


def test_the_resize_lever_with_no_reconfiguration_allowed_warns() -> None:
    (w,) = lines(SENS + "[policy]\nmax_reconfigs_per_hour = 0\n")
    assert w.startswith("policy.max_reconfigs_per_hour: warning: 0 with [policy.levers] mig = true")
    assert lines(SENS + "[policy]\nmax_reconfigs_per_hour = 0\n[policy.levers]\nmig = false\n") == []
    assert lines(SENS + "[policy]\nmax_reconfigs_per_hour = 1\n") == []


def test_an_slo_below_the_median_warns() -> None:
    """A p30 lets 70% of the requests run over the SLO: a percentile typed the other way round."""
    (w,) = lines(SENS.replace("slo_ms = 100\n", "slo_ms = 100\nquantile = 0.3\n"))
    assert w.startswith("tenants[0](llm).quantile: warning: 0.3 is below the median: the SLO lets 70%")
    assert lines(SENS.replace("slo_ms = 100\n", "slo_ms = 100\nquantile = 0.5\n")) == []  # a median SLO


def test_a_source_timeout_near_the_ticks_deadline_warns() -> None:
    """The tick waits for every source at most max(1 s, sample_period_s): a source whose own
    timeout does not end well inside that takes the whole tick with it when it hangs
    (tests/test_daemon_linux_host.py shows the skipped tick); a pushed source is not read on it."""
    (w,) = lines(SENS + "[signals]\ntimeout_s = 5\n")
    assert w.startswith("signals.timeout_s: warning: 5 s leaves no room in the tick's 2 s deadline")
    assert "set it to 1.6 s or less" in w
    assert lines(SENS + "[host]\nsample_period_s = 10\n[signals]\ntimeout_s = 5\n") == []
    (w,) = lines(SENS.replace('metrics"\n', 'metrics"\ntimeout_s = 2\n'))
    assert w.startswith("tenants[0](llm).latency.timeout_s: warning: 2 s leaves no room")
    assert "tenant llm's latency" in w
    # a short period: the deadline is still 1 s, and the default 1 s timeouts race it
    short = SENS + "[host]\nsample_period_s = 0.5\n"
    keys = [w.split(": warning: ")[0] for w in lines(short)]
    assert keys == ["signals.timeout_s", "tenants[0](llm).latency.timeout_s"]
    assert "1 s leaves no room in the tick's 1 s deadline" in lines(short)[0]
    fast = short.replace('metrics"\n', 'metrics"\ntimeout_s = 0.5\n') + "[signals]\ntimeout_s = 0.5\n"
    assert lines(fast) == []


def test_a_readiness_wait_no_longer_than_the_relaunch_is_an_error_and_under_twice_it_warns() -> None:
    """The launcher's readiness wait against the tenant's start-up: no longer fails every move (and
    its move back); under twice it fails a slow start; over ten times it, a hung copy's outage is
    long; in between, or no lever that moves, is fine."""
    launcher = '[tenants.launcher]\nkind = "command"\ncommand = ["/bin/true"]\nreadiness_timeout_s = {}\n'
    text = SENS.replace("relaunch_s = 30\n", "relaunch_s = 60\n") + launcher
    with pytest.raises(ConfigError, match=r"launcher\.readiness_timeout_s: 60 s is no longer than its relaunch_s"):
        parse_config(text.format(60))
    (w,) = lines(text.format(90))
    assert w.startswith("tenants[0](llm).launcher.readiness_timeout_s: warning: 90 s is under twice")
    assert lines(text.format(120)) == []
    assert lines(text.format(30) + "[policy.levers]\nplacement = false\nmig = false\n") == []
    # far longer than the start-up: a copy that hangs costs the whole wait in outage
    (w,) = lines(text.format(601))
    assert w.startswith("tenants[0](llm).launcher.readiness_timeout_s: warning: 601 s is over 10 times its relaunch_s")
    assert lines(text.format(600)) == []


@pytest.mark.parametrize("listen", ["127.0.0.1:9433", "127.0.0.53:9433", "[::1]:9433", "localhost:9433"])
def test_loopback_listens_need_nothing(listen: str) -> None:
    assert lines(SENS + f'[exporters.prometheus]\nlisten = "{listen}"\n') == []


@pytest.mark.parametrize("listen", ["0.0.0.0:1", "[::]:1", "10.0.0.5:1", "[fe80::1]:1", "node-7:1"])
def test_non_loopback_listens_need_allow_remote(listen: str) -> None:
    text = SENS + f'[exporters.prometheus]\nlisten = "{listen}"\n'
    with pytest.raises(ConfigError, match=r"exporters\.prometheus\.listen: .*allow_remote"):
        parse_config(text)
    assert any("warning" in ln for ln in lines(text + "allow_remote = true\n"))
    # A disabled exporter listens nowhere.
    assert lines(text + "enabled = false\n") == []


@pytest.mark.parametrize("listen", ["[zz::1]:1", "[127.0.0.1]:1", "no such host!:1", "a..b:1", "-x:1", "x_y:1"])
def test_a_listen_host_that_is_no_address_nor_name_is_refused(listen: str) -> None:
    """bind() would fail at start, after check-config passed the file: refused here, allow_remote or not."""
    text = SENS + f'[exporters.prometheus]\nlisten = "{listen}"\nallow_remote = true\n'
    with pytest.raises(ConfigError, match=r"exporters\.prometheus\.listen: .*(IPv6 address|host name)"):
        parse_config(text)


def test_a_gpu_past_the_topology_files_gpus_is_a_warning(tmp_path: Path) -> None:
    """The host's tree from a file (8 GPUs): a [[gpus]] index 9 has no path in it."""
    topo = ROOT / "tests" / "fixtures" / "nvidia-smi-topo-m_aws-p4d.24xlarge_8x-a100-40gb.txt"
    text = (
        f'[host]\nstate_dir = "{tmp_path}"\n[[gpus]]\nname = "gpu0"\nindex = {{}}\n'
        f'[topology]\nsource = "topo-matrix"\ntopo_matrix_file = "{topo}"\n'
    )
    (w,) = [p.line() for p in file_problems(parse_config(text.format(9)))]
    assert w.startswith("gpus[0](gpu0).index: warning: 9 is not among the 8 GPU(s) of ")
    assert file_problems(parse_config(text.format(7))) == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("host.lift_throttles_on_exit", '"yes"'),
        ("host.lift_throttles_on_exit", "0"),
        ("host.lift_throttles_on_exit", '"off"'),
        ("policy.y_windows", '"2"'),
        ("policy.y_windows", "2.0"),
        ("policy.cooldown_s", '"30"'),
        ("policy.release_ratio", "nan"),
        ("policy.cooldown_s", "inf"),
        ("policy.levers.mig", '"true"'),
        ("exporters.mqtt.queue_max", "1e3"),
        ("signals.nvml", "1"),
    ],
)
def test_strict_types(key: str, value: str) -> None:
    *section, name = key.split(".")
    with pytest.raises(ConfigError) as e:
        parse_config(f"[{'.'.join(section)}]\n{name} = {value}\n", "x.toml")
    assert any(p.startswith(f"{key}: ") for p in e.value.problems), e.value.problems


def test_integers_are_numbers_and_role_is_a_string() -> None:
    cfg = parse_config(SENS.replace("slo_ms = 100", "slo_ms = 100") + "[policy]\ncooldown_s = 30\n")
    assert cfg.policy.cooldown_s == 30.0 and cfg.tenants[0].role.value == "sensitive"


def test_mig_without_a_model_is_checked_against_every_model() -> None:
    base = '[[gpus]]\nname = "gpu0"\nindex = 0\n' + SENS.replace(
        'role = "sensitive"', 'role = "sensitive"\ninstance = "gpu0/{0}"'
    )
    assert lines(base.format("2g.20gb@0")) == []  # an 80 GB profile: fine on an 80 GB GPU
    bad = base.format("2g.20gb@0") + '[[tenants]]\nname = "b"\nrole = "bulk"\ninstance = "gpu0/1g.5gb@6"\n'
    # 2g.20gb (80 GB models) and 1g.5gb (40 GB models) cannot share one GPU.
    with pytest.raises(ConfigError, match=r"tenants\[1\]\(b\)\.instance: no known GPU model offers every profile"):
        check_loaded(parse_config(bad), "x")


def test_the_probe_hook_overrides_the_configured_model() -> None:
    """check-config --probe passes the driver's table through `models`; the driver wins."""
    cfg = parse_config(EXAMPLE)
    assert cross_problems(cfg) == []
    h100 = MODELS["H100-80GB-HBM3"]
    got = [p.line() for p in cross_problems(cfg, models=lambda g: h100 if g == "gpu0" else None)]
    assert len(got) == 1 and got[0].startswith("tenants[0](llm).instance: gpu0/2g.10gb@0: GPU model H100-80GB-HBM3")
    # ... and the other way round: a profile the built-in table lacks but the driver lists.
    bad = parse_config(EXAMPLE.replace("gpu0/2g.10gb@0", "gpu0/2g.20gb@0"))  # an 80 GB profile
    with pytest.raises(ConfigError, match=r"tenants\[0\]\(llm\)\.instance"):
        check_loaded(bad, "x")
    a100_80 = MODELS["A100-SXM4-80GB"]
    assert not [p for p in cross_problems(bad, models=lambda g: a100_80 if g == "gpu0" else None) if p.error]


def test_key_problems_name_their_key() -> None:
    class M(BaseModel):
        a: int = 0
        b: int = 0

        @model_validator(mode="after")
        def _v(self) -> M:
            raise KeyProblems([KeyProblem("b", "b is wrong"), KeyProblem("a", "so is a")])

    with pytest.raises(ValidationError) as e:
        M.model_validate({"a": 1})
    assert problems_of(e.value, {"a": 1}) == ["b: b is wrong", "a: so is a"]


def test_unreadable_file_is_an_error_for_root_and_a_warning_for_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret")
    text = f'[exporters.mqtt]\nenabled = true\nusername = "u"\npassword_file = "{pw}"\n'
    cfg = parse_config(SENS + text)
    assert check_loaded(cfg, "x").warnings == []
    pw.unlink()
    pw.mkdir()  # unreadable as a file for anyone, root included
    with pytest.raises(ConfigError, match=r"exporters\.mqtt\.password_file: password file .* is a directory"):
        check_loaded(cfg, "x")
    pw.rmdir()
    pw.write_text("secret")
    real_open = os.open

    def denied(path: str, flags: int, *a: int, **k: int) -> int:
        if str(path) == str(pw):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", denied)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert any("not readable by this user" in w for w in check_loaded(cfg, "x").warnings)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(ConfigError, match="is not readable"):
        check_loaded(cfg, "x")


def test_launcher_programs(tmp_path: Path) -> None:
    prog = tmp_path / "relaunch"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o644)
    base = SENS + '[tenants.launcher]\nkind = "command"\ncommand = ["{0}", "{{uuid}}"]\n'
    cfg = parse_config(base.format(prog))
    with pytest.raises(ConfigError, match=r"tenants\[0\]\(llm\)\.launcher\.command: .* not an executable"):
        check_loaded(cfg, "x")
    prog.chmod(0o755)
    assert check_loaded(cfg, "x").warnings == []
    warn = check_loaded(parse_config(base.format("no-such-program-here")), "x").warnings
    assert any("launcher.command: warning: 'no-such-program-here' is not on this PATH" in w for w in warn)


def test_latency_file_may_appear_later_but_its_directory_must_exist(tmp_path: Path) -> None:
    text = SENS.replace('kind = "prometheus"\nurl = "http://127.0.0.1:8000/metrics"', 'kind = "jsonl"\npath = "{0}"')
    warn = check_loaded(parse_config(text.format(tmp_path / "l.jsonl")), "x").warnings
    assert any("latency.path: warning:" in w and "does not exist yet" in w for w in warn)
    with pytest.raises(ConfigError, match=r"latency\.path: directory .* does not exist"):
        check_loaded(parse_config(text.format(tmp_path / "nope" / "l.jsonl")), "x")


def _run_args(cfg: Path) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    cmd_run.register(sub)
    return p.parse_args(["run", "--config", str(cfg)])


def test_run_start_and_reload_make_the_same_checks(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    good = (
        f'[host]\nstate_dir = "{tmp_path}/state"\n'
        + SENS
        + '[signals]\nnvml = false\ndcgm = "off"\n[topology]\nsource = "none"\n'
        + "[exporters.prometheus]\nenabled = false\n"
    )
    cfg.write_text(good + '[exporters.mqtt]\npassword_file = "/nonexistent/pw"\n')
    with pytest.raises(ConfigError, match="password_file"):
        cmd_run.build(_run_args(cfg))  # `run` refuses to start
    cfg.write_text(good)
    setup = cmd_run.build(_run_args(cfg))
    assert setup.reload is not None
    cfg.write_text(good.replace('source = "none"', 'source = "topo-matrix"\ntopo_matrix_file = "/nonexistent/t"'))
    with pytest.raises(ConfigError, match=r"topology\.topo_matrix_file"):
        setup.reload()  # the daemon keeps the old config (tests/test_daemon_loop.py covers that side)
    cfg.write_text(good.replace("slo_ms = 100", "slo_ms = 50"))
    spec = setup.reload()
    assert spec.tenants["llm"].slo_s == pytest.approx(0.05)


def test_load_checked_on_the_example() -> None:
    c = load_checked(ROOT / "systemd" / "tailguard.toml")
    assert c.config.host.name == "gpu-host-01"
    # An example for a GPU host: on this one its cgroups and disk may be missing, nothing else.
    assert all(".cgroup: warning:" in w or ".devices[0]: warning:" in w for w in c.warnings), c.warnings


def test_demo_says_what_its_table_covers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from replay import cmd_replay

    monkeypatch.setattr(cmd_replay, "run", lambda ns: 0)  # the replay itself is tested elsewhere
    assert cmd_replay.demo(str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "1 simulated hour" in out and "24 simulated hours" in out and "docs/results.md" in out
