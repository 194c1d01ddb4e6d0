"""Checks of what a config names on this host's filesystem: files `run` reads at start (topology,
MQTT password and CA), latency files, launcher programs, the state directory.

Run by `check-config`, at `run` start and on SIGHUP (controller/config.py `load_checked`), not by
the model itself: a config is valid text on any machine, these say whether it works on this one.
The daemon runs as root; a file that this (non-root) user cannot read is a warning, not an error.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from controller.config_checks import Problem, tkey
from schema.files import open_regular, read_small_text

if TYPE_CHECKING:
    from controller.config import Config, TenantConfig


def _readable(key: str, path: str, what: str) -> Problem | None:
    p = Path(path)
    try:
        if not p.exists():
            return Problem(key, f"{what} {path} does not exist")
        if p.is_dir():
            return Problem(key, f"{what} {path} is a directory, not a file")
        os.close(open_regular(p))  # a FIFO or a device would hang or never end the read
    except PermissionError:
        if os.geteuid() == 0:
            return Problem(key, f"{what} {path} is not readable")
        return Problem(key, f"{what} {path} is not readable by this user (uid {os.geteuid()}); the daemon runs as root",
                       error=False)  # fmt: skip
    except OSError as e:
        return Problem(key, f"{what} {path}: {e.strerror or e}")
    return None


def read_mqtt_password(path: str) -> str:
    """The MQTT password from its file (its text, whitespace trimmed). OSError, with the reason as
    strerror, when it cannot be read or is not UTF-8 text: `run`, `doctor` and `check-config` say
    the same thing."""
    try:
        text = read_small_text(path).strip()
    except UnicodeDecodeError as e:
        raise OSError(errno.EINVAL, f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    if not text:  # a file truncated or never filled: the broker would be sent an empty password
        raise OSError(errno.EINVAL, "empty: no password in it", path)
    return text


def _ca_problem(key: str, path: str) -> Problem | None:
    """A CA file the TLS layer cannot load (not PEM certificates) fails every connect: say so now."""
    import ssl

    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as e:
        return Problem(key, f"CA file {path}: not PEM CA certificates ({e.reason or e})")
    except OSError:
        return None  # unreadable: _readable said so
    return None


def _unseen(key: str, path: object, e: OSError) -> Problem:
    """A path this process cannot look at: pathlib's exists() and is_dir() answer False only for
    a missing file; a directory this user may not search, a name too long (cgroup_root + cgroup)
    or an I/O error raise instead."""
    if isinstance(e, PermissionError) and os.geteuid() != 0:
        return Problem(key, f"{path} cannot be looked at by this user (uid {os.geteuid()}); the daemon runs as root",
                       error=False)  # fmt: skip
    return Problem(key, f"{path} cannot be looked at: {e.strerror or e}")


def _program(key: str, argv: list[str] | None, tenant: str) -> Problem | None:
    if not argv:
        return None
    prog = argv[0]
    if "{" in prog:
        return None  # a template: known only at move time
    if "/" in prog:
        if not os.path.isfile(prog) or not os.access(prog, os.X_OK):
            return Problem(key, f"{prog} is not an executable file (tenant {tenant}'s launcher cannot run)")
        return None
    if shutil.which(prog) is None:
        return Problem(
            key,
            f"{prog!r} is not on this PATH (tenant {tenant}); the daemon's PATH may differ: prefer an absolute path",
            error=False,
        )
    return None


def _topology(cfg: Config) -> list[Problem]:
    f = cfg.topology.topo_matrix_file
    if f is None:
        return []
    key = "topology.topo_matrix_file"
    if (p := _readable(key, f, "topology file")) is not None:
        return [p]
    from controller.signals.base import ParseError
    from controller.topology import parse_topo_matrix, topology_from_matrix
    from controller.topology_nccl import looks_like_xml, parse_nccl_topo_xml

    try:
        text = read_small_text(f, errors="replace")
    except OSError as e:
        return [Problem(key, f"topology file {f}: {e.strerror or e}")]
    try:
        xml = looks_like_xml(text)
        topo = parse_nccl_topo_xml(text, f) if xml else topology_from_matrix(parse_topo_matrix(text, f))
    except (ParseError, ValueError) as e:
        return [Problem(key, f"cannot be parsed: {e}")]
    n = len(topo.gpus)
    # GPUs are gpu<i> there, in PCI bus order as NVML numbers them: an index past them has no path
    return [
        Problem(
            f"gpus[{k}]({g.name}).index",
            f"{g.index} is not among the {n} GPU(s) of {f}: its PCIe path, and who shares it, are unknown",
            error=False,
        )
        for k, g in enumerate(cfg.gpus)
        if g.index >= n
    ]


def _state_dir(cfg: Config) -> list[Problem]:
    try:
        return _state_dir_problems(cfg)
    except OSError as e:
        return [_unseen("host.state_dir", cfg.host.state_dir, e)]


# The longest name the daemon writes in its state directory (a temporary status file: a dot, the
# name, a pid of up to 7 digits) and rotated journals, with room to spare; Linux's PATH_MAX.
_LONGEST_STATE_NAME = len(".status.json.4194304.tmp") + 8
_PATH_MAX = 4096


def _state_dir_problems(cfg: Config) -> list[Problem]:
    d = Path(cfg.host.state_dir)
    key = "host.state_dir"
    n = len(os.fsencode(str(d)))
    if n + 1 + _LONGEST_STATE_NAME >= _PATH_MAX:
        why = f"{n} bytes long: the files the daemon keeps there would pass the {_PATH_MAX}-byte path limit"
        return [Problem(key, why)]
    if d.exists() and not d.is_dir():
        return [Problem(key, f"{d} exists and is not a directory")]
    anc = d
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if anc.is_symlink() and not anc.exists():  # dangling, or a loop: exists() says False for both
        try:
            to = os.readlink(anc)
        except OSError as e:
            to = f"? ({e.strerror})"
        return [Problem(key, f"{d} cannot be created: {anc} is a symbolic link to {to}, which does not resolve")]
    if not anc.is_dir():
        return [Problem(key, f"{d} cannot be created: {anc} is not a directory")]
    top = Path(os.path.realpath(anc)).parts[1:2]
    if top in (("proc",), ("sys",)):  # writable to root by os.access, yet no directory can be made there
        return [
            Problem(key, f"{d} is under /{top[0]}, a kernel filesystem: the journal and status file cannot live there")
        ]
    if not os.access(anc, os.W_OK | os.X_OK):  # a read-only mount says so even to root
        verb = "is not writable" if anc == d else f"cannot be created ({anc} is not writable)"
        if os.geteuid() == 0:
            return [Problem(key, f"{d} {verb}: the journal and status file live there")]
        return [Problem(key, f"{d} {verb} by this user (uid {os.geteuid()}); the daemon runs as root", error=False)]
    return []


def _roots(cfg: Config) -> list[Problem]:
    out = []
    for key, path in (
        ("host.cgroup_root", cfg.host.cgroup_root),
        ("signals.proc_root", cfg.signals.proc_root),
        ("signals.sys_root", cfg.signals.sys_root),
    ):
        try:
            if not Path(path).is_dir():
                out.append(Problem(key, f"{path} is not a directory on this host"))
        except OSError as e:
            out.append(_unseen(key, path, e))
    return out


def _tenant_paths(cfg: Config) -> list[Problem]:
    """A tenant's cgroup and devices that this host does not have: warnings, since a service may
    start after tailguard, but a cap on either would fail until they exist."""
    out = []
    root = Path(cfg.host.cgroup_root)
    sysr = Path(cfg.signals.sys_root)
    for i, t in enumerate(cfg.tenants):
        try:
            out += _tenant_path_problems(i, t, root, sysr)
        except OSError as e:
            out.append(_unseen(tkey(i, t), f"tenant {t.name}'s cgroup or devices", e))
    return out


def _tenant_path_problems(i: int, t: TenantConfig, root: Path, sysr: Path) -> list[Problem]:
    out = []
    if t.cgroup and root.is_dir() and not (root / t.cgroup).is_dir():
        why = f"{root / t.cgroup} does not exist (yet): tenant {t.name}'s I/O is unseen and uncapped until it does"
        out.append(Problem(tkey(i, t, "cgroup"), why, error=False))
    if not (sysr / "class" / "block").is_dir():
        return out  # no sysfs to look in (a container without /sys): cannot tell
    for j, d in enumerate(t.devices):
        if ":" in d:
            found = (sysr / "dev" / "block" / d).exists()
        else:
            found = (sysr / "class" / "block" / d).exists() or (sysr / "class" / "net" / d).exists()
        if not found:
            why = f"no block device or NIC {d!r} on this host (tenant {t.name})"
            out.append(Problem(tkey(i, t, f"devices[{j}]"), why, error=False))
    return out


def file_problems(cfg: Config) -> list[Problem]:
    """Every problem with the files and programs `cfg` names, errors and warnings."""
    out: list[Problem] = []
    out += _roots(cfg)
    out += _topology(cfg)
    out += _state_dir(cfg)
    out += _tenant_paths(cfg)
    mq = cfg.exporters.mqtt
    if mq.password_file is not None:
        key = "exporters.mqtt.password_file"
        if (p := _readable(key, mq.password_file, "password file")) is None:
            try:
                read_mqtt_password(mq.password_file)
            except OSError as e:
                p = Problem(key, f"password file {mq.password_file}: {e.strerror or e}")
        if p is not None:
            out.append(p)
    if mq.tls_ca is not None:
        key = "exporters.mqtt.tls_ca"
        if (p := _readable(key, mq.tls_ca, "CA file") or _ca_problem(key, mq.tls_ca)) is not None:
            out.append(p)
    for i, t in enumerate(cfg.tenants):
        src = t.latency
        if src is not None and src.kind == "jsonl" and src.path:
            lat = Path(src.path)
            key = tkey(i, t, "latency.path")
            try:
                if not lat.parent.is_dir():
                    out.append(Problem(key, f"directory {lat.parent} does not exist (tenant {t.name}'s latency file)"))
                elif lat.exists():
                    if (p := _readable(key, src.path, "latency file")) is not None:
                        out.append(p)
                else:
                    out.append(Problem(key, f"{lat} does not exist yet: tenant {t.name}'s latency is unavailable"
                                            " until it does", error=False))  # fmt: skip
            except OSError as e:
                out.append(_unseen(key, lat, e))
        lc = t.launcher
        if lc is not None and lc.kind == "command":
            for name in ("command", "stop_command", "ready_command"):
                if (p := _program(tkey(i, t, f"launcher.{name}"), getattr(lc, name), t.name)) is not None:
                    out.append(p)
        elif lc is not None and (p := _program(tkey(i, t, "launcher.ready_command"), lc.ready_command, t.name)):
            out.append(p)
    return out
