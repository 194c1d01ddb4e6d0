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
from controller.config import parse_config
from controller.config_checks import cross_problems
from controller.config_files import file_problems

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


def test_shipped_examples_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "systemd" / "tailguard.toml")]) == 0
    manifest = ROOT / "deploy" / "kubernetes" / "tailguard.yaml"
    cm = next(d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "ConfigMap")
    capsys.readouterr()
    # The DaemonSet's config names the pod's mounts (/host/sys), so its file checks belong in the
    # pod; here: everything else, and it listens on 0.0.0.0 on purpose (a warning, not an error).
    cfg = parse_config(cm["data"]["tailguard.toml"], "k8s")
    got = [p.line() for p in cross_problems(cfg)]
    assert [ln for ln in got if ": warning: " not in ln] == []
    assert any(ln.startswith("exporters.prometheus.listen: warning:") for ln in got)
    assert [p.key for p in file_problems(cfg) if p.error] in ([], ["signals.sys_root"])


def test_a_byte_order_mark_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config saved with a UTF-8 byte-order mark: tomllib says only "Invalid statement (at line 1,
    column 1)"; the error says what is at line 1."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + (ROOT / "systemd" / "tailguard.toml").read_bytes())
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: TOML syntax: the file starts with a UTF-8 byte-order mark" in err, err
