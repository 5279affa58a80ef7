"""Unix socket listeners: modes, stale sockets reclaimed, live sockets and files never touched.

Socket paths live in short directories under /tmp: Linux allows 108 bytes, and
pytest's own temporary directories can be longer than that.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from anonticket.service.app import Service, start_service
from anonticket.service.unix_socket import SocketPathError, claim_socket_path
from conftest import make_config


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="at-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def running(tmp_path: Path, **env: Any) -> AsyncIterator[Service]:
    service = await start_service(make_config(tmp_path, **env))
    try:
        yield service
    finally:
        await service.aclose()


async def get_json(socket_path: str | Path, path: str) -> tuple[int, dict[str, Any]]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"http://localhost{path}") as resp:
            return resp.status, await resp.json()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def dead_socket(path: Path) -> None:
    """What a crash leaves behind: a socket file nobody listens on."""
    with closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as s:
        s.bind(str(path))
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def listening_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(8)
    return s


def still_accepts(server: socket.socket, path: Path) -> bool:
    server.settimeout(5)
    with closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as client:
        client.connect(str(path))
        conn, _ = server.accept()
        conn.close()
    return True


async def test_public_socket_default_mode_and_internal_0600(tmp_path: Path, sockdir: Path) -> None:
    public, internal = sockdir / "public.sock", sockdir / "internal.sock"
    umask = os.umask(0o022)
    os.umask(umask)
    async with running(tmp_path, API_UNIX_SOCKET=public, API_INTERNAL_UNIX_SOCKET=internal) as service:
        assert (service.public_address, service.internal_address) == (f"unix:{public}", f"unix:{internal}")
        assert (mode(public), mode(internal)) == (0o660, 0o600)
        assert await get_json(public, "/health/live") == (200, {"status": "ok"})
        status, body = await get_json(public, "/metrics")  # admin routes stay internal
        assert (status, body["error"]) == (404, "not_found")
        connector = aiohttp.UnixConnector(path=str(internal))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get("http://localhost/metrics") as resp:
                assert resp.status == 200
                assert "anonticket_redeem_requests_total" in await resp.text()
        assert os.umask(umask) == umask  # the restrictive umask did not leak into the process
    assert not public.exists() and not internal.exists()  # removed on a clean exit


@pytest.mark.parametrize("wanted", [0o600, 0o640, 0o666])
async def test_public_socket_mode_setting(tmp_path: Path, sockdir: Path, wanted: int) -> None:
    public = sockdir / "public.sock"
    async with running(tmp_path, API_UNIX_SOCKET=public, API_UNIX_SOCKET_MODE=f"{wanted:04o}"):
        assert mode(public) == wanted
    assert not public.exists()


async def test_a_stale_socket_is_replaced(tmp_path: Path, sockdir: Path) -> None:
    public, internal = sockdir / "public.sock", sockdir / "internal.sock"
    dead_socket(public)
    dead_socket(internal)
    with pytest.raises(ConnectionRefusedError):  # really dead
        with closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as probe:
            probe.connect(str(public))
    async with running(tmp_path, API_UNIX_SOCKET=public, API_INTERNAL_UNIX_SOCKET=internal):
        # (not compared by inode: the file system may hand the freed inode straight back)
        assert (mode(public), mode(internal)) == (0o660, 0o600)
        assert await get_json(public, "/health/live") == (200, {"status": "ok"})
        assert await get_json(internal, "/health/live") == (200, {"status": "ok"})


async def test_a_live_socket_is_refused_and_left_serving(tmp_path: Path, sockdir: Path) -> None:
    public = sockdir / "public.sock"
    with closing(listening_socket(public)) as other:
        inode = os.lstat(public).st_ino
        with pytest.raises(SocketPathError, match="in use"):
            await start_service(make_config(tmp_path, API_UNIX_SOCKET=public))
        assert os.lstat(public).st_ino == inode
        assert still_accepts(other, public)


async def test_a_second_instance_cannot_steal_the_socket(tmp_path: Path, sockdir: Path) -> None:
    public = sockdir / "public.sock"
    async with running(tmp_path / "a", API_UNIX_SOCKET=public):
        with pytest.raises(SocketPathError, match="in use"):
            await start_service(make_config(tmp_path / "b", API_UNIX_SOCKET=public))
        assert await get_json(public, "/health/live") == (200, {"status": "ok"})
    assert not public.exists()


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
async def test_something_else_at_the_path_is_refused_untouched(
    tmp_path: Path, sockdir: Path, kind: str
) -> None:
    public = sockdir / "public.sock"
    if kind == "file":
        public.write_text("operator's notes\n")
    elif kind == "directory":
        public.mkdir()
    else:  # even a link to a dead socket: we only ever remove sockets we can see directly
        dead_socket(sockdir / "target.sock")
        public.symlink_to(sockdir / "target.sock")
    with pytest.raises(SocketPathError, match="not a socket"):
        await start_service(make_config(tmp_path, API_UNIX_SOCKET=public))
    if kind == "file":
        assert public.read_text() == "operator's notes\n"
    elif kind == "directory":
        assert public.is_dir()
    else:
        assert public.is_symlink() and (sockdir / "target.sock").exists()


async def test_a_failed_start_removes_the_socket_it_made(tmp_path: Path, sockdir: Path) -> None:
    public, internal = sockdir / "public.sock", sockdir / "internal.sock"
    internal.write_text("")  # the second listener cannot start
    with pytest.raises(SocketPathError):
        await start_service(make_config(tmp_path, API_UNIX_SOCKET=public, API_INTERNAL_UNIX_SOCKET=internal))
    assert not public.exists()
    assert internal.read_text() == ""


async def test_exit_leaves_a_socket_that_replaced_ours_alone(tmp_path: Path, sockdir: Path) -> None:
    public = sockdir / "public.sock"
    async with running(tmp_path, API_UNIX_SOCKET=public):
        # an operator moved ours aside (rename keeps its inode alive, so the newcomer
        # cannot be handed the same number) and something else took the path
        public.rename(sockdir / "moved.sock")
        dead_socket(public)
        inode = os.lstat(public).st_ino
    assert os.lstat(public).st_ino == inode


def test_probe_of_a_path_that_does_not_exist(sockdir: Path) -> None:
    claim_socket_path(str(sockdir / "absent.sock"))  # nothing to do, no error
    assert not (sockdir / "absent.sock").exists()
