"""Emulated `nvidia-cuda-mps-control` (command mode: one command per stdin line).

State (env TAILGUARD_MPS_STATE): {"servers": {"PID": {"clients": [pids], "percent": 100.0}},
"default": 100.0, "faults": [...]} with the same fault knobs as the nvidia-smi emulator."""

from __future__ import annotations

import os
import sys
import time

from actuators.emulation import MPS_STATE_ENV
from actuators.emulation.statefile import locked


def main(argv: list[str]) -> int:
    path = os.environ.get(MPS_STATE_ENV)
    if not path:
        sys.stderr.write(f"emulated nvidia-cuda-mps-control: set {MPS_STATE_ENV}\n")
        return 1
    lines = [ln.split() for ln in sys.stdin.read().splitlines() if ln.strip()]
    out: list[str] = []
    code = 0
    hang = 0.0
    with locked(path) as st:
        servers = st.setdefault("servers", {})
        for f in st.get("faults", []):
            if f.get("times", -1) != 0 and any(f.get("match", "") in " ".join(w) for w in lines):
                if f.get("times", -1) > 0:
                    f["times"] -= 1
                if f.get("mode") == "hang":
                    hang = float(f.get("seconds", 3600))
                else:
                    out.append("garbage ###\n")
                    code = int(f.get("code", 1))
                break
        else:
            for w in lines:
                cmd, args = w[0], w[1:]
                if cmd == "get_server_list":
                    out += [f"{pid}\n" for pid in sorted(servers, key=int)]
                elif cmd == "get_client_list" and len(args) == 1 and args[0] in servers:
                    out += [f"{c}\n" for c in servers[args[0]]["clients"]]
                elif cmd == "get_active_thread_percentage" and len(args) == 1 and args[0] in servers:
                    out.append(f"{float(servers[args[0]]['percent']):.1f}\n")
                elif cmd == "set_active_thread_percentage" and len(args) == 2 and args[0] in servers:
                    servers[args[0]]["percent"] = float(args[1])
                    out.append(f"{float(args[1]):.1f}\n")
                elif cmd == "set_default_active_thread_percentage" and len(args) == 1:
                    st["default"] = float(args[0])
                    out.append(f"{float(args[0]):.1f}\n")
                elif cmd == "get_default_active_thread_percentage":
                    out.append(f"{float(st.get('default', 100.0)):.1f}\n")
                else:
                    out.append(f"Invalid command or server: {' '.join(w)}\n")  # wording not captured
                    code = 1
    if hang:
        time.sleep(hang)
        return 1
    sys.stdout.write("".join(out))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
