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
