"""Scenario files (TOML): hosts, their PCIe tree, GPUs with real MIG layouts, tenants and demand.

Every key is documented in docs/scenarios.md. Validation is pydantic for shapes and ranges
(replay/scenario_schema.py), then a cross-check pass for what refers to what (parents, paths, GPU
models, MIG profiles and placements from fsm.mig: replay/scenario_host.py). Every problem names the
file and the dotted key, e.g.
`paper-p4d.toml: hosts[0](p4d).nodes[4](gpu0).layout[1]: GPU model A100-SXM4-40GB has no MIG profile '1g.10gb'`.

This module loads a scenario (a bundled one by name, a file, its tables) and re-exports what the rest
of the lab takes from the schema, host and policy modules.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from replay.fidelity import MAX_DURATION_S
from replay.scenario_host import MAX_CPUS, HostModel, cpu_list, kv_fits, resolve_host, tenant_outages
from replay.scenario_policy import TIERS, policy_from, policy_overrides
from replay.scenario_schema import (
    CPU,
    Requests,
    ScenarioConfig,
    ScenarioMeta,
    Schedule,
    TenantConfig,
)
from replay.topology_view import controller_view
from schema.files import not_a_file, read_small_text
from schema.problems import loads_toml, problems_of

__all__ = [
    "CPU",
    "DATA_DIR",
    "MAX_CPUS",
    "MAX_DURATION_S",
    "SCENARIO_DIR",
    "TIERS",
    "HostModel",
    "Requests",
    "Scenario",
    "ScenarioError",
    "ScenarioMeta",
    "Schedule",
    "TenantConfig",
    "bundled",
    "cpu_list",
    "kv_fits",
    "load_scenario",
    "parse_scenario",
    "policy_from",
    "policy_overrides",
    "resolve_data",
    "scenario_from_data",
    "suite",
]

SCENARIO_DIR = Path(__file__).parent / "scenarios"
DATA_DIR = Path(__file__).parent / "data"


class ScenarioError(Exception):
    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(f"{file}: {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    file: str
    meta: ScenarioMeta
    hosts: tuple[HostModel, ...]


def parse_scenario(text: str, file: str) -> Scenario:
    try:
        data = loads_toml(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(file, [f"TOML syntax: {e}"]) from None
    return scenario_from_data(data, file)


def scenario_from_data(data: dict[str, Any], file: str) -> Scenario:
    """A scenario from its TOML tables (`file` names it in errors and anchors relative traces)."""
    try:
        cfg = ScenarioConfig.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(file, problems_of(e, data)) from None
    problems = []
    try:
        policy_from(cfg.policy, "policy")
    except ValueError as e:
        problems.append(str(e))
    hosts: list[HostModel] = []
    for i, h in enumerate(cfg.hosts):
        hosts.extend(resolve_host(h, i, file, problems))
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        problems.append("hosts: host names must be unique")
    for i, h in enumerate(cfg.hosts):
        for j, t in enumerate(h.tenants):
            if t.requests is not None and t.requests.trace is not None:
                p = resolve_data(t.requests.trace, Path(file).parent)
                key = f"hosts[{i}]({h.name}).tenants[{j}]({t.name}).requests.trace"
                if p is None:
                    problems.append(f"{key}: {_trace_missing(t.requests.trace, Path(file).parent)}")
                    continue
                # Read now (cached for the runs): a bad row found in a worker would end the replay
                # in a traceback, after the other runs' work.
                from replay.arrivals import load_request_trace  # imports this module

                try:
                    load_request_trace(str(p))
                except ValueError as e:
                    problems.append(f"{key}: {e}")
    if problems:
        raise ScenarioError(file, problems)
    policy = policy_from(cfg.policy, "policy")
    view = cfg.scenario.signals.topology
    hosts = [
        replace(
            h,
            spec=replace(
                h.spec,
                policy=policy,
                tenants=tenant_outages(h, cfg.scenario),
                topology=controller_view(h.spec.topology, view),
            ),
            physical=h.spec.topology,
        )
        for h in hosts
    ]
    return Scenario(cfg.scenario.name, file, cfg.scenario, tuple(hosts))


def resolve_data(name: str, base: Path) -> Path | None:
    for cand in (base / name, DATA_DIR / name, DATA_DIR / Path(name).name):
        try:
            if cand.is_file():
                return cand
        except OSError:  # a name too long, a directory this user may not search: not found here
            continue
    return None


def _trace_missing(name: str, base: Path) -> str:
    """Why resolve_data found no file: what the first candidate there is, or that none is."""
    for cand in (base / name, DATA_DIR / name, DATA_DIR / Path(name).name):
        what = not_a_file(cand)
        if what is not None:  # /tmp, /dev/null: said so, not "no such file"
            return f"{cand}: {what}, not a file"
    return "no such file"


def bundled() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def suite() -> list[Scenario]:
    """The bundled scenarios that set suite_duration_s, by name."""
    out = [load_scenario(n) for n in bundled()]
    return [s for s in out if s.meta.suite_duration_s is not None]


def load_scenario(name_or_path: str) -> Scenario:
    """A bundled scenario by name (paper-p4d) or a TOML file by path."""
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        p = SCENARIO_DIR / f"{name_or_path}.toml"
        if not p.exists():
            raise ScenarioError(
                name_or_path, [f"no such scenario; bundled: {', '.join(bundled())}, or give a .toml path"]
            )
    try:
        text = read_small_text(p)
    except OSError as e:
        raise ScenarioError(str(p), [f"cannot read: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ScenarioError(str(p), [f"not UTF-8 text: {e}"]) from None
    return parse_scenario(text, str(p))
