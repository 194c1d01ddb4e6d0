"""The I/O lever under extreme and odd values: caps of 0, 1, 2**63-1, 2**64 and past, NaN and
infinities, expiries far past / far future / NaN, odd MAJ:MIN, hostile cgroup paths, foreign io.max
lines, journals holding such values, and a desired state flipping between extremes every tick.

The control files are fake, but behind the real write path (os.open O_TRUNC|O_NOFOLLOW, os.write):
FakeKernel keeps io.max and blkio.throttle.*_bps_device the way block/blk-throttle.c does (a write
changes only the keys it names, values wrap modulo 2**64 as the kernel's sscanf(%llu) does, 0 is
ERANGE, U64_MAX reads back as "max", an unknown MAJ:MIN is ENODEV, a bad line changes nothing), and
every write is checked to land under the cgroup root or in the journal's directory."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import math
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actuators.cgroup import Caps, CgroupError, CgroupIO
from actuators.journal import Journal
from actuators.paths import PathError, confine
from actuators.reconciler import Reconciler, TenantActuation
from actuators.salvage import lift_expired
from fsm.desired import DesiredState, Throttle

U64_MAX = 2**64 - 1
NOW = 1_800_000_000.0
DEV = "259:0"  # nvme0n1 in the fake sysfs
DEV2 = "8:0"  # sda
KEYS = ("rbps", "wbps", "riops", "wiops")
V1_FILES = {"blkio.throttle.read_bps_device": "rbps", "blkio.throttle.write_bps_device": "wbps"}

# ----------------------------------------------------------------------------- the fake kernel


@dataclass
class FakeKernel:
    root: Path  # the cgroup root: every control-file write must land under it
    allowed: list[Path]  # other places writes may go (the journal's directory)
    devices: set[str]
    limits: dict[Path, dict[str, dict[str, int]]] = field(default_factory=dict)  # group -> dev -> key -> value
    outside: list[str] = field(default_factory=list)  # writes that landed elsewhere

    def seed(self, group: Path, text: str) -> None:
        """io.max as someone else left it (kernel format or not: the file is what the tool reads)."""
        d: dict[str, dict[str, int]] = {}
        for line in text.splitlines():
            parts = line.split()
            if parts:
                kv = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
                d[parts[0]] = {k: U64_MAX if v == "max" else int(v) for k, v in kv.items() if k in KEYS and
                               (v == "max" or (v.isascii() and v.isdigit()))}  # fmt: skip
        self.limits[Path(os.path.realpath(group))] = d
        (group / "io.max").write_text(text)

    def render_v2(self, group: Path) -> str:
        out = []
        for dev, kv in sorted(self.limits.get(group, {}).items()):
            vals = [kv.get(k, U64_MAX) for k in KEYS]
            if any(v != U64_MAX for v in vals):
                out.append(
                    dev + "".join(f" {k}={'max' if v == U64_MAX else v}" for k, v in zip(KEYS, vals, strict=True))
                )
        return "".join(f"{ln}\n" for ln in out)

    def render_v1(self, group: Path, key: str) -> str:
        kv = self.limits.get(group, {})
        return "".join(f"{d} {v[key]}\n" for d, v in sorted(kv.items()) if v.get(key, U64_MAX) != U64_MAX)

    @staticmethod
    def _u64(text: str) -> int:
        m = re.match(r"[0-9]+", text)  # sscanf("%llu"): leading digits, wrapping modulo 2**64
        if m is None:
            raise OSError(errno.EINVAL, "Invalid argument")
        return int(m[0]) % 2**64

    def _dev(self, body: str) -> tuple[str, str]:
        m = re.match(r"([0-9]+):([0-9]+)(\s|$)", body)
        if m is None:
            raise OSError(errno.EINVAL, "Invalid argument")
        dev = f"{int(m[1]) % 2**32}:{int(m[2]) % 2**32}"
        if dev not in self.devices:
            raise OSError(errno.ENODEV, "No such device")
        return dev, body[m.end() :]

    def write(self, path: Path, data: bytes) -> None:
        group, name = path.parent, path.name
        text = data.decode()
        dev, body = self._dev(text)
        new = dict(self.limits.setdefault(group, {}).get(dev, {}))
        if name == "io.max":
            # %26s tokens: a longer one is cut, and its rest is the next token
            toks = [t[i : i + 26] for t in body.split() for i in range(0, len(t), 26)]
            for tok in toks:
                key, eq, val = tok.partition("=")
                if not eq:
                    raise OSError(errno.EINVAL, "Invalid argument")
                v = U64_MAX if val == "max" else self._u64(val)
                if v == 0:
                    raise OSError(errno.ERANGE, "Numerical result out of range")
                if key not in KEYS:
                    raise OSError(errno.EINVAL, "Invalid argument")
                new[key] = v
        else:
            v = self._u64(body.strip())
            new[V1_FILES[name]] = U64_MAX if v == 0 else v  # v1: 0 removes the rule
        self.limits[group][dev] = new  # all or nothing: a bad token above changed nothing

    def render(self, path: Path) -> str:
        if path.name == "io.max":
            return self.render_v2(path.parent)
        return self.render_v1(path.parent, V1_FILES[path.name])


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKernel]:
    k = FakeKernel(tmp_path / "cgroup", [tmp_path / "j"], {DEV, DEV2})
    real_write = os.write

    def write(fd: int, data: bytes | memoryview) -> int:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        real_root = Path(os.path.realpath(k.root))
        if not any(
            p == target or p in target.parents for p in [real_root, *map(Path, map(os.path.realpath, k.allowed))]
        ):
            k.outside.append(str(target))
        if target.name in ("io.max", *V1_FILES) and real_root in target.parents:
            k.write(target, bytes(data))  # raises OSError like the kernel's handler
            os.ftruncate(fd, 0)
            os.pwrite(fd, k.render(target).encode(), 0)
            return len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    yield k
    assert not k.outside, f"written outside the cgroup root: {k.outside}"


# ----------------------------------------------------------------------------- the host and its journal


def host(tmp: Path, version: str = "v2", groups: tuple[str, ...] = ("a", "b")) -> tuple[Path, Path]:
    """A cgroup tree with `groups` (each with empty control files) and a sysfs with nvme0n1 (259:0),
    sda (8:0) and its partition sda1 (8:1)."""
    root = tmp / "cgroup"
    root.mkdir(parents=True, exist_ok=True)
    files = ["io.max"] if version == "v2" else list(V1_FILES)
    if version == "v2":
        (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    else:
        for f in files:
            (root / f).write_text("")
    for g in groups:
        (root / g).mkdir(parents=True, exist_ok=True)
        for f in files:
            (root / g / f).write_text("")
    sysr = tmp / "sys"
    for name, dev, parent in (("nvme0n1", "259:0", None), ("sda", "8:0", None), ("sda1", "8:1", "sda")):
        d = sysr / "devices" / (parent or "") / name if parent else sysr / "devices" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "dev").write_text(dev + "\n")
        if parent:
            (d / "partition").write_text("1\n")
        (sysr / "class" / "block").mkdir(parents=True, exist_ok=True)
        (sysr / "dev" / "block").mkdir(parents=True, exist_ok=True)
        (sysr / "class" / "block" / name).symlink_to(d)
        (sysr / "dev" / "block" / dev).symlink_to(d)
    return root, sysr


def reconciler(tmp: Path, tenants: dict[str, str], now: float = NOW, **kw: Any) -> Reconciler:
    clock = {"t": now}
    r = Reconciler(
        cgroup_root=str(tmp / "cgroup"), sys_root=str(tmp / "sys"), journal_path=tmp / "j" / "journal.jsonl",
        tenants={t: TenantActuation(t, cg) for t, cg in tenants.items()}, clock=lambda: clock["t"], **kw,
    )  # fmt: skip
    r.clock = lambda: clock["t"]
    return r


def at(r: Reconciler, t: float) -> None:
    r.clock = lambda: t


def io_caps(root: Path, group: str) -> dict[str, Caps]:
    return CgroupIO(root).read(group)


def records(tmp: Path) -> list[dict[str, Any]]:
    return list(Journal(tmp / "j" / "journal.jsonl").records())


def unbalanced(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Throttle intents without a later done/failed record for the same cap and action."""
    open_: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in recs:
        if r.get("kind") != "throttle" or r.get("phase") == "renew":
            continue
        key = (r.get("cgroup"), r.get("dev"), r.get("action"))
        if r.get("phase") == "intent":
            open_[key] = r
        else:
            open_.pop(key, None)
    return list(open_.values())


def thr(tenant: str, wbps: Any = 1e6, rbps: Any = None, exp: Any = NOW + 60, dev: str = "nvme0n1",
        cgroup: str | None = None) -> Throttle:  # fmt: skip
    return Throttle(tenant, dev, cgroup, rbps, wbps, exp)


def run(r: Reconciler, *ths: Throttle, now: float | None = None) -> Any:
    t = r.clock() if now is None else now
    return asyncio.run(r.reconcile(DesiredState(t=t, throttles=ths)))


def limits_file(root: Path, group: str) -> str:
    return (root / group / "io.max").read_text()


# ----------------------------------------------------------------------------- findings, one each


@pytest.mark.parametrize("version", ["v2", "v1"])
@pytest.mark.parametrize(
    "bad",
    [2**64 - 1, 2**64, 2**64 + 5, 1e300, 10**5000, True],
    ids=["u64max", "2e64", "2e64+5", "1e300", "1e5000", "True"],
)
def test_cap_past_the_kernels_u64_is_an_error_naming_the_field(
    tmp_path: Path, kernel: FakeKernel, version: str, bad: Any
) -> None:
    """2**64 + 5 was written as is and the kernel kept 5 bytes/s (read back as a mismatch, but the
    cap stayed); 2**64 - 1 is the kernel's "max"; 10**5000 raised out of reconcile."""
    root, _ = host(tmp_path, version)
    r = reconciler(tmp_path, {"a": "a"})
    rep = run(r, thr("a", wbps=bad))
    assert any("write_bps" in e and str(2**64 - 2) in e for e in rep.errors), rep.errors
    assert io_caps(root, "a") == {} and not rep.applied
    assert run(r, thr("a", wbps=2**64 - 2)).applied  # the largest real cap is still one
    assert io_caps(root, "a") == {DEV: Caps(None, 2**64 - 2)}
    with pytest.raises(CgroupError, match="wbps must be a whole number"):
        r.cg.write("a", DEV, Caps(None, 2**64 + 5))
    assert io_caps(root, "a") == {DEV: Caps(None, 2**64 - 2)}


@pytest.mark.parametrize("bad", [math.nan, math.inf, 10**400, "soon"], ids=["nan", "inf", "1e400", "str"])
def test_expiry_that_is_not_a_finite_time_is_an_error_and_not_applied(
    tmp_path: Path, kernel: FakeKernel, bad: Any
) -> None:
    """A NaN or infinite expiry was applied and journaled as NaN/Infinity, which recovery skips:
    after a crash the cap was nobody's and stayed for good. 10**400 and a str raised."""
    root, _ = host(tmp_path)
    r = reconciler(tmp_path, {"a": "a"})
    rep = run(r, thr("a", exp=bad))
    assert any("expires_at" in e for e in rep.errors), rep.errors
    assert io_caps(root, "a") == {} and not any(x.get("kind") == "throttle" for x in records(tmp_path))


def test_two_spellings_of_one_group_are_one_cap(tmp_path: Path, kernel: FakeKernel) -> None:
    """'a' and 'a//' (a trailing or doubled slash in a config) were two caps on one io.max, each
    rewritten in turn: an op every tick, the looser cap in force every other tick."""
    root, _ = host(tmp_path)
    r = reconciler(tmp_path, {"t1": "a", "t2": "a//"})
    ops = [run(r, thr("t1", wbps=1e6), thr("t2", wbps=5e6)).ops for _ in range(3)]
    assert len(ops[0]) == 1 and ops[1:] == [[], []]
    assert io_caps(root, "a") == {DEV: Caps(None, 1_000_000)}  # the tighter one


def test_non_utf8_cgroup_name_is_a_path_error(tmp_path: Path, kernel: FakeKernel) -> None:
    """A name with a lone surrogate (a non-UTF-8 directory name as os.listdir gives it) raised
    UnicodeEncodeError out of read_actual and the degraded-mode salvage pass."""
    bad = "x\udcff"
    root, _ = host(tmp_path, groups=("a", bad))
    with pytest.raises(PathError, match="UTF-8"):
        confine(root, bad)
    r = reconciler(tmp_path, {"t": bad})
    assert any("UTF-8" in e for e in run(r, thr("t")).errors)
    assert any("UTF-8" in e for e in asyncio.run(r.read_actual()).errors)
    r.journal.close()
    j = tmp_path / "j" / "journal.jsonl"
    j.parent.mkdir(exist_ok=True)
    j.write_text(json.dumps({"kind": "throttle", "phase": "intent", "action": "set", "cgroup": bad, "dev": DEV,
                             "tenant": "t", "wbps": 5, "expires_at": 1.0}) + "\n")  # fmt: skip
    rep = lift_expired(Journal(j), CgroupIO(root), NOW)
    assert rep.errors and "UTF-8" in rep.errors[0] and not rep.lifted


BIG = 10**400  # valid JSON, past a double's range: float() raises OverflowError


def _set(cg: str, dev: str, exp: Any, wbps: Any = 5) -> dict[str, Any]:
    return {"kind": "throttle", "phase": "intent", "action": "set", "cgroup": cg, "dev": dev, "tenant": cg,
            "wbps": wbps, "expires_at": exp}  # fmt: skip


@pytest.mark.parametrize(
    "bad",
    [
        _set("a", DEV, BIG),
        _set("a", DEV, -BIG),
        {"kind": "throttle", "phase": "renew", "action": "set", "caps": [{**_set("a", DEV, BIG)}]},
        {"kind": "mps", "phase": "intent", "action": "set", "tenant": "m", "pid": 5, "percent": 5, "expires_at": BIG},
    ],
)
def test_recovery_and_salvage_survive_an_integer_expiry_past_a_double(
    tmp_path: Path, kernel: FakeKernel, bad: dict[str, Any]
) -> None:
    """Such a record raised OverflowError out of recovery (the daemon ran degraded) and then out of
    the salvage pass too, which then lifted nothing: the expired cap in b stayed."""
    root, _ = host(tmp_path)
    kernel.seed(root / "b", "259:0 rbps=max wbps=5 riops=max wiops=max\n")
    (tmp_path / "j").mkdir()
    j = tmp_path / "j" / "journal.jsonl"
    lines = [_set("b", DEV, NOW - 10), bad]
    j.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rep = lift_expired(Journal(j), CgroupIO(root), NOW)
    assert rep.lifted == ["b 259:0"] and io_caps(root, "b") == {}
    kernel.seed(root / "b", "259:0 rbps=max wbps=5 riops=max wiops=max\n")
    j.write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = asyncio.run(reconciler(tmp_path, {"a": "a", "b": "b"}).recover())
    assert s["skipped"] == 1 and "not a finite number" in s["skipped_records"][0]
    assert s["lifted"] == ["b 259:0"] and io_caps(root, "b") == {}


def test_snapshot_with_an_integer_expiry_past_a_double_is_skipped_not_the_journal(
    tmp_path: Path, kernel: FakeKernel
) -> None:
    """The snapshot check raised OverflowError: recovery took the journal as unreadable and
    recovered nothing, so the expired cap journaled after the snapshot stayed."""
    root, _ = host(tmp_path)
    kernel.seed(root / "b", "259:0 rbps=max wbps=5 riops=max wiops=max\n")
    (tmp_path / "j").mkdir()
    snap = {"kind": "snapshot", "state": {"throttles": [{k: v for k, v in _set("a", DEV, BIG).items()
                                                         if k not in ("kind", "phase", "action")}]}}  # fmt: skip
    (tmp_path / "j" / "journal.jsonl").write_text(json.dumps(snap) + "\n" + json.dumps(_set("b", DEV, NOW - 10)) + "\n")
    s = asyncio.run(reconciler(tmp_path, {"a": "a", "b": "b"}).recover())
    assert not s["errors"] and s["lifted"] == ["b 259:0"] and io_caps(root, "b") == {}


def test_salvage_writes_only_a_maj_min_from_the_journal(tmp_path: Path, kernel: FakeKernel) -> None:
    """A journaled dev "259:0 riops=7" went into io.max as it was: the salvage pass's lift set an
    iops limit tailguard does not manage and never lifts."""
    root, _ = host(tmp_path)
    (tmp_path / "j").mkdir()
    j = tmp_path / "j" / "journal.jsonl"
    j.write_text(json.dumps(_set("a", "259:0 riops=7", NOW - 10)) + "\n")
    rep = lift_expired(Journal(j), CgroupIO(root), NOW)
    assert rep.errors and "not MAJ:MIN" in rep.errors[0] and not rep.lifted
    assert limits_file(root, "a") == ""


# ----------------------------------------------------------------------------- idempotence and a bounded fuzz


def expected(ths: tuple[Throttle, ...], now: float, groups: dict[str, str]) -> dict[tuple[str, str], Caps]:
    """The caps the desired state asks for, worked out apart from the code under test: `groups` maps
    each spelling a tenant may use to its group (absent: refused); only nvme0n1 and sda resolve."""
    devs = {"nvme0n1": DEV, DEV: DEV, "sda": DEV2, "sda1": DEV2, DEV2: DEV2}

    def ok(v: Any) -> bool:
        return v is None or (
            not isinstance(v, bool) and isinstance(v, int | float) and (isinstance(v, int) or math.isfinite(v))
            and 1 <= v <= 2**64 - 2
        )  # fmt: skip

    out: dict[tuple[str, str], Caps] = {}
    for th in ths:
        exp = th.expires_at
        if not (isinstance(exp, float) and math.isfinite(exp)) or exp <= now:
            continue
        if th.cgroup not in groups or th.device not in devs or not ok(th.read_bps) or not ok(th.write_bps):
            continue
        c = Caps(
            None if th.read_bps is None else round(th.read_bps), None if th.write_bps is None else round(th.write_bps)
        )
        if c.empty:
            continue
        key = (groups[th.cgroup], devs[th.device])
        p = out.get(key, Caps())
        out[key] = Caps(tighter(p.rbps, c.rbps), tighter(p.wbps, c.wbps))
    return out


def tighter(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def on_host(root: Path, groups: set[str]) -> dict[tuple[str, str], Caps]:
    """The bps caps in the groups' files, but for the foreign device 7:0 (foreign_kept checks it)."""
    return {(g, d): c for g in sorted(groups) for d, c in io_caps(root, g).items() if d != "7:0"}


FOREIGN = "7:0 rbps=11 wbps=max riops=max wiops=max\n259:0 rbps=max wbps=max riops=99 wiops=max\n"


def foreign_kept(k: FakeKernel, root: Path, groups: set[str]) -> None:
    """Lines tailguard did not write: another device's cap and an iops limit on its own device."""
    for g in groups:
        lim = k.limits[Path(os.path.realpath(root / g))]
        assert lim["7:0"]["rbps"] == 11 and lim[DEV]["riops"] == 99, (g, lim)


def test_desired_state_flipping_between_extremes_every_tick(tmp_path: Path, kernel: FakeKernel) -> None:
    root, _ = host(tmp_path)
    kernel.devices.add("7:0")
    for g in ("a", "b"):
        kernel.seed(root / g, FOREIGN)
    r = reconciler(tmp_path, {"a": "a", "b": "b"})
    extremes = [
        (thr("a", wbps=1, rbps=2**64 - 2),),
        (thr("a", wbps=2**63 - 1, rbps=1, exp=1e300),),
        (),
        (thr("a", wbps=1.4, exp=NOW + 1e-6), thr("b", rbps=1e19, dev="sda1")),
        (thr("a", exp=NOW - 1e9), thr("b", wbps=2**64 + 5)),
    ]
    now = NOW
    for i in range(60):
        now += 0.5
        at(r, now)
        ths = extremes[i % 2] if i < 20 else extremes[i % len(extremes)]
        run(r, *ths)
        named = tuple(dataclasses.replace(t, cgroup=t.tenant) for t in ths)  # each tenant's group is its name
        assert on_host(root, {"a", "b"}) == expected(named, now, {"a": "a", "b": "b"}), (i, ths)
        foreign_kept(kernel, root, {"a", "b"})
    assert unbalanced(records(tmp_path)) == []
    assert run(r, *ths).ops == []  # the last state again: nothing to do


GROUPS = {"a": "a", "a/": "a", "a//": "a", "b": "b", "deep/x": "deep/x"}  # spelling -> group
REFUSED = ["../x", "/a", "link", "a\0b", "x\udcff", "y" * 300, "gone", "file", "a/./b"]
DEVICES = ["nvme0n1", DEV, "sda", "sda1", DEV2, "0:0", "4294967295:4294967295", "999:999", "nope", "/dev/null", "a\0"]
# The first 10 are usable (None: no cap that way), the rest are refused.
RATES: list[Any] = [None, None, 1, 1.4, 2, 1e6, 2**63 - 1, 2**64 - 2, 1e19, 17.5, 0, 0.5, 2**64 - 1, 2**64,
                    2**64 + 5, 1e300, math.nan, math.inf, -math.inf, -1, -1e300, True, 10**5000]  # fmt: skip


def test_seeded_random_extremes_with_crashes(tmp_path: Path, kernel: FakeKernel) -> None:
    """1000 ticks of random desired states drawn from the extremes, a crash and recovery now and
    then: after each tick the files hold what the model says, foreign lines stay, nothing lands
    outside the root; after each recovery no cap past its expiry is left; intents are balanced."""
    rnd = random.Random(20260)
    root, _ = host(tmp_path, groups=("a", "b", "deep/x"))
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    (root / "file").write_text("")
    kernel.devices.add("7:0")
    groups = {"a", "b", "deep/x"}
    for g in groups:
        kernel.seed(root / g, FOREIGN)
    tenants = {"a": "a", "b": "b"}
    r = reconciler(tmp_path, tenants, journal_max_bytes=32 << 10)
    now = NOW
    crashes = applied = 0

    def pick(good: list[Any], bad: list[Any]) -> Any:
        return rnd.choice(good if rnd.random() < 0.8 else bad)

    for i in range(1000):
        now += rnd.choice([0.0, 0.5, 30.0, 1e4])
        at(r, now)
        ths = []
        for _ in range(rnd.choice([0, 1, 2, 4])):
            # Each field a usable value most of the time, so that a fair share of the caps is applied.
            exp = pick([now + 1e-6, now + 60, now + 1e9, 1e300],
                       [NOW - 1e9, now - 1, now, 0.0, math.nan, math.inf, -math.inf, 10**400])  # fmt: skip
            cg = pick([None, "", *GROUPS], REFUSED)
            dev = pick(DEVICES[:5], DEVICES[5:])
            rb, wb = pick(RATES[:10], RATES[10:]), pick(RATES[:10], RATES[10:])
            ths.append(Throttle(rnd.choice(list(tenants)), dev, cg, rb, wb, exp))
        applied += len(run(r, *ths).applied)
        named = tuple(dataclasses.replace(t, cgroup=t.cgroup or tenants[t.tenant]) for t in ths)
        assert on_host(root, groups) == expected(named, now, GROUPS), (i, ths)
        foreign_kept(kernel, root, groups)
        if rnd.random() < 0.08:  # a crash: a new daemon recovers from the journal, a little later
            crashes += 1
            r.journal.close()
            now += rnd.choice([0.0, 1.0, 120.0, 1e9])
            r = reconciler(tmp_path, tenants, now=now, journal_max_bytes=32 << 10)
            s = asyncio.run(r.recover())
            assert s["skipped"] == 0 and not s["errors"], s
            left = on_host(root, groups)
            assert left == {k: o.caps for k, o in r.owned.items()}, (i, left)
            assert all(o.expires_at > now for o in r.owned.values())
            foreign_kept(kernel, root, groups)
    assert crashes >= 10
    assert applied >= 500  # (852 with this seed: the extremes did not crowd the caps out)
    assert unbalanced(records(tmp_path)) == []
    at(r, now + 2e300)  # everything expired: all lifted
    run(r)
    assert on_host(root, groups) == {} and not r.owned


def test_a_thousand_tenants_and_three_hundred_devices(tmp_path: Path, kernel: FakeKernel) -> None:
    n, m = 1000, 300
    root, sysr = host(tmp_path, groups=tuple(f"g{i}" for i in range(n)))
    for i in range(m):  # vd0..: 252:i in the fake sysfs and the fake kernel
        d = sysr / "devices" / f"vd{i}"
        d.mkdir()
        (d / "dev").write_text(f"252:{i}\n")
        (sysr / "dev" / "block" / f"252:{i}").symlink_to(d)
        kernel.devices.add(f"252:{i}")
    r = reconciler(tmp_path, {f"t{i}": f"g{i}" for i in range(n)})
    for v in (1, 2**64 - 2):
        run(r, *(thr(f"t{i}", wbps=v) for i in range(n)), *(thr("t0", wbps=v, dev=f"252:{i}") for i in range(m)))
        assert all(io_caps(root, f"g{i}") == {DEV: Caps(None, v)} for i in range(1, n))
        assert len(io_caps(root, "g0")) == m + 1
    run(r)
    assert not r.owned and all(limits_file(root, f"g{i}") == "" for i in range(n))
    assert unbalanced(records(tmp_path)) == []
