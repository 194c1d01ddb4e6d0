"""sd_notify(3) without python-systemd: one datagram to $NOTIFY_SOCKET per message.

The protocol (systemd's sd_notify man page): newline-separated KEY=VALUE assignments sent as one
datagram to the AF_UNIX socket named by $NOTIFY_SOCKET; a leading '@' means the abstract
namespace. Without the variable (not started by systemd) every call is a no-op. Errors are
swallowed and counted: a missing notification must never stop the control loop.
"""

from __future__ import annotations

import os
import socket

from schema.jsontext import ascii_digits


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        addr = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.address: str | None = addr or None
        self.errors_total = 0
        self.sent_total = 0
        self._sock: socket.socket | None = None
        # systemd passes the watchdog interval in microseconds; we ping at half of it.
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        self.watchdog_s: float | None = int(usec) / 1e6 if ascii_digits(usec) and int(usec) > 0 and ours else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        msg = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the loop on a full receiver queue: drop and count instead.
                self._sock.setblocking(False)
            self._sock.sendto(msg, target)
        except OSError:
            self.errors_total += 1
            return False
        self.sent_total += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *((f"STATUS={status}",) if status else ()))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
