"""Imports run shell -> core: replay/ (the lab) may use fsm/ and schema/, never controller/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _top_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def _offenders(package: str, forbidden: set[str]) -> list[str]:
    return [
        f"{p.relative_to(ROOT)}: {sorted(_top_imports(p) & forbidden)}"
        for p in sorted((ROOT / package).rglob("*.py"))
        if _top_imports(p) & forbidden
    ]


def test_replay_does_not_import_the_shell():
    assert not _offenders("replay", {"controller"})


def test_schema_imports_only_pydantic():
    assert not _offenders("schema", {"controller", "replay", "actuators", "fsm"})


def test_the_layering_check_can_fail(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("from controller.config import load\nimport replay.runner\n")
    assert _top_imports(p) == {"controller", "replay"}


def test_actuators_do_not_import_the_shell():
    """The hands take plain values; building them from a config file is controller/'s job."""
    assert not _offenders("actuators", {"controller", "replay"})


def test_no_actuator_module_is_too_long():
    """One part per lever: no file in actuators/ (the emulated tools aside) over 600 lines."""
    long = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in sorted((ROOT / "actuators").rglob("*.py"))
        if "emulation" not in p.parts and (n := len(p.read_text().splitlines())) > 600
    ]
    assert not long
