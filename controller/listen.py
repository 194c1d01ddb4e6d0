"""Listen addresses (`HOST:PORT`, `[v6]:PORT`) and whether they stay on this host.

The metrics port also serves /status, which carries decision evidence (tenants, SLOs, layouts):
anything but loopback needs the operator's explicit `allow_remote = true` (or `--allow-remote`).
"""

from __future__ import annotations

import ipaddress
import re

from schema.jsontext import ascii_digits


def split_listen(listen: str) -> tuple[str, int]:
    """('127.0.0.1', 9433) from '127.0.0.1:9433'; ('::1', 9433) from '[::1]:9433'. ValueError if bad."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address needs brackets: [ADDR]:PORT, e.g. [::1]:9433")
    if not sep or not host or not ascii_digits(port) or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT with a port 1-65535, e.g. 127.0.0.1:9433")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    if listen.startswith("[") and not isinstance(addr, ipaddress.IPv6Address):
        raise ValueError(f"{host!r} in brackets is not an IPv6 address")
    if addr is None and not _HOST_NAME.match(host):
        # bind() would fail at start, after check-config said the file was fine
        raise ValueError(f"{host!r} is neither an IP address nor a host name (labels of letters, digits and '-')")
    return host, int(port)


# RFC 1123 host names: dot-separated labels of 1-63 letters, digits and '-', not starting or ending with '-'
_HOST_NAME = re.compile(r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; any other name or address may be reachable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it resolves to whatever the resolver says, so assume remote
