"""A bundled scenario with one of its `[scenario.*]` tables set (signals, actuation, restarts): how
the lab-fidelity tests build their hosts, and check that a bad key is refused by name."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from replay.scenario import SCENARIO_DIR, Scenario, ScenarioError, parse_scenario, scenario_from_data


def with_table(name: str, table: str, values: dict[str, Any], **meta: Any) -> Scenario:
    """Bundled scenario `name` with `[scenario.TABLE]` = `values` (none: left out) and `meta` laid
    over its `[scenario]`."""
    data = tomllib.loads((SCENARIO_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    if values:
        data["scenario"][table] = values
    data["scenario"].update(meta)
    return scenario_from_data(data, name)


def assert_bad_line_named(table: str, line: str, says: str) -> None:
    """paper-p4d with `line` in its `[scenario.TABLE]` is refused, the message naming `says`."""
    text = (SCENARIO_DIR / "paper-p4d.toml").read_text(encoding="utf-8")
    text = text.replace("[scenario]\n", f"[scenario.{table}]\n{line}\n\n[scenario]\n", 1)
    with pytest.raises(ScenarioError, match=says):
        parse_scenario(text, "x.toml")
