"""The deployment files, each checked by the real tool that will read it in production.

systemd-analyze verifies and rates the three units; monero-wallet-rpc runs the wallet unit's
own command line; nginx runs deploy/nginx.conf in front of a Unix socket (a stand-in
app, then the real ``bin/anonticket serve``); tor verifies deploy/torrc; the dashboard's
queries are checked against the metrics the service really exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import proxy_helpers
from anonticket.domain.ids import Receipt
from anonticket.regtest import MERCHANT_KEYS
from page_helpers import parse_page
from proxy_helpers import env_file_values, free_port, wait_port

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "anonticket.service"
WALLET_UNIT = REPO / "systemd" / "monero-wallet-rpc.service"
LITESTREAM_UNIT = REPO / "systemd" / "anonticket-litestream.service"  # tests/deploy/test_litestream.py
CADDY_DROP_IN = proxy_helpers.CADDY_DROP_IN  # run by tests/deploy/test_gateway_proxies.py
DEBIAN_CADDY_UNIT = Path("/lib/systemd/system/caddy.service")
ENV_EXAMPLE = REPO / "systemd" / "anonticket.env.example"
NGINX_SITE = REPO / "deploy" / "nginx.conf"
TORRC = REPO / "deploy" / "torrc"
DASHBOARD = REPO / "deploy" / "grafana-dashboard.json"
OPERATIONS_DOC = REPO / "docs" / "operations.md"
PUBLIC_SOCKET = "/run/anonticket/public.sock"
# docs/operations.md records 0.9 (systemd 252); 4.9 is the ceiling of "OK".
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")
WALLET_RPC = shutil.which("monero-wallet-rpc")
needs_wallet_rpc = pytest.mark.skipif(
    WALLET_RPC is None, reason="monero-wallet-rpc is not installed (Debian package monero)")
needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("openssl") is None,
    reason="nginx and openssl are needed (Debian packages nginx, openssl)")


# ---------------------------------------------------------------- helpers


@functools.cache
def mdwe_prefix() -> list[str]:
    """A launcher that turns on the kernel's MDWE (what MemoryDenyWriteExecute= asks
    for; Linux >= 6.3), inherited across exec; empty where the kernel lacks it."""
    code = ("import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
            "sys.exit(3) if libc.prctl(65, 1, 0, 0, 0) else os.execvp(sys.argv[1], sys.argv[1:])")
    launcher = [sys.executable, "-c", code]
    probe = subprocess.run([*launcher, "true"], timeout=30)
    return launcher if probe.returncode == 0 else []


def exec_start(unit_text: str) -> list[str]:
    """ExecStart= split like systemd does (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", unit_text)
    line = re.search(r"^ExecStart=(.*)$", joined, re.M)
    assert line, "no ExecStart="
    return shlex.split(line.group(1))




async def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def _wallet_call(port: int, method: str, params: dict, login: tuple[str, str]) -> dict:
    digest = aiohttp.DigestAuthMiddleware(*login)
    async with aiohttp.ClientSession(middlewares=(digest,)) as session:
        payload = {"jsonrpc": "2.0", "id": "0", "method": method, "params": params}
        async with session.post(f"http://127.0.0.1:{port}/json_rpc", json=payload) as resp:
            reply = await resp.json()
    assert "error" not in reply, reply
    return reply["result"]


async def generate_watch_only(directory: Path, password: str, address: str, view_key: str) -> None:
    """docs/operations.md's wallet creation: a throw-away offline wallet-rpc, then
    generate_from_keys with the address and the private view key, no spend key."""
    login, port = ("setup", "setup-pw"), free_port()
    proc = subprocess.Popen(
        [WALLET_RPC, "--offline", "--non-interactive", "--wallet-dir", str(directory),
         "--rpc-bind-ip", "127.0.0.1", "--rpc-bind-port", str(port), "--no-dns",
         "--log-file", str(directory / "setup.log")],
        env={**os.environ, "RPC_LOGIN": ":".join(login)}, stdout=subprocess.DEVNULL)
    try:
        await asyncio.to_thread(wait_port, port, proc, 60, "monero-wallet-rpc")
        made = await _wallet_call(port, "generate_from_keys", {
            "filename": "anonticket", "address": address, "viewkey": view_key,
            "password": password, "restore_height": 0}, login)
        assert made["address"] == address
        assert "Watch-only" in made["info"]
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 60)


def start_wallet_unit(unit_text: str, directory: Path, rpc_login: str, password_file: str,
                      extra: list[str], daemon: str = "127.0.0.1:9") -> tuple[subprocess.Popen, int]:
    """The unit's own ExecStart with its paths moved into ``directory``."""
    (directory / "creds").mkdir()
    (directory / "creds" / "wallet-password").write_text(password_file)
    port = free_port()
    argv = [arg.replace("/var/lib/monero-wallet-rpc", str(directory))
               .replace("/var/log/monero-wallet-rpc", str(directory / "log"))
               .replace("%d", str(directory / "creds"))
               .replace("${MONERO_DAEMON_ADDRESS}", daemon)
            for arg in exec_start(unit_text)]
    argv[argv.index("--rpc-bind-port") + 1] = str(port)
    (directory / "log").mkdir()
    with open(directory / "stdout.log", "wb") as out:  # what journald would get
        proc = subprocess.Popen([*mdwe_prefix(), *argv, *extra], stdout=out, stderr=subprocess.STDOUT,
                                env={"PATH": os.environ["PATH"], "RPC_LOGIN": rpc_login})
    wait_port(port, proc, 60, "monero-wallet-rpc")
    return proc, port


@contextlib.contextmanager
def nginx_running(site_text: str, directory: Path, upstream: Path) -> Iterator[str]:
    """Debian's nginx with the site file, moved to a free port and ``directory``."""
    port = free_port()
    replacements = {
        "listen 443 ssl http2;": f"listen 127.0.0.1:{port} ssl http2;",
        "listen [::]:443 ssl http2;": "",
        "/etc/letsencrypt/live/tickets.example.org/": f"{directory}/tls/",
        "/var/log/nginx/": f"{directory}/log/",
        f"unix:{PUBLIC_SOCKET}": f"unix:{upstream}",
    }
    for old, new in replacements.items():
        assert old in site_text, old
        site_text = site_text.replace(old, new)
    with proxy_helpers.nginx_running(directory, site_text, port, workers=1):
        yield f"https://127.0.0.1:{port}"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A short, world-traversable directory: nginx workers run as www-data, and
    sun_path holds 108 bytes (pytest's tmp_path is 0700 and can be long)."""
    path = Path(tempfile.mkdtemp(prefix="atd-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- systemd units


def _verifiable_copy(unit: Path, directory: Path) -> Path:
    # verify insists that ExecStart's binary exists; /opt/anonticket is not installed here.
    text = unit.read_text()
    binary = exec_start(text)[0]
    if not os.access(binary, os.X_OK):
        text = text.replace(f"ExecStart={binary}", "ExecStart=/bin/true", 1)
    copy = directory / unit.name
    copy.write_text(text)
    return copy


@needs_analyze
@pytest.mark.parametrize("unit", [UNIT, WALLET_UNIT, LITESTREAM_UNIT], ids=lambda p: p.name)
def test_unit_passes_systemd_analyze_verify(unit, tmp_path):
    copy = _verifiable_copy(unit, tmp_path)
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(copy)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # An unknown or misspelt directive is only a warning that names the file.
    complaints = [line for line in result.stderr.splitlines() if copy.name in line]
    assert complaints == []


def _systemd_version() -> int:
    first = subprocess.run([SYSTEMD_ANALYZE, "--version"], capture_output=True, text=True,
                           timeout=30).stdout.split()
    return int(first[1])


@needs_analyze
@pytest.mark.parametrize("unit", [UNIT, WALLET_UNIT, LITESTREAM_UNIT], ids=lambda p: p.name)
def test_unit_security_exposure_is_low(unit, tmp_path):
    if _systemd_version() < 250:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    copy = _verifiable_copy(unit, tmp_path)
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(copy)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert found, result.stdout[-2000:]
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout
    assert found.group(2) in ("OK", "SAFE")


@needs_analyze
def test_the_caddy_drop_in_verifies_on_debians_caddy_unit(tmp_path):
    """The drop-in is read with the unit it amends (Debian's, where installed), and a
    misspelt key in it would be reported: so a clean verify means every line applies."""
    unit = (DEBIAN_CADDY_UNIT.read_text() if DEBIAN_CADDY_UNIT.exists() else
            "[Unit]\nDescription=Caddy\n[Service]\nType=notify\nUser=caddy\n"
            "ExecStart=/usr/bin/caddy run --environ --config /etc/caddy/Caddyfile\n")
    drop_in = CADDY_DROP_IN.read_text()
    if not os.access("/usr/bin/caddy", os.X_OK):  # verify insists that ExecStart's binary exists
        unit, drop_in = (text.replace("/usr/bin/caddy ", "/bin/true ") for text in (unit, drop_in))
    (tmp_path / "caddy.service").write_text(unit)
    (tmp_path / "caddy.service.d").mkdir()
    copy = tmp_path / "caddy.service.d" / CADDY_DROP_IN.name

    def complaints(text: str) -> list[str]:
        copy.write_text(text)
        result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(tmp_path / "caddy.service")],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return [line for line in result.stderr.splitlines() if copy.name in line]

    assert complaints(drop_in) == []
    assert complaints(drop_in.replace("EnvironmentFile=", "EnvironmentFle="))  # it is read
    assert re.search(r"^EnvironmentFile=/etc/caddy/anonticket-gateway.env$", drop_in, re.M)
    exec_starts = re.findall(r"^ExecStart=(.*)$", drop_in, re.M)
    assert exec_starts[0] == "" and "--environ" not in exec_starts[-1]


def test_no_shipped_file_puts_a_secret_in_an_environment_line():
    """``Environment=`` is world-readable over D-Bus (systemctl show): secrets go in a
    0600 EnvironmentFile= (anonticket.env, the Caddy drop-in's file)."""
    files = [REPO / "README.md", *(REPO / "docs").glob("*.md"),
             *(path for folder in ("deploy", "systemd") for path in (REPO / folder).rglob("*")
               if path.is_file())]
    for path in files:
        found = re.findall(r"Environment=\S*(?:TOKEN|PASSWORD|SECRET|KEY)", path.read_text(), re.I)
        assert found == [], path


def test_service_unit_has_the_runtime_contract():
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "User=anonticket", "UMask=0077",
                 "StateDirectory=anonticket", "RuntimeDirectory=anonticket",
                 "EnvironmentFile=/etc/anonticket/anonticket.env",
                 "MemoryDenyWriteExecute=yes", "ProtectSystem=strict"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert exec_start(text) == ["/opt/anonticket/bin/anonticket", "serve"]


def test_files_agree_on_paths_and_ports():
    env = env_file_values(ENV_EXAMPLE.read_text())
    assert env["API_UNIX_SOCKET"] == PUBLIC_SOCKET
    assert f"server unix:{PUBLIC_SOCKET};" in NGINX_SITE.read_text()
    assert re.search(rf"^HiddenServicePort 80 unix:{PUBLIC_SOCKET}$", TORRC.read_text(), re.M)
    assert env["DATABASE_URL"].startswith("/var/lib/anonticket/")
    wallet_args = exec_start(WALLET_UNIT.read_text())
    port = wallet_args[wallet_args.index("--rpc-bind-port") + 1]
    assert env["MONERO_RPC_URL"] == f"http://127.0.0.1:{port}"


def test_env_example_is_a_valid_configuration():
    from anonticket.config import SETTINGS, Config

    env = env_file_values(ENV_EXAMPLE.read_text())
    assert set(env) <= {s.name for s in SETTINGS}
    config = Config.from_env(env)
    assert config.api_unix_socket_mode == 0o666
    # the documented check, as the operator runs it
    result = subprocess.run([str(REPO / "bin" / "anonticket"), "config", "--check"],
                            env={"PATH": os.environ["PATH"], **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "configuration ok" in result.stdout
    assert env["API_INTERNAL_TOKEN"] not in result.stdout


# ---------------------------------------------------------------- wallet-rpc unit

WALLET_PASSWORD = "hunter2"


@pytest.fixture(scope="module")
def watch_only_wallet(tmp_path_factory) -> tuple[Path, str]:
    """One watch-only wallet of the regtest merchant's fixed test keys (opening or
    creating a wallet costs seconds, so the tests copy this one)."""
    from anonticket.regtest.network import MERCHANT_KEYS

    directory = tmp_path_factory.mktemp("wallet")
    asyncio.run(generate_watch_only(directory, WALLET_PASSWORD, MERCHANT_KEYS.address,
                                    MERCHANT_KEYS.view_key))
    return directory, MERCHANT_KEYS.address


def _copy_wallet(wallet: tuple[Path, str], directory: Path) -> str:
    for name in ("anonticket", "anonticket.keys"):
        shutil.copy(wallet[0] / name, directory / name)
    return wallet[1]


@needs_wallet_rpc
async def test_wallet_unit_command_serves_the_watch_only_wallet_behind_digest(
        open_dir, watch_only_wallet):
    address = _copy_wallet(watch_only_wallet, open_dir)
    # a trailing newline, as `echo > file` leaves it, must not become part of the password
    proc, port = start_wallet_unit(WALLET_UNIT.read_text(), open_dir, "anonticket:s3cret",
                                   WALLET_PASSWORD + "\n", ["--offline"])
    try:
        url = f"http://127.0.0.1:{port}/json_rpc"
        call = {"jsonrpc": "2.0", "id": "0", "method": "get_address"}
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.post(url, json=call) as resp:
                assert resp.status == 401
        digest = aiohttp.DigestAuthMiddleware("anonticket", "s3cret")
        async with aiohttp.ClientSession(middlewares=(digest,)) as session:
            async with session.post(url, json=call) as resp:
                assert resp.status == 200
                assert (await resp.json())["result"]["address"] == address
            spend = {**call, "method": "query_key", "params": {"key_type": "spend_key"}}
            async with session.post(url, json=spend) as resp:
                assert "watch-only" in (await resp.json())["error"]["message"]
        # The login travels in the environment: other users can read cmdline, not environ.
        assert b"s3cret" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


@needs_wallet_rpc
@pytest.mark.regtest
async def test_wallet_unit_keeps_txids_out_of_its_log(open_dir, watch_only_wallet,
                                                      monero_regtest_view_only):
    net = monero_regtest_view_only
    assert _copy_wallet(watch_only_wallet, open_dir) == net.merchant_address
    proc, port = start_wallet_unit(WALLET_UNIT.read_text(), open_dir, "u:p", WALLET_PASSWORD, [],
                                   daemon=net.daemon_url.removeprefix("http://"))
    url = f"http://127.0.0.1:{port}/json_rpc"
    try:
        paid = await asyncio.to_thread(net.pay, secrets.token_hex(8), 10**12, mine=2)
        async with aiohttp.ClientSession(middlewares=(aiohttp.DigestAuthMiddleware("u", "p"),)) as rpc:
            async def seen() -> bool:
                async with rpc.post(url, json={"jsonrpc": "2.0", "id": "0", "method": "refresh"}):
                    pass
                transfers = {"jsonrpc": "2.0", "id": "0", "method": "get_transfers",
                             "params": {"in": True}}
                async with rpc.post(url, json=transfers) as resp:
                    return paid["txid"] in json.dumps(await resp.json())
            await wait_until(seen, 60, "the watch-only wallet to see the payment")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 60)
    for path in (open_dir / "log" / "wallet-rpc.log", open_dir / "stdout.log"):
        text = path.read_text()
        assert text, path
        assert paid["txid"] not in text, path


# ---------------------------------------------------------------- nginx


def _stand_in_app(seen: list[dict]) -> web.Application:
    async def record(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append({"path": request.path, "headers": dict(request.headers), "body": body})
        return web.json_response({"path": request.path, "bytes": len(body)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return app


async def _serve_unix(app: web.Application, path: Path) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    path.chmod(0o666)  # API_UNIX_SOCKET_MODE in systemd/anonticket.env.example
    return runner


@needs_nginx
async def test_nginx_site_in_front_of_a_stand_in_app(open_dir):
    seen: list[dict] = []
    sock = open_dir / "public.sock"
    runner = await _serve_unix(_stand_in_app(seen), sock)
    token = os.urandom(32).hex()
    try:
        with nginx_running(NGINX_SITE.read_text(), open_dir, sock) as base:
            async with aiohttp.ClientSession() as http:
                async def get(method: str, path: str, **kw) -> tuple[int, dict, dict]:
                    async with http.request(method, base + path, ssl=False, **kw) as resp:
                        return resp.status, await resp.json(content_type=None), dict(resp.headers)

                if os.geteuid() == 0:  # workers run as www-data: the socket's mode decides
                    sock.chmod(0o660)  # (first, before nginx keeps an upstream connection)
                    status, body, _ = await get("GET", "/health/live")
                    assert (status, body["error"]) == (503, "unavailable")
                    sock.chmod(0o666)
                status, body, headers = await get(
                    "POST", "/api/v1/redeem", json={"pid": "0123456789abcdef"},
                    headers={"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9",
                             "Cookie": "a=b", "Authorization": "Bearer x"})
                assert (status, body["path"]) == (200, "/api/v1/redeem")
                assert headers["Cache-Control"] == "no-store"
                forwarded = {k.lower() for k in seen[-1]["headers"]}
                assert not forwarded & {"x-forwarded-for", "x-real-ip", "cookie", "authorization"}
                assert (await get("GET", "/health/live"))[0] == 200
                assert (await get("GET", f"/api/v1/token/{token}"))[0] == 200
                proxied = len(seen)
                status, body, _ = await get("POST", "/api/v1/redeem", data=b"x" * 5120)
                assert (status, body["error"]) == (413, "body_too_large")
                for path in ("/metrics", f"/api/v1/token/{token}/revoke", "/api/v1/stats"):
                    status, body, _ = await get("POST" if "revoke" in path else "GET", path)
                    assert (status, body["error"]) == (404, "not_found"), path
                assert len(seen) == proxied  # none of those reached the app

                await runner.cleanup()  # upstream down: nginx answers, and logs no token
                other = os.urandom(32).hex()
                status, body, _ = await get("GET", f"/api/v1/token/{other}")
                assert (status, body["error"]) == (503, "unavailable")
        access = (open_dir / "log" / "anonticket.access.log").read_text()
        assert len(access.splitlines()) >= 8
        for path in (open_dir / "log").iterdir():
            text = path.read_text()
            for secret in (token, other, "0123456789abcdef", "/api/", "127.0.0.1"):
                assert secret not in text, (path.name, secret)
    finally:
        await runner.cleanup()


@needs_nginx
async def test_nginx_site_in_front_of_the_real_service(open_dir):
    sock = open_dir / "public.sock"
    notify = open_dir / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    listener.bind(str(notify))
    listener.settimeout(30)
    env = {
        "PATH": os.environ["PATH"], "NOTIFY_SOCKET": str(notify),
        "DATABASE_URL": str(open_dir / "db"), "API_UNIX_SOCKET": str(sock),
        "API_UNIX_SOCKET_MODE": "0666", "API_INTERNAL_BIND_ADDRESS": f"127.0.0.1:{free_port()}",
        "MONITOR_ENABLED": "false", "API_ACCESS_LOG": "false", "MERCHANT_ADDRESS": MERCHANT_KEYS.address,
    }
    # MemoryDenyWriteExecute=yes, applied the way the kernel offers it without systemd.
    with open(open_dir / "service.log", "wb") as log:
        service = subprocess.Popen([*mdwe_prefix(), str(REPO / "bin" / "anonticket"), "serve"],
                                   env=env, stderr=log)

    async def datagram() -> bytes:
        """The next notification; NotifyAccess=main drops any not sent by the main PID."""
        data, ancdata, _, _ = await asyncio.to_thread(listener.recvmsg, 4096, socket.CMSG_SPACE(12))
        senders = [struct.unpack("iII", cdata)[0] for level, kind, cdata in ancdata
                   if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)]
        assert senders == [service.pid]
        return data

    try:
        assert await datagram() == b"READY=1"
        assert sock.exists()
        with nginx_running(NGINX_SITE.read_text(), open_dir, sock) as base:
            async with aiohttp.ClientSession() as http:
                async with http.post(base + "/api/v1/redeem", json={"pid": os.urandom(8).hex()},
                                     ssl=False) as resp:
                    assert resp.status == 404
                    assert (await resp.json())["error"] == "payment_not_found"
                async with http.get(base + "/health/live", ssl=False) as resp:
                    assert resp.status == 200
                async with http.post(base + "/api/v1/redeem", data=b"{" * 5120, ssl=False) as resp:
                    assert resp.status == 413
                # the checkout through nginx: its own headers, each once, and no body in a log
                async with http.get(base + "/pay", ssl=False) as resp:
                    assert resp.status == 200 and resp.content_type == "text/html"
                    for name in ("Content-Security-Policy", "Cache-Control", "Referrer-Policy",
                                 "X-Content-Type-Options", "X-Frame-Options", "Strict-Transport-Security"):
                        assert len(resp.headers.getall(name, [])) == 1, name
                    assert resp.headers["Cache-Control"] == "no-store"
                async with http.post(base + "/pay", data={"offer": "10000000000"}, ssl=False) as resp:
                    made = parse_page(await resp.text())
                receipt, address = made.field("receipt"), made.field("address")
                assert receipt and address
                async with http.post(base + "/pay/status", data={"receipt": receipt},
                                     ssl=False) as resp:
                    assert resp.status == 200
                    assert parse_page(await resp.text()).h1 == "Payment not seen yet"
                async with http.get(base + f"/pay/{receipt}", ssl=False) as resp:
                    assert resp.status == 404  # nginx's own: only the three pages are passed
                # credentials: the key document keeps the service's cache headers, and the
                # issue route (only it) receives the customer's Authorization
                async with http.get(base + "/.well-known/anonticket-credential-keys",
                                    ssl=False) as resp:
                    assert resp.status == 200 and len((await resp.json())["keys"]) == 1
                    assert resp.headers.getall("Cache-Control") == ["public, max-age=150"]
                    assert "ETag" in resp.headers
                async with http.post(base + "/api/v1/credential", ssl=False,
                                     headers={"Authorization": "Bearer " + "ab" * 32}) as resp:
                    assert (resp.status, (await resp.json())["error"]) == (401, "token_not_found")
                    assert resp.headers.getall("Cache-Control") == ["no-store"]
        for path in (open_dir / "log").iterdir():
            text = path.read_text()
            for secret in (receipt, Receipt.parse(receipt).hex(), address, "/pay"):
                assert secret not in text, path.name
        service.send_signal(signal.SIGTERM)
        assert await datagram() == b"STOPPING=1"
        assert await asyncio.to_thread(service.wait, 30) == 0
        assert not sock.exists()
        # docs/operations.md's backup and its check, on the database the service wrote
        backup = open_dir / "backup.db"
        for argv, extra in ((["db", "backup", str(backup)], {}),
                            (["db", "check"], {"DATABASE_URL": str(backup)})):
            done = subprocess.run([str(REPO / "bin" / "anonticket"), *argv], env={**env, **extra},
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        assert backup.stat().st_mode & 0o777 == 0o600
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(10)
        listener.close()


# ---------------------------------------------------------------- tor


@pytest.mark.skipif(shutil.which("tor") is None, reason="tor is not installed (Debian package tor)")
def test_torrc_verifies_with_pow_defences(open_dir):
    text = TORRC.read_text()
    assert re.search(r"^HiddenServicePoWDefensesEnabled 1$", text, re.M)
    copy = open_dir / "torrc"
    copy.write_text(text.replace("/var/lib/tor/anonticket/", f"{open_dir}/hs/")
                        .replace(PUBLIC_SOCKET, f"{open_dir}/public.sock"))
    result = subprocess.run(["tor", "--verify-config", "--defaults-torrc", "/dev/null",
                             "-f", str(copy), "--DataDirectory", str(open_dir / "data")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    assert "Configuration was valid" in result.stdout
    warnings = [line for line in result.stdout.splitlines()
                if "[warn]" in line and "as root" not in line]
    assert warnings == []


# ---------------------------------------------------------------- Grafana


def _exported_series() -> dict[str, set[tuple[str, str]]]:
    """Sample name -> (label, value) pairs, as Prometheus stores them (_total, _bucket…)."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from anonticket.runtime.metrics import Metrics

    exported: dict[str, set[tuple[str, str]]] = {}
    for family in text_string_to_metric_families(generate_latest(Metrics().registry).decode()):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels.items())
    return exported


def _check_queries(exprs: list[str]) -> set[str]:
    """Every series, label matcher and ``by`` label in ``exprs`` exists; returns the names."""
    exported = _exported_series()
    used: set[str] = set()
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr
        labels = {"le"}
        for name, matchers in re.findall(r"\b(anonticket_\w+)(\{[^}]*\})?", expr):
            assert name in exported, (name, expr)
            used.add(name)
            labels |= {label for label, _ in exported[name]}
            for label, value in re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers):
                assert (label, value) in exported[name], (name, label, value)
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                assert label in labels, (label, expr)
    return used


def test_dashboard_queries_name_exported_series():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    used = _check_queries([t["expr"] for p in panels for t in p["targets"]])
    wanted = {"anonticket_redeem_requests_total", "anonticket_request_duration_seconds_bucket",
              "anonticket_monitor_wallet_height", "anonticket_monitor_scanned_height",
              "anonticket_monitor_last_success_timestamp_seconds",
              "anonticket_monitor_polls_total", "anonticket_monitor_transfers_total",
              "anonticket_negative_cache_hits_total", "anonticket_webhook_queue_age_seconds",
              "anonticket_webhook_delivered_total", "anonticket_webhook_failed_attempts_total",
              "anonticket_webhook_dead_total"}
    assert wanted <= used


def test_documented_alerts_name_exported_series():
    blocks = re.findall(r"```promql\n(.*?)```", OPERATIONS_DOC.read_text(), re.S)
    exprs = [line for block in blocks for line in block.splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(exprs) >= 5
    assert len(_check_queries(exprs)) >= 5
