"""Fleet shadow replay on the local executor: a host's rotated files in order with the controller
state carried across them, a bad trace reported with its file and line while the others complete,
and the --executor errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from controller.cli import main
from replay.fleet import HostFiles, expand, shadow_host
from replay.synth import record_simulated

SCENARIO = Path(__file__).resolve().parents[1] / "replay" / "scenarios" / "p4d-demo.toml"


def record(out: Path, duration: float = 600, max_bytes: int = 64 << 20) -> None:
    """A dry-run recording of the simulated host, one observation per tick (replay.synth)."""
    assert record_simulated(str(SCENARIO), out, duration, max_bytes=max_bytes) == duration / 5


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fleet")
    record(d / "a.jsonl", max_bytes=250_000)  # rotated: a.jsonl.N ... a.jsonl.1, a.jsonl
    record(d / "b.jsonl", duration=200)
    return d


def test_expand_orders_rotated_files_oldest_first(fleet_dir: Path) -> None:
    hosts = expand(str(fleet_dir))
    assert [h.name for h in hosts] == ["a.jsonl", "b.jsonl"]
    a = hosts[0].files
    assert len(a) >= 3, "the recording did not rotate"
    assert a[-1].endswith("a.jsonl") and a[-2].endswith("a.jsonl.1") and a[0].endswith(f"a.jsonl.{len(a) - 1}")
    # A file path takes its own rotations along; a glob picks hosts.
    assert expand(str(fleet_dir / "a.jsonl"))[0].files == a
    assert [h.name for h in expand(str(fleet_dir / "b*"))] == ["b.jsonl"]


def test_state_carries_across_rotated_files(fleet_dir: Path, tmp_path: Path) -> None:
    host = expand(str(fleet_dir / "a.jsonl"))[0]
    # The same observations in one file (the reader skips a header that starts a concatenated part).
    whole = tmp_path / "whole.jsonl"
    with whole.open("w") as out:
        for f in host.files:
            out.write(Path(f).read_text())
    split, joined = shadow_host((host, None)), shadow_host((HostFiles("whole", (str(whole),)), None))
    assert split.error is None and joined.error is None
    assert split.ticks == joined.ticks == 120
    assert split.decisions == joined.decisions and split.decisions  # the escalations of p4d-demo
    assert split.final_levels == joined.final_levels


@pytest.mark.faults
def test_a_bad_trace_is_reported_with_file_and_line_and_the_rest_complete(
    fleet_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "traces"
    shutil.copytree(fleet_dir, d)
    lines = (d / "b.jsonl").read_text().splitlines(keepends=True)
    lines[4] = '{"kind": "obs", "obs": {"t": "soon"}}\n'  # line 5: a bad observation, not a torn line
    (d / "b.jsonl").write_text("".join(lines))
    out = tmp_path / "fleet.json"
    rc = main(["replay", "--shadow", str(d), "--jobs", "2", "--json", str(out)])
    assert rc == 1  # some host failed, the others were replayed
    cap = capsys.readouterr()
    assert f"{d / 'b.jsonl'}:5: bad observation" in cap.err
    doc = json.loads(out.read_text())
    assert doc["failed"] == 1 and doc["executor"] == "local" and doc["figures"] == "decisions"
    by = {h["name"]: h for h in doc["hosts"]}
    assert by["b.jsonl"]["error"].startswith(f"{d / 'b.jsonl'}:5:")
    assert by["a.jsonl"]["error"] is None and by["a.jsonl"]["ticks"] == 120
    assert doc["hosts"][0]["name"] == "b.jsonl"  # failed hosts first, then the worst


def test_worst_hosts_first(fleet_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fleet.json"
    assert main(["replay", "--shadow", str(fleet_dir), "--executor", "local", "--jobs", "1", "--json", str(out)]) == 0
    hosts = json.loads(out.read_text())["hosts"]
    shares = [h["recorded_over_slo_share"] or 0.0 for h in hosts]
    assert shares == sorted(shares, reverse=True) and shares[0] > 0
    assert "nothing simulated" in capsys.readouterr().out


def test_executor_errors(fleet_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["replay", "paper-p4d", "--duration", "60", "--executor", "spark"]) == 2
    assert "expected local, ray or ray:ADDRESS" in capsys.readouterr().err
    assert main(["replay", "--shadow", str(fleet_dir / "nothing*")]) == 2
    assert "no trace file there" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if tailguard[fleet] were not installed
    for argv in (["replay", "paper-p4d", "--duration", "60"], ["replay", "--suite", "--duration", "60"],
                 ["replay", "--shadow", str(fleet_dir)]):  # fmt: skip
        assert main([*argv, "--executor", "ray"]) == 2
        assert "install tailguard[fleet]" in capsys.readouterr().err


def test_logrotate_compressed_parts_read_like_the_plain_ones(fleet_dir: Path, tmp_path: Path) -> None:
    # logrotate's `compress` + `delaycompress`: TRACE.1 plain, older parts TRACE.N.gz (.bz2, .xz).
    import bz2
    import gzip
    import lzma

    plain = expand(str(fleet_dir / "a.jsonl"))[0]
    d = tmp_path / "rotated"
    d.mkdir()
    packers = [gzip.compress, bz2.compress, lzma.compress]
    for f in plain.files:
        name = Path(f).name
        n = name.rsplit(".", 1)[-1]
        if n.isdecimal() and n != "1":
            pack = packers[int(n) % 3]
            ext = {gzip.compress: ".gz", bz2.compress: ".bz2", lzma.compress: ".xz"}[pack]
            (d / (name + ext)).write_bytes(pack(Path(f).read_bytes()))
        else:
            shutil.copy(f, d / name)
    (host,) = expand(str(d))
    names = [Path(f).name for f in host.files]
    assert [n.removesuffix(".gz").removesuffix(".bz2").removesuffix(".xz") for n in names] == [
        Path(f).name for f in plain.files
    ]  # oldest first, as the plain parts
    assert any(n.endswith(".gz") for n in names) and any(n.endswith(".xz") for n in names)
    again, before = shadow_host((host, None)), shadow_host((plain, None))
    assert again.error is None and again.ticks == before.ticks == 120
    assert again.decisions == before.decisions


def test_a_compressed_part_cut_short_is_named_with_its_line(fleet_dir: Path, tmp_path: Path) -> None:
    import gzip

    src = Path(expand(str(fleet_dir / "b.jsonl"))[0].files[0])
    cut = tmp_path / "b.jsonl"
    cut.write_bytes(gzip.compress(src.read_bytes())[:-200])  # the end of the stream is missing
    (host,) = expand(str(cut))
    res = shadow_host((host, None))
    assert res.error is not None and "cannot read" in res.error and f"{cut}:" in res.error
