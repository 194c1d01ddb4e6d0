"""Helpers for tests and the simulated demo: an emulated GPU host in a directory, and a scratch
group in the real cgroup v1 blkio hierarchy that is always removed again."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from actuators.emulation import install
from actuators.emulation.nvidia_smi import new_state
from actuators.emulation.statefile import save
from fsm.mig import Slot

BLKIO = Path("/sys/fs/cgroup/blkio")


@dataclass(frozen=True, slots=True)
class EmuHost:
    dir: Path
    nvsmi: Path  # the emulated nvidia-smi executable
    mps: Path
    nvsmi_state: Path
    mps_state: Path


def emu_host(d: str | os.PathLike[str], models: list[str], layouts: dict[int, tuple[Slot, ...]] | None = None
             ) -> EmuHost:  # fmt: skip
    base = Path(d)
    base.mkdir(parents=True, exist_ok=True)
    ns, ms = base / "nvsmi.json", base / "mps.json"
    save(ns, new_state(models, layouts))
    save(ms, {"servers": {}, "default": 100.0, "faults": []})
    nv, mp = install(base / "bin", ns, ms)
    return EmuHost(base, nv, mp, ns, ms)


def remove_tree(g: Path) -> None:
    """rmdir a cgroup subtree bottom-up, moving any leftover process to the hierarchy root first."""
    if not g.is_dir():
        return
    for child in sorted((p for p in g.iterdir() if p.is_dir()), reverse=True):
        remove_tree(child)
    with contextlib.suppress(OSError):
        for pid in (g / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (BLKIO / "cgroup.procs").write_text(pid)
    os.rmdir(g)


@contextlib.contextmanager
def blkio_sandbox(prefix: str = "tailguard-test") -> Iterator[tuple[str, Path]]:
    """(relative name, absolute path) of a fresh group under the v1 blkio root; removed on exit."""
    if not (BLKIO / "blkio.throttle.write_bps_device").exists():
        raise RuntimeError(f"no cgroup v1 blkio hierarchy at {BLKIO}: the real-kernel tests need one (run as root)")
    name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
    g = BLKIO / name
    g.mkdir()
    try:
        yield name, g
    finally:
        remove_tree(g)
