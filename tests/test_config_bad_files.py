"""The bad configs in tests/fixtures/bad-configs (one problem each; `# expect: KEY` names the key
path and `# tenants: a, b` the tenants the message must name) through `tailguard check-config`:
exit 2, the key path and tenants on one line, no traceback. The shipped examples still pass."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controller.cli import main

ROOT = Path(__file__).resolve().parents[1]
BAD = sorted((ROOT / "tests" / "fixtures" / "bad-configs").glob("*.toml"))


def _expect(path: Path) -> tuple[str, list[str]]:
    text = path.read_text()
    key = re.search(r"^# expect: (\S+)$", text, re.M)
    assert key, f"{path.name}: no '# expect: KEY' comment"
    tenants = re.search(r"^# tenants: (.+)$", text, re.M)
    return key[1], [t.strip() for t in tenants[1].split(",")] if tenants else []


def test_there_are_bad_configs() -> None:
    assert len(BAD) >= 40


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config_exits_2_naming_key_and_tenants(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, tenants = _expect(path)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{path}: {key}: ")]
    assert lines, err
    assert all(t in lines[0] for t in tenants), (tenants, lines[0])
    # One problem each: the fixture tests what it says, not a side effect.
    assert f"{path}: 1 problem(s)" in err, err
    assert "<top level>" not in err and "Value error" not in err and "Traceback" not in err


def test_bad_configs_through_the_real_command() -> None:
    """The same, as a shell runs it (one process for a few files, to keep it quick)."""
    for path in BAD[:5]:
        r = subprocess.run([sys.executable, "-m", "controller.cli", "check-config", str(path)],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
        assert r.returncode == 2 and _expect(path)[0] in r.stderr and "Traceback" not in r.stderr + r.stdout


def test_shipped_examples_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "systemd" / "tailguard.toml")]) == 0
    manifest = ROOT / "deploy" / "kubernetes" / "tailguard.yaml"
    cm = next(d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "ConfigMap")
    k8s = tmp_path / "k8s.toml"
    k8s.write_text(cm["data"]["tailguard.toml"])
    assert main(["check-config", str(k8s)]) == 0
    out = capsys.readouterr()
    # It listens on 0.0.0.0 on purpose (allow_remote): a warning, not an error.
    assert "exporters.prometheus.listen: warning:" in out.err and "OK" in out.out
