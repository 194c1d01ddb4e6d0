"""docs/config.md matches the config model: every key its key tables present is a key the model
accepts (and every key the model accepts is documented), and what the doc lists as constants is
not one. The tables are parsed from the markdown, so a doc edit is checked as it is made."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from controller.config import Config, parse_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _tables() -> list[tuple[str, str, list[list[str]]]]:
    """(heading, first header cell, rows as cells) for every markdown table."""
    out: list[tuple[str, str, list[list[str]]]] = []
    heading = ""
    rows: list[list[str]] | None = None
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            heading = line
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if rows is None:
                rows = []
                out.append((heading, cells[0], rows))
            elif not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        else:
            rows = None
    return out


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside X, X | None, list[X]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            m = _model_of(arg)
            if m is not None:
                return m
    return None


def _resolve(path: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in path:
        if model is None or part not in model.model_fields:
            return None
        model = _model_of(model.model_fields[part].annotation)
    return model


def _accepts(base: list[str], key: str) -> bool:
    *head, last = key.split(".")
    model = _resolve(base + head)
    return model is not None and last in model.model_fields


def _section(heading: str) -> list[str]:
    paths = [p.strip("[]").split(".") for p in re.findall(r"`(\[\[?[\w.]+\]\]?)`", heading)]
    assert paths, f"no [section] in heading {heading!r}"
    common = paths[0]
    for p in paths[1:]:
        n = 0
        while n < min(len(common), len(p)) and common[n] == p[n]:
            n += 1
        common = common[:n]
    return common


def _documented() -> list[tuple[list[str], str]]:
    out = []
    for heading, first, rows in _tables():
        if first != "key":
            continue
        base = _section(heading)
        for cells in rows:
            for key in re.findall(r"`([^`]+)`", cells[0]):
                out.append((base, key))
    return out


def test_every_documented_key_is_accepted_by_the_model() -> None:
    doc = _documented()
    assert len(doc) >= 60  # the tables were found
    bad = []
    for base, key in doc:
        if key.startswith("["):
            if _resolve(key.strip("[]").split(".")) is None:
                bad.append(key)
        elif not _accepts(base, key):
            bad.append(".".join([*base, key]))
    assert not bad, f"docs/config.md presents keys the config model does not accept: {bad}"


def test_every_model_key_is_documented() -> None:
    doc = {".".join([*b, k]) if not k.startswith("[") else k.strip("[]") for b, k in _documented()}

    def walk(model: type[BaseModel], prefix: str) -> list[str]:
        out = []
        for name, f in model.model_fields.items():
            full = f"{prefix}{name}"
            sub = _model_of(f.annotation)
            out += walk(sub, full + ".") if sub is not None and full not in doc else [full]
        return out

    missing = [k for k in walk(Config, "") if k not in doc]
    assert not missing, f"config keys missing from docs/config.md: {missing}"


def test_constants_are_listed_and_are_not_keys() -> None:
    consts = [r for h, first, rows in _tables() if first == "constant" for r in rows]
    names = [m[1] for r in consts if (m := re.match(r"`(\w+)`", r[0]))]
    assert {"mig_refresh_s", "irq_period_s", "layout_recheck_s"} <= set(names)
    for name in names:
        for section in ("host", "signals", "policy", "topology"):
            assert not _accepts([section], name), f"{name} is listed as a constant but is a key of [{section}]"


def test_the_former_constants_of_the_policy_are_keys_that_reach_the_core() -> None:
    cfg = parse_config(
        "[policy]\nbackoff_s = 10\nbackoff_max_s = 120\npcie_busy_ratio = 0.3\nsm_busy = 0.9\ndram_busy = 0.7\n"
        "high_bw_bps = 2e9\n"
    )
    p = cfg.policy_obj()
    assert (p.backoff_max_s, p.pcie_busy_ratio, p.sm_busy, p.dram_busy, p.high_bw_bps) == (120, 0.3, 0.9, 0.7, 2e9)
    # Unset, they are the decision core's defaults (one source of truth for the numbers).
    from fsm.spec import Policy

    d, core = parse_config("").policy_obj(), Policy()
    assert (d.backoff_max_s, d.pcie_busy_ratio, d.sm_busy, d.dram_busy, d.high_bw_bps) == (
        core.backoff_max_s, core.pcie_busy_ratio, core.sm_busy, core.dram_busy, core.high_bw_bps)  # fmt: skip
