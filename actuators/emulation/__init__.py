"""Emulated `nvidia-smi` (MIG subset) and `nvidia-cuda-mps-control` for tests and the simulated demo.

`install(bin_dir, ...)` writes small executables named like the real tools that run these modules
with this interpreter; put bin_dir first on PATH (or pass the paths) and the actuator code cannot
tell them from the real tools on the commands tailguard uses.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

NVSMI_STATE_ENV = "TAILGUARD_NVSMI_STATE"
MPS_STATE_ENV = "TAILGUARD_MPS_STATE"


def _script(module: str, env_var: str, state: Path) -> str:
    root = Path(__file__).resolve().parents[2]
    return (
        f"#!{sys.executable} -S\n"  # no site: starts faster; needs only the stdlib and this tree
        "import os, sys\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        f"os.environ.setdefault({env_var!r}, {str(state)!r})\n"
        f"from {module} import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )


def install(bin_dir: str | os.PathLike[str], nvsmi_state: str | os.PathLike[str], mps_state: str | os.PathLike[str]
            ) -> tuple[Path, Path]:  # fmt: skip
    """Write bin_dir/nvidia-smi and bin_dir/nvidia-cuda-mps-control; return their paths."""
    b = Path(bin_dir)
    b.mkdir(parents=True, exist_ok=True)
    out = []
    for name, module, var, state in (
        ("nvidia-smi", "actuators.emulation.nvidia_smi", NVSMI_STATE_ENV, Path(nvsmi_state)),
        ("nvidia-cuda-mps-control", "actuators.emulation.mps_control", MPS_STATE_ENV, Path(mps_state)),
    ):
        p = b / name
        p.write_text(_script(module, var, state.resolve()))
        p.chmod(0o755)
        out.append(p)
    return out[0], out[1]
