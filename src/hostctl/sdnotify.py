"""systemd's notification protocol (sd_notify(3)), with the standard library only.

A service with ``Type=notify`` gets ``NOTIFY_SOCKET``: a datagram socket, a path or an
abstract name written ``@name``. Each message is one datagram of ``KEY=VALUE`` lines:
``READY=1`` (started), ``WATCHDOG=1`` (alive), ``STOPPING=1`` (shutting down),
``STATUS=text`` (a line ``systemctl status`` shows). ``WATCHDOG_USEC`` asks for a
``WATCHDOG=1`` at least that often (send at half of it), and ``WATCHDOG_PID``, when set,
says which process it asks it of: another pid means the watchdog is not this process's.

Without ``NOTIFY_SOCKET`` nothing is sent and nothing is opened. The variables are taken
out of the environment when read (sd_notify's ``unset_environment``), so the processes
this one starts (tasks) neither inherit them nor speak for it. A failed send is never an
error of the caller: a notification is advice, and systemd's own timeouts say the rest.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from contextlib import suppress

KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends notifications to the socket it was given (None: sends nothing)."""

    def __init__(self, address: str | None, watchdog: float | None = None) -> None:
        self.address = address
        #: seconds between two WATCHDOG=1 (half of WATCHDOG_USEC), None: no watchdog
        self.watchdog_every = watchdog / 2 if watchdog else None
        self._sock: socket.socket | None = None
        self._status = ""

    @classmethod
    def from_environment(cls, env: MutableMapping[str, str] | None = None) -> Notifier:
        """What the environment asks for, the variables removed from it."""
        env = os.environ if env is None else env
        found = {k: env.pop(k, "") for k in KEYS}
        address = found["NOTIFY_SOCKET"] or None
        if address is not None and not address.startswith(("/", "@")):
            address = None  # a vsock or some other family: not ours to speak
        watchdog: float | None = None
        with suppress(ValueError):
            usec = int(found["WATCHDOG_USEC"] or "0")
            pid = int(found["WATCHDOG_PID"] or os.getpid())
            if usec > 0 and pid == os.getpid():
                watchdog = usec / 1e6
        return cls(address, watchdog if address else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """One datagram of ``lines``; whether it went out."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX,
                                           socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode("utf-8", "replace") + b"\n", target)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> None:
        self._status = status
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def ping(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """STATUS=text, when it is not what was last said."""
        if text != self._status and self.send(f"STATUS={text}"):
            self._status = text

    def stopping(self, status: str = "") -> None:
        self._status = status or self._status
        self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
