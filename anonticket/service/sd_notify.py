"""systemd readiness notification (``Type=notify``), standard library only.

The unit says ``Type=notify`` so systemd (and every unit ordered ``After=`` it) waits
until both listeners really accept connections, rather than until the process exists.
Outside systemd ``NOTIFY_SOCKET`` is unset and every call is a no-op, so the same code
runs in tests, in a shell and under the service manager.

A failed notification must never take the service down: the worst outcome is systemd
timing the start out, which it reports on its own. So send errors are swallowed and
logged once, at debug level (the message is ours; nothing secret is ever sent).
"""

from __future__ import annotations

import functools
import logging
import os
import socket

log = logging.getLogger("anonticket.sd_notify")  # named, not __name__: a module move keeps it


class Notifier:
    """Sends ``KEY=VALUE`` datagrams to one notify socket; remembers whether it has failed."""

    def __init__(self, address: str | None) -> None:
        self._address = _socket_address(address) if address else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, state: str) -> bool:
        """Send ``state`` (e.g. ``READY=1``); True when the datagram left, False otherwise."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode(), self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.debug("sd_notify: could not reach NOTIFY_SOCKET: %s", exc.strerror or exc)
            return False
        return True


def _socket_address(value: str) -> str | bytes:
    # A leading '@' names a socket in the abstract namespace: a NUL byte on the wire.
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def notify(state: str) -> bool:
    """Notify the service manager named by ``$NOTIFY_SOCKET``; a no-op when it is unset.

    The variable is read on each call, not at import time, so a test can point it at its
    own socket; one Notifier per address keeps "log the failure once" true across calls.
    """
    return _notifier(os.environ.get("NOTIFY_SOCKET") or None).notify(state)


@functools.cache
def _notifier(address: str | None) -> Notifier:
    return Notifier(address)
