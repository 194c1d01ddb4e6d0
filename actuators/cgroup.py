"""cgroup I/O caps: v2 `io.max` and the v1 `blkio.throttle.*_device` files.

Formats (kernel Documentation/admin-guide/cgroup-v2.rst "io.max" and cgroup-v1/blkio-controller.rst):
  v2 io.max:   one line per device with a limit: `8:16 rbps=2097152 wbps=max riops=max wiops=120`;
               write `MAJ:MIN key=value ...` to change only the keys given, `max` lifts a key.
  v1:          blkio.throttle.{read,write}_{bps,iops}_device, lines `8:16 1048576`; writing
               `8:16 0` removes the rule.
tailguard only manages the bps keys; iops limits someone else set are left alone.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from actuators.paths import confine
from schema.jsontext import fields, kernel_u64, shown, text_lines

Version = Literal["v1", "v2"]

# The kernel reads a cap as a u64 and keeps U64_MAX (2**64 - 1) as "max" (no cap); a larger number
# wraps modulo 2**64 (2**64 + 5 would be a cap of 5 bytes/s), so the highest real cap is 2**64 - 2.
MAX_BPS = 2**64 - 2
_MAJMIN = re.compile(r"[0-9]{1,10}:[0-9]{1,10}")  # what the line written starts with: no spaces, no keys


# io.max holds one line per device with a limit (~60 bytes): far below, a file that is not one
_READ_LIMIT = 1 << 20


class CgroupError(Exception):
    pass


class CgroupGone(CgroupError):
    """The tenant's group does not exist (any more)."""


@dataclass(frozen=True, slots=True, order=True)
class Caps:
    rbps: int | None = None  # None: no cap
    wbps: int | None = None

    @property
    def empty(self) -> bool:
        return self.rbps is None and self.wbps is None

    def __str__(self) -> str:
        return f"rbps={self.rbps or 'max'} wbps={self.wbps or 'max'}"


def detect(root: str | os.PathLike[str], version: str = "auto") -> tuple[Version, Path]:
    """(version, the directory that holds the I/O controller's groups)."""
    r = Path(root)
    if version in ("v2", "auto") and (r / "cgroup.controllers").exists():
        return "v2", r
    if version in ("v1", "auto"):
        for cand in (r, r / "blkio", r / "blkio,cpuacct", r / "cpuacct,blkio"):
            if (cand / "blkio.throttle.write_bps_device").exists():
                return "v1", cand
    if version == "v2":
        raise CgroupError(f"{r} is not a cgroup v2 hierarchy (no cgroup.controllers)")
    if version == "v1":
        raise CgroupError(f"no cgroup v1 blkio hierarchy at {r} or {r}/blkio")
    raise CgroupError(f"no cgroup v2 hierarchy and no v1 blkio controller found at {r}")


def _bps(v: str, source: str, n: int, key: str) -> int:
    """A limit the kernel printed (kernel_u64), else a ValueError naming the file, the line and the
    key (v1: the device)."""
    bps = kernel_u64(v)
    if bps is None:
        unit = "IOs/s" if key.endswith("iops") else "bytes/s"
        raise ValueError(f"{source}: line {n}: {shown(key)} is not a number of {unit} or max: {shown(v)}")
    return bps


def _parse_v2(text: str, source: str = "io.max") -> dict[str, Caps]:
    out: dict[str, Caps] = {}
    seen: set[str] = set()
    for n, line in enumerate(text_lines(text), 1):
        parts = fields(line)
        if not parts:
            continue
        # the kernel prints "MAJ:MIN key=value ..." for each device with a limit; another line was
        # read as no cap, or as the cap of a "device" that is no MAJ:MIN
        if not _MAJMIN.fullmatch(parts[0]) or len(parts) < 2 or not all("=" in p for p in parts[1:]):
            raise ValueError(f"{source}: line {n}: expected 'MAJ:MIN key=value ...', got {shown(line.strip())}")
        if parts[0] in seen:  # one line a device: "8:0 rbps=1" then "8:0 rbps=max" hid the read cap
            raise ValueError(f"{source}: line {n}: device {parts[0]} twice")
        seen.add(parts[0])
        kv: dict[str, int | None] = {}
        for p in parts[1:]:
            key, v = p.split("=", 1)
            # every value, the iops ones tailguard leaves alone too: a line of garbage there is no
            # kernel line, and its bps values are then no reading of a cap either
            if not key or key in kv:
                raise ValueError(f"{source}: line {n}: {'a key twice' if key else 'an empty key'}: {shown(p)}")
            kv[key] = None if v == "max" else _bps(v, source, n, key)
        caps = Caps(kv.get("rbps"), kv.get("wbps"))
        if not caps.empty:
            out[parts[0]] = caps
    return out


def _parse_v1(read_text: str, write_text: str, sources: tuple[str, str] = ("read", "write")) -> dict[str, Caps]:
    def table(text: str, source: str) -> dict[str, int]:
        t: dict[str, int] = {}
        seen: set[str] = set()
        for n, line in enumerate(text_lines(text), 1):
            parts = fields(line)
            if not parts:
                continue
            # the kernel prints one rule a line, "MAJ:MIN N"; any other line skipped made its cap
            # look absent (a write's read-back a mismatch, a cap in force unseen)
            if len(parts) != 2 or not _MAJMIN.fullmatch(parts[0]):
                raise ValueError(f"{source}: line {n}: expected 'MAJ:MIN bytes/s', got {shown(line.strip())}")
            if parts[0] in seen:  # the kernel keeps one rule a device
                raise ValueError(f"{source}: line {n}: device {parts[0]} twice")
            seen.add(parts[0])
            if (v := _bps(parts[1], source, n, parts[0])) > 0:  # 0: no rule (writing it lifts one)
                t[parts[0]] = v
        return t

    r, w = table(read_text, sources[0]), table(write_text, sources[1])
    return {d: Caps(r.get(d), w.get(d)) for d in sorted(set(r) | set(w))}


def _hint(err: int | None) -> str:
    # EACCES is the file-mode check: cgroup control files are root's (0644), so a process that is
    # not their owner may write them only with CAP_DAC_OVERRIDE (capabilities(7)). EPERM comes from
    # the kernel's own checks (e.g. a group outside the writer's cgroup namespace).
    if err == errno.EACCES:
        return (" (the file's owner and mode do not let tailguard write it: run it as root, or as the"
                " file's owner, or grant CAP_DAC_OVERRIDE, which writing a file one does not own needs)")  # fmt: skip
    if err == errno.EPERM:
        return " (operation not permitted: tailguard needs root in the host's cgroup namespace)"
    return ""


class CgroupIO:
    def __init__(self, root: str | os.PathLike[str], version: str = "auto") -> None:
        self.version, self.root = detect(root, version)

    def group(self, rel: str) -> Path:
        g = confine(self.root, rel)
        if not g.is_dir():
            raise CgroupGone(f"cgroup {rel!r} does not exist under {self.root}")
        return g

    def _read_file(self, path: Path, rel: str) -> str:
        try:
            # non-blocking and a regular file only: open() of a FIFO would wait for a writer for ever
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            if not path.parent.is_dir():
                raise CgroupGone(f"cgroup {rel!r} disappeared") from None
            raise CgroupError(f"{path}: missing (is the io controller enabled for {rel!r}?)") from None
        except OSError as e:
            raise CgroupError(f"{path}: cannot read: {e.strerror}") from None
        try:
            # os.fdopen() of a directory raised a bare IsADirectoryError naming the descriptor, and
            # left it open
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CgroupError(f"{path}: not a regular file (a cgroup control file is one)")
            data = os.read(fd, _READ_LIMIT + 1)
        except OSError as e:
            raise CgroupError(f"{path}: cannot read: {e.strerror}") from None
        finally:
            os.close(fd)
        if len(data) > _READ_LIMIT:
            raise CgroupError(f"{path}: larger than {_READ_LIMIT >> 10} KiB: not a cgroup control file")
        try:
            return data.decode()
        except UnicodeDecodeError as e:
            raise CgroupError(f"{path}: not UTF-8 text (byte {e.start})") from None

    def _write_file(self, path: Path, line: str, rel: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        except FileNotFoundError:
            if not path.parent.is_dir():
                raise CgroupGone(f"cgroup {rel!r} disappeared") from None
            raise CgroupError(f"{path}: missing (is the io controller enabled for {rel!r}?)") from None
        except OSError as e:
            raise CgroupError(f"{path}: cannot open for writing: {e.strerror}{_hint(e.errno)}") from None
        try:
            os.write(fd, line.encode())
        except OSError as e:
            if e.errno == errno.ENODEV and not path.parent.is_dir():
                raise CgroupGone(f"cgroup {rel!r} disappeared") from None
            raise CgroupError(f"{path}: kernel refused {line.strip()!r}: {e.strerror}{_hint(e.errno)}") from None
        finally:
            os.close(fd)

    def read(self, rel: str) -> dict[str, Caps]:
        """Caps currently set on the group, by MAJ:MIN (devices without a bps cap are omitted)."""
        g = self.group(rel)
        try:
            if self.version == "v2":
                return _parse_v2(self._read_file(g / "io.max", rel), str(g / "io.max"))
            rd, wr = g / "blkio.throttle.read_bps_device", g / "blkio.throttle.write_bps_device"
            return _parse_v1(self._read_file(rd, rel), self._read_file(wr, rel), (str(rd), str(wr)))
        except ValueError as e:
            raise CgroupError(f"cgroup {rel!r}: cannot parse the I/O limits: {e}") from None

    def write(self, rel: str, majmin: str, caps: Caps) -> Caps:
        """Set (or with empty caps, lift) the bps caps for one device and read them back."""
        # Checked before anything is written: the device and values go into the control file as text.
        if not isinstance(majmin, str) or not _MAJMIN.fullmatch(majmin):
            raise CgroupError(f"cgroup {rel!r}: device {shown(majmin)} is not MAJ:MIN")
        for key, v in (("rbps", caps.rbps), ("wbps", caps.wbps)):
            if v is not None and (type(v) is not int or not 1 <= v <= MAX_BPS):
                raise CgroupError(f"cgroup {rel!r}: {key} must be a whole number of 1 to {MAX_BPS} bytes/s, "
                                  f"got {shown(v)}")  # fmt: skip
        g = self.group(rel)
        if self.version == "v2":
            self._write_file(g / "io.max", f"{majmin} rbps={caps.rbps or 'max'} wbps={caps.wbps or 'max'}\n", rel)
        else:
            self._write_file(g / "blkio.throttle.read_bps_device", f"{majmin} {caps.rbps or 0}\n", rel)
            self._write_file(g / "blkio.throttle.write_bps_device", f"{majmin} {caps.wbps or 0}\n", rel)
        got = self.read(rel).get(majmin, Caps())
        if got != caps:
            raise CgroupError(f"cgroup {rel!r}: wrote {caps} for {majmin} but read back {got}")
        return got

    def lift(self, rel: str, majmin: str) -> None:
        self.write(rel, majmin, Caps())
