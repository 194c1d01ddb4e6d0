"""What a SIGHUP reload may change, and what takes a restart.

A reload reads the tenants (their cgroups, devices, SLOs, latency sources, launchers), the policy,
the mode (`host.mode`: the documented way from dry-run to enforce), the signal sources and
`lift_throttles_on_exit` again. What `run` built once at start from the file stays as built: the
state directory and its journal, the cgroup tree tailguard writes, the sysfs and procfs it reads,
the topology, the GPUs' indices and models (the MIG actuators and tables were made for them), the
exporters' listening socket and broker session, the host name and the tick period. A reload that
changes any of those is refused, naming each key with its old and new value, and the running
config stays: applied in part, the daemon would run a config that is neither file.
"""

from __future__ import annotations

import json
from typing import Any

from controller.config import Config

RESTART_ONLY = (
    "host.name",
    "host.sample_period_s",
    "host.state_dir",
    "host.cgroup_root",
    "host.cgroup_version",
    "signals.proc_root",
    "signals.sys_root",
    "topology",
    "gpus",
    "exporters",
)
MAX_SHOWN = 12  # changed keys named at most; the rest counted


def restart_only_changes(running: Config, new: Config) -> list[str]:
    """One line per changed key a reload cannot apply (empty: the reload may go ahead)."""
    old_d, new_d = running.model_dump(mode="json"), new.model_dump(mode="json")
    changed: list[tuple[str, str]] = []
    for key in RESTART_ONLY:
        _diff(key, _at(old_d, key), _at(new_d, key), changed)
    lines = [f"{k}: it takes a restart (systemctl restart tailguard), not a reload; {what}" for k, what in changed]
    if len(lines) > MAX_SHOWN:
        lines = [*lines[:MAX_SHOWN], f"... and {len(lines) - MAX_SHOWN} more keys that take a restart"]
    return lines


def _at(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        d = d[part]
    return d


def _diff(key: str, a: Any, b: Any, out: list[tuple[str, str]]) -> None:
    """The leaves that differ, by key path (list items by index; a list of another length whole)."""
    if a == b:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            _diff(f"{key}.{k}", a.get(k), b.get(k), out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(f"{key}[{i}]", x, y, out)
    elif isinstance(a, list) and isinstance(b, list):
        out.append((key, f"{len(a)} entries -> {len(b)}"))
    else:
        out.append((key, f"{_show(a)} -> {_show(b)}"))


def _show(v: Any) -> str:
    text = "unset" if v is None else json.dumps(v)  # TOML's spelling of strings and booleans
    return text if len(text) <= 80 else text[:77] + "..."
