"""Test doubles for the daemon tests: a Host over fsm.examples.ToyPlant with fault injection,
a real mosquitto broker on a free loopback port, and a free-port helper."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from controller.signals.base import SamplerStats
from fsm.desired import DesiredState
from fsm.examples import ToyPlant, example_spec
from fsm.observation import Observation
from fsm.spec import HostSpec, Policy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_tool(name: str, *extra_paths: str) -> str:
    """The tool's path; on CI a missing tool fails the test (make test installs it), elsewhere skips."""
    path = shutil.which(name) or next((p for p in extra_paths if os.access(p, os.X_OK)), None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (make test installs the Debian package)")
        pytest.skip(f"{name} not installed")
    return path


@dataclass
class ToyHost:
    """controller.host.Host over the ToyPlant; `hang_on` / `slow_on` / `fail_on` inject faults."""

    policy: Policy = field(default_factory=lambda: Policy(cooldown_s=4, dwell_s=4))
    plant: ToyPlant = field(default_factory=ToyPlant)
    hang_on: set[int] = field(default_factory=set)  # observe() never returns on these ticks
    slow_on: dict[int, float] = field(default_factory=dict)  # tick -> seconds observe() takes
    fail_on: set[int] = field(default_factory=set)
    restart_on: dict[int, float] = field(default_factory=dict)  # tick -> the llm tenant's restarted_s
    observed_at: list[float] = field(default_factory=list)  # monotonic time of each observe()
    applied: list[DesiredState] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        self.spec: HostSpec = example_spec(self.policy)
        self.stats = {"toy": SamplerStats("toy")}

    def now(self) -> float:
        return self.plant.t

    async def observe(self) -> Observation:
        n = len(self.observed_at)
        self.observed_at.append(time.monotonic())
        if n in self.hang_on:
            await asyncio.Event().wait()
        if n in self.slow_on:
            await asyncio.sleep(self.slow_on[n])
        if n in self.fail_on:
            raise RuntimeError("injected observe failure")
        st = self.stats["toy"]
        st.samples_total += 1
        st.last_success_t = time.monotonic()
        obs = self.plant.observe()
        if n in self.restart_on:  # its latency source's counters went back to zero
            llm = replace(obs.tenants["llm"], restarted_s=self.restart_on[n])
            obs = replace(obs, tenants={**obs.tenants, "llm": llm})
        return obs

    async def apply(self, desired: DesiredState) -> None:
        self.applied.append(desired)
        self.plant.apply(desired)

    def sampler_stats(self) -> dict[str, SamplerStats]:
        return self.stats

    async def close(self) -> None:
        self.closed = True


class Mosquitto:
    """A real broker (Debian mosquitto) on a free loopback port with its own config file."""

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        self.exe = need_tool("mosquitto", "/usr/sbin/mosquitto")
        self.port = port or free_port()
        self.conf = tmp / "mosquitto.conf"
        self.log = tmp / "mosquitto.log"
        # Started as root, mosquitto drops to user "mosquitto", which cannot write the test's
        # root-owned temporary directory: its log and persistence file would silently go nowhere
        # (a persistent session then does not survive a restart). Stay the user we are.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n{user}"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\n",
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _launch(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> Mosquitto:
        self.proc = self._launch()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                if "Address already in use" in log and time.monotonic() < deadline - 0.5:
                    # the port of a broker just stopped (a restart test), or one another process
                    # held for a moment: try again until the deadline (the error goes to the log)
                    self.log.write_text("")
                    time.sleep(0.2)
                    self.proc = self._launch()
                    continue
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {err} {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"
