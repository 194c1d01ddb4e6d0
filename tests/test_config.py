"""Config validation and `tailguard check-config`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import main
from controller.config import ConfigError, check_cgroup_rel, load_config, parse_config
from fsm.outage import DEFAULT_HANDOVER_GAP_S, DEFAULT_READINESS_TIMEOUT_S, MoveKind

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "systemd" / "tailguard.toml"


def test_example_config_is_valid_and_maps_to_the_core_types():
    cfg = load_config(EXAMPLE)
    specs = cfg.tenant_specs()
    assert specs["llm"].slo_s == pytest.approx(0.2) and specs["llm"].instance is not None
    assert cfg.policy_obj().enforce is False  # the example starts in dry-run


def test_check_config_exit_codes(tmp_path, capsys):
    assert main(["check-config", str(EXAMPLE)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("cooldown_s = 30", 'cooldown_s = "soon"\nbogus = 1'))
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: policy.cooldown_s: Input should be a valid number" in err
    assert f"{bad}: policy.bogus: unknown key" in err
    assert "Traceback" not in err


def test_check_config_as_a_command():
    r = subprocess.run(
        [sys.executable, "-m", "controller.cli", "check-config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "text,expect",
    [
        ("[host]\nmode = 'yolo'\n", "host.mode: Input should be 'enforce' or 'dry-run'"),
        (
            "[[tenants]]\nname = 'a'\nrole = 'sensitive'\n",
            "tenants[0](a).slo_ms: a sensitive tenant needs slo_ms",
        ),
        ("[[tenants]]\nname = 'a'\nrole = 'bulk'\ncgroup = '../../etc'\n", "tenants[0](a).cgroup"),
        ("[[tenants]]\nname = 'a'\nrole = 'bulk'\ninstance = 'gpu0/3g'\n", "tenants[0](a).instance"),
        ("[[tenants]]\nname = 'a'\nrole = 'bulk'\n[[tenants]]\nname = 'a'\nrole = 'bulk'\n", "tenants[1](a).name"),
        ("[exporters.mqtt]\ncontrol_topic = true\n", "control_topic needs username"),
        ("[exporters.prometheus]\nlisten = 'nowhere'\n", "exporters.prometheus.listen"),
        ("[[gpus]]\nname = 'gpu0'\nindex = 0\nmodel = 'Z100'\n", "unknown GPU model 'Z100'"),
        ("[host\n", "TOML syntax"),
        ("[policy]\ny_windows = 0\n", "policy.y_windows: Input should be greater than or equal to 1"),
        ("[policy.mig_ladder]\nA100-SXM4-40GB = ['3g.20gb', '2g.10gb']\n", "smallest first"),
        ("[policy.mig_ladder]\nA100-SXM4-40GB = ['3g.40gb']\n", "has no MIG profile '3g.40gb'"),
    ],
)
def test_every_problem_names_the_key(text, expect):
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "x.toml")
    assert any(expect in p for p in ei.value.problems), ei.value.problems
    assert str(ei.value).startswith("x.toml: ")


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as ei:
        parse_config("[host]\nmode = 1\nsample_period_s = -1\nwhat = 2\n", "x.toml")
    assert len(ei.value.problems) == 3


@pytest.mark.parametrize("path", ["../x", "a/../../b", "/abs", "a\nb", "", "a/./b", "x" * 2000])
def test_hostile_cgroup_paths_are_refused(path):
    with pytest.raises(ValueError):
        check_cgroup_rel(path)


def test_unreadable_config_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 2
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    assert main(["check-config", str(tmp_path / "bin.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_mig_ladder_reaches_the_policy():
    cfg = parse_config("[policy.mig_ladder]\n'NVIDIA A100-SXM4-40GB' = ['1g.5gb', '7g.40gb']\n")
    assert cfg.policy_obj().mig_ladder == {"A100-SXM4-40GB": ("1g.5gb", "7g.40gb")}


def test_move_outages_follow_the_hand_over_and_reach_the_core():
    base = """
[[tenants]]
name = "llm"
role = "sensitive"
slo_ms = 200
[tenants.latency]
kind = "jsonl"
path = "/run/llm.jsonl"
[tenants.launcher]
kind = "systemd"
"""
    restart = parse_config(base + 'unit = "llm.service"\n').tenant_specs()["llm"]
    assert (restart.relaunch_s, restart.reconfig_s, restart.handover) == (5.0, 18.0, "restart")
    # Each lever's outage is fsm.outage's, from the same figures the simulator charges with.
    assert restart.outage_s(MoveKind.EXISTING) == restart.move_outage_s == 5.0
    assert restart.outage_s(MoveKind.BESIDE) == 5.0  # make-before-break: it serves while the slice is made
    assert restart.outage_s(MoveKind.IN_PLACE) == 23.0  # its own instance goes: reconfigure + relaunch
    warm = parse_config(base + 'unit = "llm@.service"\nhandover = "warm"\n').tenant_specs()["llm"]
    assert warm.handover == "warm" and warm.handover_gap_s == DEFAULT_HANDOVER_GAP_S
    assert warm.outage_s(MoveKind.EXISTING) == warm.outage_s(MoveKind.BESIDE) == DEFAULT_HANDOVER_GAP_S
    assert warm.outage_s(MoveKind.IN_PLACE) == 23.0  # no old copy left to serve
    own = parse_config(base.replace("slo_ms = 200", "slo_ms = 200\nrelaunch_s = 40") + 'unit = "llm.service"\n')
    assert own.tenant_specs()["llm"].outage_s(MoveKind.IN_PLACE) == 58.0
    with pytest.raises(ConfigError, match=r"move_outage_s was replaced by relaunch_s"):
        parse_config(base.replace("slo_ms = 200", "slo_ms = 200\nmove_outage_s = 40") + 'unit = "llm.service"\n')
    assert parse_config("[policy]\noutage_budget_share = 0\n").policy_obj().outage_budget_share is None
    assert parse_config("").policy_obj().outage_budget_share == 0.5
    # the launcher's readiness wait reaches the core too: what a failed move costs (relief_worst_case)
    assert restart.readiness_timeout_s == DEFAULT_READINESS_TIMEOUT_S
    waits = parse_config(base + 'unit = "llm.service"\nreadiness_timeout_s = 45\n').tenant_specs()["llm"]
    assert waits.readiness_timeout_s == 45.0
    assert parse_config("").policy_obj().relief_worst_case
    assert not parse_config("[policy]\nrelief_worst_case = false\n").policy_obj().relief_worst_case
    assert parse_config("").policy_obj().outage_budget_headroom
    assert not parse_config("[policy]\noutage_budget_headroom = false\n").policy_obj().outage_budget_headroom


def test_mqtt_latency_needs_the_mqtt_bridge():
    text = """
[[tenants]]
name = "llm"
role = "sensitive"
slo_ms = 200
[tenants.latency]
kind = "mqtt"
"""
    msg = r"\(llm\)\.latency\.kind: tenant llm pushes latency over MQTT: set exporters\.mqtt\.enabled = true"
    with pytest.raises(ConfigError, match=msg):
        parse_config(text)
    assert parse_config(text + "[exporters.mqtt]\nenabled = true\n").tenants[0].latency.kind == "mqtt"
