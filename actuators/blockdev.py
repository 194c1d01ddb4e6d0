"""Resolve a configured block device (name, /dev path, mount point or any path on a filesystem,
or MAJ:MIN) to the whole disk's MAJ:MIN through sysfs. cgroup I/O caps work per whole disk;
a partition's MAJ:MIN is refused by io.max, so partitions are mapped to their parent disk."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from schema.files import read_small_text
from schema.jsontext import shown

_MAJMIN = re.compile(r"^([0-9]{1,10}):([0-9]{1,10})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class DeviceError(ValueError):
    pass


def _read_dev(path: Path, what: str) -> str:
    """A sysfs `dev` attribute: MAJ:MIN, else a DeviceError naming the file and what it holds.
    read_text() raised a bare UnicodeDecodeError on a byte that is not UTF-8 and hung on a FIFO;
    a parent disk's `dev` was taken as MAJ:MIN whatever it said, and written into io.max."""
    try:
        majmin = read_small_text(path, 4096, errors="replace").strip()
    except OSError as e:
        raise DeviceError(f"device {what!r}: cannot read {path}: {e.strerror}") from None
    if not _MAJMIN.match(majmin):
        raise DeviceError(f"device {what!r}: {path} gives a bad MAJ:MIN {shown(majmin)}")
    return majmin


def _whole_disk(majmin: str, sys_root: Path, what: str) -> str:
    node = sys_root / "dev" / "block" / majmin
    if not node.exists():
        raise DeviceError(f"device {what!r}: no block device {majmin} in {sys_root}/dev/block")
    real = Path(os.path.realpath(node))
    if (real / "partition").exists():
        # sysfs puts a partition's directory inside its disk's directory.
        return _read_dev(real.parent / "dev", what)
    return majmin


def resolve(device: str, sys_root: str | os.PathLike[str] = "/sys") -> str:
    """MAJ:MIN of the whole disk behind `device`."""
    sysr = Path(sys_root)
    if not isinstance(device, str) or not device or any(c in device for c in "\0\n\r"):
        raise DeviceError(f"device {device!r}: must be a device name, a path or MAJ:MIN")
    m = _MAJMIN.match(device)
    if m:
        return _whole_disk(f"{int(m[1])}:{int(m[2])}", sysr, device)
    if device.startswith("/"):
        try:
            st = os.stat(device)
        except OSError as e:
            raise DeviceError(f"device {device!r}: {e.strerror}") from None
        dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
        major, minor = os.major(dev), os.minor(dev)
        if major == 0:
            raise DeviceError(
                f"device {device!r}: lies on a filesystem without a block device (overlay, tmpfs, ...): "
                "name the disk (e.g. nvme0n1) instead"
            )
        return _whole_disk(f"{major}:{minor}", sysr, device)
    if not _NAME.match(device):
        raise DeviceError(f"device {device!r}: not a block device name, path or MAJ:MIN")
    dev_file = sysr / "class" / "block" / device / "dev"
    if not os.path.isdir(dev_file.parent):  # catches every OSError, unlike Path.is_dir
        raise DeviceError(f"device {device!r}: no such block device in {sysr}/class/block")
    return _whole_disk(_read_dev(dev_file, device), sysr, device)
