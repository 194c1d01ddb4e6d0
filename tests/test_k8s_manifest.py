"""deploy/kubernetes/tailguard.yaml validates offline against the Kubernetes schemas
(kubernetes-validate ships them; no cluster, no network) and its config passes check-config."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import ConfigError, parse_config

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "tailguard.yaml"
K8S_VERSION = "1.30"


def _kv() -> Any:
    """kubernetes-validate (a dev dependency); missing on CI is a failure, elsewhere a skip."""
    if os.environ.get("CI"):
        return importlib.import_module("kubernetes_validate")
    return pytest.importorskip("kubernetes_validate")


def _docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def test_every_resource_validates_against_the_schemas() -> None:
    kv = _kv()
    docs = _docs()
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]
    for d in docs:
        kv.validate(d, K8S_VERSION, strict=True)


def test_validation_is_not_vacuous() -> None:
    kv = _kv()
    ds = next(d for d in _docs() if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["hostPID"] = "yes please"
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, K8S_VERSION, strict=True)
    ds = next(d for d in _docs() if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["volumeMountz"] = []
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, K8S_VERSION, strict=True)


def test_daemonset_mounts_what_the_daemon_needs_and_its_config_is_valid() -> None:
    docs = _docs()
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    cfg = parse_config(cm["data"]["tailguard.toml"], "ConfigMap tailguard-config")
    assert cfg.host.mode == "dry-run" and cfg.host.state_dir == "/var/lib/tailguard"
    # It listens on every address of the node (hostNetwork), so it must say so on purpose.
    prom = cfg.exporters.prometheus
    assert prom.listen.startswith("0.0.0.0:") and prom.allow_remote is True
    with pytest.raises(ConfigError, match=r"exporters\.prometheus\.listen: .*allow_remote"):
        parse_config(cm["data"]["tailguard.toml"].replace("allow_remote = true", ""), "ConfigMap tailguard-config")
    pod = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/etc/tailguard", "/var/lib/tailguard", "/sys/fs/cgroup", "/host/sys"} <= mounts
    assert pod["hostPID"] is True and c["securityContext"]["privileged"] is True
    assert "$(NODE_NAME)" in c["command"]
