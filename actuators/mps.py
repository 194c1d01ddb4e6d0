"""MPS active-thread limits through `nvidia-cuda-mps-control`, which reads commands on stdin
(NVIDIA MPS documentation, "nvidia-cuda-mps-control" man page): `get_server_list` prints one server
PID per line, `get_client_list PID` the client PIDs of a server, `set_active_thread_percentage PID
PCT` limits a server (its new clients), `set_default_active_thread_percentage PCT` sets the
default for servers started later. 100 lifts a limit.
"""

from __future__ import annotations

from collections.abc import Mapping

from actuators.proc import ToolError, run
from schema.jsontext import ascii_digits

# Where nvidia-cuda-mps-control talks to its daemon when CUDA_MPS_PIPE_DIRECTORY is not set (NVIDIA
# MPS documentation): the one path the MPS lever writes (the unit's BindPaths shares it).
MPS_PIPE_DIR = "/tmp/nvidia-mps"


class MpsError(Exception):
    pass


def _pct(p: int) -> str:
    if not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 100:
        raise MpsError(f"bad active-thread percentage {p!r}: must be a whole number 1-100")
    return str(p)


def _pid(p: int) -> str:
    if not isinstance(p, int) or isinstance(p, bool) or p <= 0:
        raise MpsError(f"bad PID {p!r}")
    return str(p)


class MpsControl:
    def __init__(self, path: str = "nvidia-cuda-mps-control", timeout: float = 10.0,
                 env: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.path = path
        self.timeout = timeout
        self.env = env

    async def _cmd(self, line: str) -> str:
        try:
            r = await run([self.path], self.timeout, stdin=line + "\n", env=self.env)
        except ToolError as e:
            raise MpsError(str(e)) from None
        if r.rc != 0:
            raise MpsError(f"{self.path} {line!r}: {r.status}: {r.text.strip()[:200]}")
        return r.stdout

    @staticmethod
    def _ints(text: str, what: str) -> list[int]:
        out = []
        for ln in text.split():
            if not ascii_digits(ln):
                raise MpsError(f"{what}: unexpected output {text.strip()[:120]!r}")
            out.append(int(ln))
        return out

    async def servers(self) -> list[int]:
        return self._ints(await self._cmd("get_server_list"), "get_server_list")

    async def clients(self, server: int) -> list[int]:
        return self._ints(await self._cmd(f"get_client_list {_pid(server)}"), "get_client_list")

    async def get_percentage(self, server: int) -> float:
        text = (await self._cmd(f"get_active_thread_percentage {_pid(server)}")).strip()
        try:
            return float(text)
        except ValueError:
            raise MpsError(f"get_active_thread_percentage: unexpected output {text[:120]!r}") from None

    async def set_percentage(self, server: int, percent: int) -> float:
        await self._cmd(f"set_active_thread_percentage {_pid(server)} {_pct(percent)}")
        got = await self.get_percentage(server)
        if abs(got - percent) > 0.5:
            raise MpsError(f"server {server}: set {percent}% but read back {got}%")
        return got

    async def set_default(self, percent: int) -> None:
        await self._cmd(f"set_default_active_thread_percentage {_pct(percent)}")
