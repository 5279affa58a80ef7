"""sd_notify against real AF_UNIX datagram sockets, the way systemd listens for them."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import struct
import tempfile
from collections.abc import Iterator

import pytest

from anonticket.service import sd_notify


@pytest.fixture
def short_dir() -> Iterator[str]:
    # sun_path holds 108 bytes; pytest's tmp_path can be longer than that.
    with tempfile.TemporaryDirectory(prefix="sdn-", dir="/tmp") as path:
        yield path


def _listener(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    # systemd reads the sender's credentials to enforce NotifyAccess=main.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def _receive(sock: socket.socket) -> tuple[bytes, int]:
    data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    pids = [struct.unpack("iII", cdata)[0] for level, kind, cdata in ancdata
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    assert len(pids) == 1
    return data, pids[0]


def test_path_socket_receives_ready_from_this_process(short_dir, monkeypatch):
    path = os.path.join(short_dir, "notify")
    with _listener(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sd_notify.notify("READY=1") is True
        assert sd_notify.notify("STOPPING=1") is True
        assert _receive(sock) == (b"READY=1", os.getpid())
        assert _receive(sock) == (b"STOPPING=1", os.getpid())


def test_abstract_socket_name_starting_with_at(monkeypatch):
    name = "anonticket-test-" + secrets.token_hex(8)
    with _listener(b"\0" + name.encode()) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify.notify("READY=1") is True
        assert _receive(sock) == (b"READY=1", os.getpid())


def test_unset_variable_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sd_notify.notify("READY=1") is False


def test_send_error_never_raises_and_is_logged_once_at_debug(short_dir, monkeypatch, caplog):
    missing = os.path.join(short_dir, "nobody-listens")
    monkeypatch.setenv("NOTIFY_SOCKET", missing)
    caplog.set_level(logging.DEBUG, logger="anonticket.sd_notify")
    assert sd_notify.notify("READY=1") is False
    assert sd_notify.notify("STOPPING=1") is False
    records = [r for r in caplog.records if r.name == "anonticket.sd_notify"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG


def test_socket_that_disappears_later_does_not_raise(short_dir, monkeypatch):
    path = os.path.join(short_dir, "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with _listener(path) as sock:
        assert sd_notify.notify("READY=1") is True
        assert _receive(sock)[0] == b"READY=1"
    os.unlink(path)
    assert sd_notify.notify("STOPPING=1") is False


def test_each_notifier_keeps_its_own_address(short_dir):
    first, second = os.path.join(short_dir, "a"), os.path.join(short_dir, "b")
    with _listener(first) as a, _listener(second) as b:
        assert sd_notify.Notifier(second).notify("READY=1") is True
        assert sd_notify.Notifier(first).notify("STATUS=x") is True
        assert _receive(b)[0] == b"READY=1"
        assert _receive(a)[0] == b"STATUS=x"
    assert sd_notify.Notifier(None).enabled is False
