"""The mode and the config as an operator changes them on a running daemon.

- `mode = "enforce"` and `systemctl reload` (the documented way out of the dry run) makes the next
  tick act; the control topic's `enforce` too, unless `run --dry-run` locked it.
- A dry run holds no caps: one set before (by an enforcing run, or before a reload or the control
  topic switched the mode, or before a pause) is lifted on the next tick, never left past its expiry;
  `run --dry-run` (hands off: it may run beside the enforcing daemon) touches nothing at all.
- A reload tells the actuators the tenants anew (a cgroup moved, a tenant added); what takes a
  restart (the state directory, the cgroup tree, the topology, the GPUs, the exporters, ...) is
  refused, naming each key, and the running config stays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest
from test_act_faults import BATCH, GROUP, fake_v2, io_max

from controller import cmd_run
from controller.actuation import reconciler_from_config
from controller.config import ConfigError, parse_config
from controller.config_reload import restart_only_changes
from controller.linux_host import LinuxHost
from controller.signals.collect import SignalCollector
from fsm.desired import DesiredState, Throttle
from fsm.topology import empty_topology

NOW = 1_000_000.0


def _config(tmp: Path, mode: str = "dry-run", etl_group: str = GROUP, extra: str = "") -> str:
    return (
        f'[host]\nmode = "{mode}"\nstate_dir = "{tmp}/state"\ncgroup_root = "{tmp}/cgroup"\ncgroup_version = "v2"\n'
        f'[signals]\nnvml = false\ndcgm = "off"\nsys_root = "{tmp}/sys"\n[topology]\nsource = "none"\n'
        "[exporters.prometheus]\nenabled = false\n"
        '[[tenants]]\nname = "llm"\nrole = "sensitive"\nslo_ms = 100\n'
        '[tenants.latency]\nkind = "prometheus"\nurl = "http://127.0.0.1:8000/metrics"\n'
        f'[[tenants]]\nname = "etl"\nrole = "bulk"\ncgroup = "{etl_group}"\ndevices = ["nvme0n1"]\n' + extra
    )


def _host(tmp: Path, text: str) -> LinuxHost:
    fake_v2(tmp)
    cfg = parse_config(text, "t.toml")
    topo = empty_topology()
    clock = {"now": NOW}
    rec = reconciler_from_config(cfg, clock=lambda: clock["now"])
    return LinuxHost(cfg, topo, collector=SignalCollector(cfg, topo, samplers=[]), reconciler=rec)


def _desired(host: LinuxHost, *tenants: str, expires: float = NOW + 120) -> DesiredState:
    """What the decision core asks for on a tick: caps on `tenants`, in the mode of the config."""
    caps = tuple(Throttle(t, "nvme0n1", host.spec.tenants[t].cgroup, None, 5e7, expires, "llm") for t in tenants)
    return DesiredState(t=NOW, throttles=caps, enforce=host.spec.policy.enforce)


def capped(tmp: Path, group: str = GROUP) -> bool:
    """The fake io.max keeps the last line written: a lift writes "rbps=max wbps=max"."""
    return "wbps=50000000" in io_max(tmp, group)


def _apply(host: LinuxHost, desired: DesiredState) -> None:
    asyncio.run(host.apply(desired))


def test_reload_to_enforce_acts_and_back_to_dry_run_lifts(tmp_path: Path) -> None:
    host = _host(tmp_path, _config(tmp_path))
    _apply(host, _desired(host, "etl"))
    assert io_max(tmp_path) == ""  # dry run: nothing written
    host.reload(parse_config(_config(tmp_path, "enforce"), "t.toml"))
    _apply(host, _desired(host, "etl"))
    assert capped(tmp_path)  # the reload's mode, at once
    host.reload(parse_config(_config(tmp_path, "dry-run"), "t.toml"))
    _apply(host, _desired(host, "etl"))  # the decision core still wants it: a dry run holds nothing
    assert not capped(tmp_path) and not host.reconciler.throttles.owned


def test_reload_follows_a_tenant_to_its_new_cgroup(tmp_path: Path) -> None:
    host = _host(tmp_path, _config(tmp_path, "enforce"))
    _apply(host, _desired(host, "etl"))
    assert capped(tmp_path, GROUP)
    new = _config(tmp_path, "enforce", etl_group=BATCH, extra='[[tenants]]\nname = "etl2"\nrole = "bulk"\n'
                  f'cgroup = "{GROUP}"\ndevices = ["nvme0n1"]\n')  # fmt: skip
    host.reload(parse_config(new, "t.toml"))
    _apply(host, _desired(host, "etl"))
    assert not capped(tmp_path, GROUP) and capped(tmp_path, BATCH)  # the old group's cap lifted
    assert set(host.reconciler.tenants) == {"llm", "etl", "etl2"}
    _apply(host, _desired(host, "etl", "etl2"))  # a tenant the reload added is capped too
    assert capped(tmp_path, GROUP) and capped(tmp_path, BATCH)


def _killed_enforcing_run(tmp: Path) -> list[str]:
    """An enforcing run that set a cap for an hour and was killed: the cap stays, the journal says
    whose it is. Its journal's lines."""
    enforcing = _host(tmp, _config(tmp, "enforce"))
    _apply(enforcing, _desired(enforcing, "etl", expires=NOW + 3600))
    enforcing.reconciler.journal.close()
    assert capped(tmp)
    return (tmp / "state" / "journal.jsonl").read_text().splitlines()


def test_a_dry_run_lifts_the_caps_an_enforcing_run_left_in_the_journal(tmp_path: Path) -> None:
    """The service restarted in the config's dry-run mode: what the last run set is lifted, not
    kept for the hour nobody renews it in."""
    _killed_enforcing_run(tmp_path)
    cfg = parse_config(_config(tmp_path, "dry-run"), "t.toml")
    topo = empty_topology()
    rec = reconciler_from_config(cfg, clock=lambda: NOW + 10)
    host = LinuxHost(cfg, topo, collector=SignalCollector(cfg, topo, samplers=[]), reconciler=rec)
    asyncio.run(host.reconciler.recover())
    _apply(host, _desired(host, "etl"))
    assert not capped(tmp_path) and not rec.throttles.owned
    records = [json.loads(x) for x in (tmp_path / "state" / "journal.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "throttle" and records[-1]["action"] == "lift" and records[-1]["phase"] == "done"


def test_run_dry_run_touches_nothing_not_even_to_lift(tmp_path: Path) -> None:
    """`run --dry-run` (or `record --dry-run`) may run beside the enforcing daemon and read its
    journal: hands off, the caps of that journal and the journal itself left as they are."""
    lines = _killed_enforcing_run(tmp_path)
    cfg = parse_config(_config(tmp_path, "dry-run"), "t.toml")
    topo = empty_topology()
    rec = reconciler_from_config(cfg, clock=lambda: NOW + 10, dry_run=True)
    host = LinuxHost(cfg, topo, collector=SignalCollector(cfg, topo, samplers=[]), reconciler=rec)
    asyncio.run(host.reconciler.recover())
    for _ in range(3):
        _apply(host, _desired(host, "etl"))
        _apply(host, DesiredState(t=NOW, enforce=False))  # nothing wanted: "would lift", not lifted
    assert capped(tmp_path)
    assert (tmp_path / "state" / "journal.jsonl").read_text().splitlines() == lines


def test_pause_lifts_the_caps_instead_of_leaving_them(tmp_path: Path) -> None:
    """A paused daemon hands every tick to the host as a dry run (controller/daemon.py)."""
    from dataclasses import replace

    host = _host(tmp_path, _config(tmp_path, "enforce"))
    _apply(host, _desired(host, "etl"))
    assert capped(tmp_path)
    _apply(host, replace(_desired(host, "etl"), enforce=False))
    assert not capped(tmp_path)


def test_restart_only_keys_are_named_and_the_rest_reloads() -> None:
    base = _config(Path("/x"))
    cfg = parse_config(base, "t.toml")
    assert restart_only_changes(cfg, parse_config(base, "t.toml")) == []
    reloadable = base.replace('mode = "dry-run"', 'mode = "enforce"').replace("slo_ms = 100", "slo_ms = 50")
    reloadable += '[policy]\ny_windows = 4\n[[gpus]]\nname = "gpu0"\nindex = 0\n'
    assert [x for x in restart_only_changes(cfg, parse_config(reloadable, "t.toml")) if "gpus" not in x] == []
    changed = (
        base.replace('state_dir = "/x/state"', 'state_dir = "/y/state"')
        .replace("enabled = false", 'enabled = true\nlisten = "127.0.0.1:9500"')
        .replace('source = "none"', 'source = "sysfs"')
    )
    lines = restart_only_changes(cfg, parse_config(changed, "t.toml"))
    assert lines[0] == (
        'host.state_dir: it takes a restart (systemctl restart tailguard), not a reload; "/x/state" -> "/y/state"'
    )
    assert any(x.startswith("topology.source:") and '"none" -> "sysfs"' in x for x in lines)
    assert any(x.startswith("exporters.prometheus.listen:") for x in lines)
    assert any(x.startswith("exporters.prometheus.enabled:") and "false -> true" in x for x in lines)
    gpus = parse_config(base + '[[gpus]]\nname = "gpu0"\nindex = 0\n', "t.toml")
    moved = parse_config(base + '[[gpus]]\nname = "gpu0"\nindex = 1\n', "t.toml")
    assert restart_only_changes(gpus, moved) == [
        "gpus[0].index: it takes a restart (systemctl restart tailguard), not a reload; 0 -> 1"
    ]
    assert restart_only_changes(cfg, gpus) == [
        "gpus: it takes a restart (systemctl restart tailguard), not a reload; 0 entries -> 1"
    ]


def _run_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cmd_run.register(p.add_subparsers())
    return p.parse_args(["run", *argv])


def test_run_reload_refuses_what_takes_a_restart_and_keeps_dry_run_locked(tmp_path: Path) -> None:
    fake_v2(tmp_path)
    f = tmp_path / "c.toml"
    f.write_text(_config(tmp_path))
    setup = cmd_run.build(_run_args("--config", str(f), "--dry-run", "--host-name", "h9"))
    assert setup.reload is not None and setup.dry_run_locked  # the control topic's "enforce" refused
    f.write_text(_config(tmp_path).replace(f'"{tmp_path}/state"', f'"{tmp_path}/state2"'))
    with pytest.raises(ConfigError) as e:
        setup.reload()
    assert str(f) in str(e.value) and "host.state_dir: it takes a restart" in str(e.value)
    # --host-name and --dry-run hold on a reload: no "host.name changed", and still a dry run
    f.write_text(_config(tmp_path, "enforce").replace("slo_ms = 100", "slo_ms = 50"))
    spec = setup.reload()
    assert spec.tenants["llm"].slo_s == pytest.approx(0.05) and not spec.policy.enforce
