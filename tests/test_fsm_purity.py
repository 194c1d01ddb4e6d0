"""fsm/ is the functional core: it must not import the shell packages or any I/O module."""

from __future__ import annotations

import ast
from pathlib import Path

FSM = Path(__file__).resolve().parent.parent / "fsm"
FORBIDDEN = {
    "controller",
    "actuators",
    "replay",  # the shell
    "os",
    "io",
    "sys",
    "subprocess",
    "socket",
    "asyncio",
    "threading",
    "multiprocessing",
    "shutil",
    "pathlib",
    "tempfile",
    "time",
    "datetime",
    "random",
    "logging",
    "signal",
    "select",
    "selectors",
    "http",
    "urllib",
    "aiomqtt",
    "pynvml",
    "psutil",
    "prometheus_client",
    "pydantic",
    "numpy",
    "builtins",
    "ctypes",
    "glob",
    "fcntl",
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module.split(".")[0]))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("open", "__import__", "exec", "eval")
        ):
            out.append((node.lineno, f"call:{node.func.id}"))
    return out


def test_fsm_imports_no_io_and_no_shell():
    files = sorted(FSM.glob("*.py"))
    assert len(files) > 5
    bad = [
        f"{p.name}:{line}: {mod}"
        for p in files
        for line, mod in _imports(p)
        if mod in FORBIDDEN or mod.startswith("call:")
    ]
    assert not bad, "fsm/ must stay pure: " + ", ".join(bad)


def test_the_purity_check_can_fail(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("import subprocess\nfrom controller.cli import main\nopen('f')\n")
    assert [m for _, m in _imports(p)] == ["subprocess", "controller", "call:open"]
