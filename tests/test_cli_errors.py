"""User errors on the command line end in a message naming the option and exit 2, never a
traceback, and before any long work (a replay is not run only to fail on its output path).

Each invocation runs through the real entry point (`python -m controller.cli`) in a subprocess,
as an operator's shell would run it.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsm.examples import example_spec, synthetic_stream
from replay.trace import TraceWriter

ROOT = Path(__file__).resolve().parents[1]


def cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


BAD = [
    # (argv, the option the message must name)
    (["replay", "--json", "/nonexistent/dir/x.json"], "--json"),
    (["replay", "--plot", "/nonexistent/x.png"], "--plot"),
    (["replay", "--json", "/proc/x.json"], "--json"),
    (["replay", "--duration", "-5"], "--duration"),
    (["demo", "--out", "/proc/nope"], "--out"),
    (["run", "--simulate", "--mqtt-url", "garbage"], "--mqtt-url"),
    (["run", "--simulate", "--mqtt-url", "mqtt://broker:99999"], "--mqtt-url"),
    (["run", "--simulate", "--metrics-port", "99999"], "--metrics-port"),
    (["run", "--simulate", "--metrics-port", "-1"], "--metrics-port"),
    (["run", "--simulate", "--metrics-addr", "0.0.0.0", "--metrics-port", "9999"], "--metrics-addr"),
    (["run", "--simulate", "--host-name", "#/+"], "--host-name"),
    (["run", "--simulate", "--host-name", "a/b"], "--host-name"),
    (["run", "--simulate", "--duration", "0"], "--duration"),
    (["record", "--out", "{tmp}/t.jsonl", "--max-bytes", "0", "--simulate"], "--max-bytes"),
    (["record", "--out", "/proc/nope/t.jsonl", "--simulate"], "--out"),
    (["record", "--out", "{tmp}", "--simulate"], "--out"),
]


@pytest.mark.parametrize(("argv", "option"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_invocation_exits_2_naming_the_option(argv: list[str], option: str, tmp_path: Path) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    t0 = time.monotonic()
    r = cli(*argv)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert option in r.stderr, out
    assert "Traceback" not in out
    # Refused up front: no simulated run, no replay table before the message.
    assert "run summary" not in out and "scenario " not in r.stdout
    assert time.monotonic() - t0 < 60


def test_output_checks_leave_nothing_behind(tmp_path: Path) -> None:
    """The writability probe removes the file it created when the run is then refused."""
    out = tmp_path / "x.json"
    r = cli("replay", "--json", str(out), "--policies", "nope")
    assert r.returncode == 2 and "--policies" in r.stderr
    assert not out.exists()


def test_duration_counts_seconds_from_start_on_a_real_host(tmp_path: Path) -> None:
    """The real host's clock is wall-clock time: --duration 1.5 runs ~1.5 s, not one tick."""
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        f'[host]\nname = "h1"\nstate_dir = "{tmp_path}/state"\n'
        '[[tenants]]\nname = "etl"\nrole = "bulk"\ncgroup = "etl.slice"\n'
        '[signals]\nnvml = false\ndcgm = "off"\n[topology]\nsource = "none"\n[exporters.prometheus]\nenabled = false\n'
    )
    t0 = time.monotonic()
    r = cli("run", "--config", str(cfg), "--duration", "1.5", "--period", "0.1", "--log-level", "WARNING")
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    m = re.search(r"stopped: duration reached; (\d+) ticks in ([\d.]+) s wall", r.stdout)
    assert m, r.stdout
    assert int(m[1]) >= 5 and float(m[2]) >= 1.4
    assert wall >= 1.5
    # The config's warning (no sensitive tenant) is logged at start, not fatal.
    assert "no tenant has role" in r.stderr


def test_shadow_warns_of_a_cut_line_with_its_number(tmp_path: Path) -> None:
    p = tmp_path / "trace.jsonl"
    with TraceWriter(p, "h", example_spec()) as w:
        for o in synthetic_stream(n=5):
            w.write(o)
    n = len(p.read_text().splitlines())
    with open(p, "a", encoding="utf-8") as f:
        f.write('{"kind": "obs", "obs": {"t": 4')  # the recorder died here
    r = cli("replay", "--shadow", str(p), "--quiet")
    assert r.returncode == 0, r.stderr
    assert f"{p}:{n + 1}: line cut short" in r.stderr
    assert "5 ticks" in r.stdout and "Traceback" not in r.stdout + r.stderr


@pytest.fixture
def mounts(tmp_path: Path):  # type: ignore[no-untyped-def]
    """tmpfs mounts made for one test (root only), unmounted after it."""
    made: list[Path] = []

    def mount(name: str, opts: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True, timeout=30)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        made.append(d)
        return d

    yield mount
    for d in reversed(made):
        subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=30)


@pytest.mark.faults
def test_outputs_on_a_read_only_and_a_full_filesystem(mounts) -> None:  # type: ignore[no-untyped-def]
    ro = mounts("ro", "ro,size=1m")
    r = cli("replay", "--json", str(ro / "x.json"))
    assert r.returncode == 2 and "--json" in r.stderr and "Read-only file system" in r.stderr, r.stderr
    r = cli("demo", "--out", str(ro / "out"))
    assert r.returncode == 2 and "--out" in r.stderr and "Traceback" not in r.stdout + r.stderr
    # Full: the up-front probe passes (an empty file needs no data block), the write at the end
    # fails; still exit 2 naming the option, and no truncated JSON left behind.
    full = mounts("full", "size=64k")
    with contextlib.suppress(OSError), open(full / "filler", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)
    out = full / "x.json"
    r = cli("replay", "--json", str(out), "--policies", "static", "--duration", "600")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--json" in r.stderr and "No space left" in r.stderr and "Traceback" not in r.stdout + r.stderr
    assert not out.exists()


@pytest.mark.faults
def test_check_config_refuses_a_state_dir_on_a_read_only_mount(mounts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ro = mounts("ro", "ro,size=1m")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[host]\nstate_dir = "{ro}/state"\n')
    r = cli("check-config", str(cfg))
    assert r.returncode == 2 and f"host.state_dir: {ro}/state cannot be created ({ro} is not writable)" in r.stderr
    cfg.write_text(f'[host]\nstate_dir = "{tmp_path}/state"\n')
    assert cli("check-config", str(cfg)).returncode == 0
