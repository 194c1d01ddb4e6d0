"""On Kubernetes (the shipped DaemonSet: read-only root, no host systemd) the levers that need a
relaunch or the MPS pipe are off, with a note in check-config's output; on a host nothing changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.cli import main
from controller.config import parse_config
from controller.platform import notes

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "tailguard.yaml"

TENANT = """
[[tenants]]
name = "llm"
role = "sensitive"
slo_ms = 50
instance = "gpu0/3g.20gb@4"
[tenants.latency]
kind = "jsonl"
path = "/run/llm/latency.jsonl"
[tenants.launcher]
kind = "systemd"
unit = "vllm.service"
"""


def _manifest_config() -> str:
    cm = next(d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "ConfigMap")
    return str(cm["data"]["tailguard.toml"])


def test_the_daemonset_observes_and_guards_only() -> None:
    cfg = parse_config(_manifest_config(), "ConfigMap")
    assert cfg.host.platform == "kubernetes"
    pol = cfg.policy_obj()
    assert (pol.guards, pol.placement, pol.mig, pol.mps) == (True, False, False, False)
    assert "levers off: placement, mig, mps" in notes(cfg)[0]
    pod = next(d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "DaemonSet")
    mounts = {m["mountPath"] for m in pod["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert "/run/dbus/system_bus_socket" not in mounts and "/tmp/nvidia-mps" not in mounts  # levers off: no access


def test_a_launcher_and_asked_levers_get_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # This host has no /host/sys and no /run/llm: point those at paths check-config finds here.
    text = (_manifest_config().replace('"/host/sys"', '"/sys"') + "\n[policy.levers]\nmig = true\n"
            + TENANT.replace("/run/llm/latency.jsonl", str(tmp_path / "latency.jsonl")))  # fmt: skip
    f = tmp_path / "k8s.toml"
    f.write_text(text)
    assert main(["check-config", str(f)]) == 0
    out = capsys.readouterr().out
    assert 'note: host.platform = "kubernetes"' in out
    assert "policy.levers: mig = true is ignored on Kubernetes" in out
    assert "tenants[0](llm).launcher: unused on Kubernetes" in out
    host = parse_config(text.replace('platform = "kubernetes"', 'platform = "host"'), "host.toml")
    assert notes(host) == [] and host.policy_obj().mig and host.policy_obj().placement
