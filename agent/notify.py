"""The sd_notify protocol, spoken directly (no libsystemd on a Pi image is needed).

systemd sets ``NOTIFY_SOCKET`` for ``Type=notify`` services and ``WATCHDOG_USEC`` when the unit
has ``WatchdogSec=``. Outside systemd both are unset and every call here does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends ``READY=1``, ``STATUS=…``, ``WATCHDOG=1`` and ``STOPPING=1`` datagrams."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # A leading '@' names a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, *fields: str) -> None:
        """Send ``fields`` (e.g. ``"READY=1"``) as one datagram; a failure is logged, never raised:
        supervision must not take the agent down."""
        if self._socket is None:
            return
        try:
            with self._lock:
                self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self._address.lstrip("\0"), exc)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> None:
        self.notify("STOPPING=1", f"STATUS={status}")


class Watchdog:
    """Pings systemd's watchdog from the loop that must stay alive.

    The inference loop calls :meth:`beat` on every pass (with or without a frame); a ping goes
    out at most every half watchdog period. If the loop hangs, pings stop and systemd restarts
    the service after ``WatchdogSec``.
    """

    def __init__(self, notifier: SystemdNotifier):
        self._notifier = notifier
        self._period = notifier.watchdog_s / 2 if notifier.watchdog_s else None
        self._last = float("-inf")
        self.pings = 0

    def beat(self) -> None:
        if self._period is None:
            return
        now = time.monotonic()
        if now - self._last >= self._period:
            self._last = now
            self.pings += 1
            self._notifier.notify("WATCHDOG=1")
