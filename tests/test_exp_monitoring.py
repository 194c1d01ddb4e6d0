"""The alert rules pass `promtool check rules` and their `promtool test rules` unit tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fakes.daemon_fakes import need_tool

MON = Path(__file__).resolve().parents[1] / "monitoring"


def test_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    promtool = need_tool("promtool")
    p = subprocess.run(
        [promtool, "check", "rules", "tailguard-rules.yml"], cwd=MON, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS: 7 rules found" in p.stdout
    p = subprocess.run(
        [promtool, "test", "rules", "tailguard-rules.test.yml"], cwd=MON, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr


def test_rule_tests_can_fail(tmp_path: Path) -> None:
    """A wrong expectation makes promtool fail: the unit tests are not vacuous."""
    promtool = need_tool("promtool")
    (tmp_path / "tailguard-rules.yml").write_text((MON / "tailguard-rules.yml").read_text())
    broken = (
        (MON / "tailguard-rules.test.yml")
        .read_text()
        .replace('summary: "etl on h1 has been throttled', 'summary: "backup on h1 has been throttled')
    )
    (tmp_path / "t.yml").write_text(broken)
    p = subprocess.run([promtool, "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "FAILED" in p.stdout + p.stderr
