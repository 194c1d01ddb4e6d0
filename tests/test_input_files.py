"""Paths that name something other than a small regular file (a FIFO, a device, a file past any
config's size), a status file of the right schema but another shape, and a number flag in digits
that int() cannot read: each gets a clear error naming the file, key or flag, never a hang, an
unbounded read or a traceback (found by fuzzing the readers; schema/files.py, controller/status.py)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from controller.cli import main
from controller.signals.latency import JsonlLatencySampler
from controller.status import StatusError, _checked, render
from schema.files import read_small_bytes, read_small_text

pytestmark = pytest.mark.timeout(30)  # a regression here is a hang: fail it, do not wait for it


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    p = tmp_path / "pipe"
    os.mkfifo(p)
    return p


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_small_file_reader_refuses_what_is_not_a_regular_file(kind: str, fifo: Path, tmp_path: Path) -> None:
    path = {"fifo": fifo, "device": Path("/dev/zero"), "directory": tmp_path}[kind]
    with pytest.raises(OSError) as e:
        read_small_text(path)
    assert e.value.errno == errno.EINVAL and "not a regular file" in str(e.value.strerror)


def test_a_small_file_reader_stops_at_its_limit_whatever_the_size_says(tmp_path: Path) -> None:
    p = tmp_path / "big"
    p.write_bytes(b"x" * 4097)
    assert read_small_bytes(p, limit=4097) == b"x" * 4097
    with pytest.raises(OSError) as e:
        read_small_bytes(p, limit=4096)
    assert e.value.errno == errno.EFBIG
    assert read_small_text("/proc/self/status").startswith("Name:")  # st_size 0, content read all the same


@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_check_config_names_a_topology_file_that_is_a_fifo_or_device(
    target: str, fifo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    named = str(fifo) if target == "fifo" else target
    f = tmp_path / "c.toml"
    f.write_text(f'[topology]\nsource = "topo-matrix"\ntopo_matrix_file = "{named}"\n')
    assert main(["check-config", str(f)]) == 2
    kind = "a FIFO" if target == "fifo" else "a character device"
    assert f"topology.topo_matrix_file: topology file {named}: {kind}, not a regular file" in capsys.readouterr().err


def test_a_config_that_is_a_fifo_is_refused(fifo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(fifo)]) == 2
    assert f"{fifo}: cannot read: a FIFO, not a regular file" in capsys.readouterr().err


def test_a_latency_file_that_is_a_fifo_is_an_error_of_the_source_not_a_hung_loop(fifo: Path) -> None:
    s = JsonlLatencySampler("llm", str(fifo), slo_s=0.2)
    with pytest.raises(OSError, match="a FIFO, not a regular file"):
        s.read_new()


STATUS = {
    "schema": "tailguard.status/1",
    "host": "h",
    "wall": 100.0,
    "period_s": 1.0,
    "tenants": {"llm": {"role": "sensitive", "level": "normal", "value_s": 0.1, "slo_s": 0.2}},
    "throttles": [{"tenant": "etl", "device": "8:0", "read_bps": 1e8, "write_bps": None, "expires_at": 130.0}],
    "recent_events": [{"t": 90.0, "tenant": "llm", "kind": "escalate"}],
    "outages": {"llm": [{"kind": "relaunch", "seconds": 12.0}]},
}


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("tenants", [], "tenants is a list, not a dict"),
        ("tenants", {"llm": None}, "tenants holds None, not a dict"),
        ("throttles", [{"tenant": "etl", "expires_at": None}], "throttles[].expires_at is not a number in every item"),
        ("throttles", {"etl": 1}, "throttles is a dict, not a list"),
        ("recent_events", [{"t": "soon"}], "recent_events[].t is not a number in every item"),
        ("outages", {"llm": [{"seconds": "long"}]}, "outages.llm holds a record that is not {kind, seconds}"),
        ("wall", "yesterday", "wall is 'yesterday', not a number"),
        ("in_flight", [1], "in_flight holds 1, not a str"),
    ],
)
def test_a_status_file_of_another_shape_is_refused_naming_the_key(key: str, value: object, says: str) -> None:
    assert "llm" in render(_checked(STATUS, "s.json", "file"), now=100.0)
    with pytest.raises(StatusError) as e:
        _checked({**STATUS, key: value}, "s.json", "file")
    assert str(e.value) == f"s.json: a tailguard.status/1 file of another shape: {says}"


def test_status_names_the_file_of_another_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "status.json").write_text(json.dumps({**STATUS, "tenants": []}))
    assert main(["status", "--state-dir", str(tmp_path)]) == 1
    assert "status.json: a tailguard.status/1 file of another shape: tenants is a list" in capsys.readouterr().err
    (tmp_path / "status.json").write_text(json.dumps({**STATUS, "tenants": None, "throttles": None}))
    assert main(["status", "--state-dir", str(tmp_path)]) == 0  # an empty section, not a wrong one


def test_a_number_flag_in_digits_int_cannot_read_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    # '²'.isdigit() is True, int('²') raises: the flag is read as a host name instead
    rc = main(["run", "--simulate", "p4d-demo", "--sim-host", "²", "--dry-run", "--duration", "1"])
    assert rc != 0
    assert "--sim-host '²'" in capsys.readouterr().err
