"""Counters survive restarts as Prometheus expects: a restart resets them to zero and then only
new events count (increase() adds across the reset). A resumed state must not count its past
again, or every restart of a daemon that reconfigured MIG within the hour looks like a
reconfiguration storm (TailguardReconfigurationStorm)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fakes.daemon_fakes import ToyHost

from controller.daemon import Daemon, DaemonOptions
from fsm.state import ControllerState


def test_resumed_reconfigurations_are_not_counted_again(tmp_path: Path) -> None:
    # The state a previous process left: two MIG changes within the rolling hour's budget.
    (tmp_path / "state.json").write_text(ControllerState(reconfigs=(-120.0, -60.0), last_t=-1.0).to_json())
    d = Daemon(ToyHost(), DaemonOptions(host_name="toy", period_s=0.005, max_ticks=5, state_dir=str(tmp_path)))
    assert d.state.reconfigs == (-120.0, -60.0)
    asyncio.run(d.run())
    assert d.snapshot.ticks_total == 5
    assert d.state.reconfigs == (-120.0, -60.0)  # still in the budget's hour, so still remembered
    assert d.snapshot.reconfigs_total == 0
