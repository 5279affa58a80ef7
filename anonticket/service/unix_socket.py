"""Safe handling of Unix socket paths: never steal a live socket, never clobber a file.

asyncio's ``create_unix_server`` silently removes any socket at the path, including
one another instance is still serving; so the path is checked here first.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from contextlib import contextmanager
from collections.abc import Iterator


class SocketPathError(Exception):
    """The path is taken by something we must not remove; the message names the path only."""


def claim_socket_path(path: str) -> None:
    """Remove a dead socket left by a crash; refuse a live one or any other kind of file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketPathError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketPathError(f"{path} cannot be checked ({exc.strerror})") from None
        os.unlink(path)  # nobody accepts on it: a stale socket from a crash
        return
    finally:
        probe.close()
    raise SocketPathError(f"{path} is in use by another process")


@contextmanager
def restrictive_umask(mode: int) -> Iterator[None]:
    """Create the socket already restricted, so it is never reachable with wider permissions."""
    previous = os.umask(0o777 & ~mode)
    try:
        yield
    finally:
        os.umask(previous)


def remove_socket(path: str, inode: int | None) -> None:
    """Remove our socket on exit, unless something else has replaced it meanwhile."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode) and (inode is None or st.st_ino == inode):
        os.unlink(path)


def socket_inode(path: str) -> int | None:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None
