"""Measured outages of moves (journal, recent_outages for the shell) and the systemd launcher's
runtime drop-ins: written under /run/systemd/system by default, and after a reboot (drop-ins gone)
recovery lets the next reconcile relaunch the tenant, which writes them again."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from actuators.emulation.testing import emu_host
from actuators.journal import SCHEMA_VERSION
from actuators.launcher import DROPIN_ROOT, SystemdLauncher
from actuators.reconciler import Reconciler, TenantActuation
from fsm.desired import DesiredState
from fsm.mig import Slot
from fsm.observation import InstanceRef

HOME = InstanceRef("gpu0", "2g.10gb", 0)
TO = InstanceRef("gpu0", "3g.20gb", 4)
LAYOUT = (Slot(0, "2g.10gb"), Slot(2, "2g.10gb"), Slot(4, "3g.20gb"))
RESTART_S = 0.3  # what the fake systemctl's restart takes: the tenant is down meanwhile

# A fake systemctl for restart hand-over: `restart` takes RESTART_S; every call is logged.
FAKE = f"""
import sys, time
open(sys.argv[0] + ".log", "a").write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1] == "restart":
    time.sleep({RESTART_S})
"""


def _setup(tmp: Path) -> tuple[Any, Path, SystemdLauncher, TenantActuation]:
    h = emu_host(tmp / "emu", ["A100-SXM4-40GB"], {0: LAYOUT})
    ctl = tmp / "systemctl"
    ctl.write_text(f"#!{sys.executable}\n{FAKE}")
    ctl.chmod(0o755)
    launcher = SystemdLauncher("vllm.service", dropin_root=str(tmp / "run"), systemctl=str(ctl), timeout=5.0)
    return h, ctl, launcher, TenantActuation("llm", None, HOME, launcher, readiness_timeout_s=5.0)


def _rec(tmp: Path, h: Any, t: TenantActuation) -> Reconciler:
    return Reconciler(cgroup_root=str(tmp / "nocg"), nvidia_smi=str(h.nvsmi), gpus={"gpu0": 0},
                      journal_path=tmp / "state" / "journal.jsonl", tool_timeout=5.0, tenants={"llm": t})  # fmt: skip


def _calls(ctl: Path) -> list[str]:
    p = Path(str(ctl) + ".log")
    return p.read_text().splitlines() if p.exists() else []


def test_the_default_dropin_root_is_runtime() -> None:
    assert DROPIN_ROOT == "/run/systemd/system"
    assert SystemdLauncher("vllm.service").dropin_path() == Path("/run/systemd/system/vllm.service.d/"
                                                                 "50-tailguard-mig.conf")  # fmt: skip


def test_move_outage_is_measured_journaled_and_dropins_come_back_after_a_reboot(tmp_path: Path) -> None:
    h, ctl, launcher, t = _setup(tmp_path)

    async def go() -> None:
        r = _rec(tmp_path, h, t)
        await r.recover()
        await r.reconcile(DesiredState(t=time.time(), placements={"llm": TO}))
        await r.wait_idle(30)
        assert [o.ok for o in r.status().outcomes] == [True] and r.placement["llm"] == TO
        # The outage: from the relaunch (systemctl restart stops the old copy) to readiness.
        secs = r.outage_seconds()["llm"]
        assert len(secs) == 1 and RESTART_S <= secs[0] < RESTART_S + 3.0, secs
        assert r.recent_outages()["llm"][0]["kind"] == "move"
        done = [json.loads(ln) for ln in r.journal.path.read_text().splitlines()
                if '"kind":"move"' in ln and '"phase":"done"' in ln]  # fmt: skip
        assert done[-1]["outage_s"] == secs[0] and done[-1]["outage_kind"] == "move"
        assert done[-1]["v"] == SCHEMA_VERSION
        assert launcher.has_dropins()
        r.journal.close()

        # A restart of tailguard (drop-in still there): the tenant stays where it is, no relaunch.
        n_calls = len(_calls(ctl))
        r2 = _rec(tmp_path, h, t)
        await r2.recover()
        assert r2.placement["llm"] == TO
        assert r2.outage_seconds() == {"llm": secs}  # the measured figures survive a restart
        await r2.reconcile(DesiredState(t=time.time(), placements={"llm": TO}))
        await r2.wait_idle(30)
        assert len(_calls(ctl)) == n_calls
        r2.journal.close()

        # A reboot: /run is empty again. Recovery forgets the placement; the next reconcile
        # relaunches the tenant where the desired state says and writes the drop-in again.
        shutil.rmtree(tmp_path / "run")
        r3 = _rec(tmp_path, h, t)
        summary = await r3.recover()
        assert r3.placement["llm"] is None and r3.outage_seconds() == {"llm": secs}  # via r2's snapshot
        assert any("drop-in" in m and "gone" in m for m in summary["moves"]), summary
        await r3.reconcile(DesiredState(t=time.time(), placements={"llm": TO}))
        await r3.wait_idle(30)
        assert r3.placement["llm"] == TO and launcher.has_dropins()
        assert launcher.dropin_path().read_text().count("CUDA_VISIBLE_DEVICES=MIG-") == 1
        assert _calls(ctl)[-1] == "restart vllm.service"
        r3.journal.close()

    asyncio.run(go())
