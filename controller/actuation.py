"""The shell's side of the actuators: build the Reconciler's plain values (tenants, launchers,
GPUs, paths, readiness probe) from a validated config. actuators/ never sees a Config."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

from actuators.hands import Ready, TenantActuation
from actuators.launcher import CommandLauncher, Launcher, SystemdLauncher
from actuators.reconciler import Reconciler
from controller.config import Config
from fsm.observation import InstanceRef


def tenant_actuations(cfg: Config) -> dict[str, TenantActuation]:
    tenants: dict[str, TenantActuation] = {}
    for t in cfg.tenants:
        launcher: Launcher | None = None
        timeout = 120.0
        if t.launcher is not None:
            timeout = t.launcher.readiness_timeout_s
            lc = t.launcher
            if lc.kind == "systemd" and lc.unit:
                launcher = SystemdLauncher(lc.unit, handover=lc.handover, ready_command=lc.ready_command)
            elif lc.command:
                launcher = CommandLauncher(lc.command, handover=lc.handover, stop_argv=lc.stop_command,
                                           ready_argv=lc.ready_command)  # fmt: skip
        home = InstanceRef.parse(t.instance) if t.instance else None
        tenants[t.name] = TenantActuation(t.name, t.cgroup, home, launcher, timeout, t.mps)
    return tenants


def reconciler_from_config(cfg: Config, **overrides: Any) -> Reconciler:
    """The config's mode is not here: it comes with each desired state (`enforce`), so a reload
    switches it; `dry_run=True` (the command line's --dry-run) holds whatever they say."""
    args: dict[str, Any] = {
        "cgroup_root": cfg.host.cgroup_root,
        "cgroup_version": cfg.host.cgroup_version,
        "gpus": {g.name: g.index for g in cfg.gpus},
        "gpu_models": {g.name: g.model for g in cfg.gpus if g.model},
        "tenants": tenant_actuations(cfg),
        "journal_path": str(Path(cfg.host.state_dir) / "journal.jsonl"),
        "dry_run": False,
        "sys_root": cfg.signals.sys_root,
        "readiness": readiness_from_config(cfg),
    }
    args.update(overrides)
    return Reconciler(**args)


def readiness_from_config(cfg: Config) -> Ready:
    """Readiness = the tenant's latency source answers: an HTTP 200 from its Prometheus URL, or its
    JSON-lines file exists. Tenants without a source count as ready once launched."""
    sources = {t.name: t.latency for t in cfg.tenants}

    async def ready(tenant: str) -> bool:
        src = sources.get(tenant)
        if src is None:
            return True
        if src.kind == "prometheus" and src.url:
            url = src.url

            def probe() -> bool:
                try:
                    with urllib.request.urlopen(url, timeout=src.timeout_s) as r:
                        return bool(r.status == 200)
                except OSError:
                    return False

            return await asyncio.to_thread(probe)
        if src.kind == "jsonl" and src.path:
            return Path(src.path).exists()
        return True

    return ready
