"""Property tests: the shipped config (systemd/tailguard.toml) and bundled scenarios with keys
dropped, added or set to values of the wrong type, range or shape load or fail with every problem
named by its key path; never another exception. The same path as `check-config` and `replay`
take after TOML parsing (controller/config.py config_from_data and check_loaded; replay/scenario.py
scenario_from_data); a value TOML cannot hold (NaN aside) never reaches them."""

from __future__ import annotations

import copy
import math
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config import ConfigError, check_loaded, config_from_data
from replay.scenario import ScenarioError, scenario_from_data

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "systemd" / "tailguard.toml").read_text())
SCENARIOS = {
    n: tomllib.loads((ROOT / "replay" / "scenarios" / f"{n}.toml").read_text()) for n in ("p4d-demo", "h200-gen5")
}

# Values of every TOML type, and the kinds of strings the config's fields parse (addresses, paths,
# instances, names) gone wrong.
JUNK: list[Any] = [
    0, -1, 1, 2**64, -(2**63), 1e308, -0.0, 0.5, math.nan, math.inf, -math.inf, True, False,
    "", " ", "x", "../..", "/", "/dev/null", "gpu0", "gpu0/7g.40gb@0", "a" * 300, "\x00", "é", "sensitive",
    "127.0.0.1:0", "0.0.0.0:80", "[::1]:9", "mqtt://h:1", "http://x", "auto", "v1", "enforce",
    [], [1], ["a"], [{"a": 1}], {}, {"a": 1}, {"name": "t", "role": "bulk"},
]  # fmt: skip
KEYS = ["zz", "name", "role", "gpu", "instance", "devices", "slo_ms", "quantile", "layout", "kind"]


def _paths(d: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [path] if path else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*path, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, (*path, i))
    return out


def _at(d: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        d = d[k]
    return d


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    d = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(d)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _at(d, path[:-1]), path[-1]
        how = draw(st.sampled_from(["drop", "add", "dup", "set", "set", "set"]))
        if how == "drop":
            del parent[key]
        elif how == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(st.sampled_from(JUNK))
        elif how == "dup" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        else:
            parent[key] = copy.deepcopy(draw(st.sampled_from(JUNK)))
    return d


def _named(problems: list[str]) -> None:
    assert problems, "a refused config must say why"
    for p in problems:
        assert p.strip() and "Traceback" not in p and "NoneType" not in p, p


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(CONFIG))
def test_a_mutated_config_loads_or_names_its_problems(data: dict[str, Any]) -> None:
    try:
        check_loaded(config_from_data(data, "f.toml"), "f.toml")
    except ConfigError as e:
        assert e.file == "f.toml"
        _named(e.problems)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(SCENARIOS)), data=st.data())
def test_a_mutated_scenario_loads_or_names_its_problems(name: str, data: st.DataObject) -> None:
    mutant = data.draw(mutated(SCENARIOS[name]))
    try:
        scenario_from_data(mutant, f"{name}.toml")
    except ScenarioError as e:
        assert e.file == f"{name}.toml"
        _named(e.problems)
