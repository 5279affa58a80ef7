"""The gateway figures: the check alone, and deploy/nginx-gateway.conf in front of a file.

The orientation the targets come from (docs/benchmarks.md): nginx with one worker and the
service sharing one core, wrk on the other; nginx serving a static file itself, the same
file behind ``auth_request``. So the bench runs the shipped site file with three changes:
plain HTTP on a free port (no certificate), nginx serves the protected file from disk
instead of proxying an upstream (the upstream is not what is measured), and two extra
locations for the baselines, both added by text, never by hand:

- ``/open/``: the same file without ``auth_request`` (what the cache is compared with);
- ``/bench-live/``: the same file behind an ``auth_request`` location identical to the
  shipped check's, pointed at ``/health/live`` (what the uncached check is compared with).

Every request of every run carries ``Authorization: Bearer <issued token>``, so the
baselines and the scenarios send the same bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from procs import REPO, ProcessFailed, http_get_ok

SITE = REPO / "deploy" / "nginx-gateway.conf"
FILE_BODY = b"<!doctype html><title>protected</title><p>" + b"x" * 512 + b"</p>\n"
PAGE = "index.html"
_CHECK_BLOCK = re.compile(r"    location = /_anonticket/check \{\n.*?\n    \}\n", re.S)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bench_site(directory: Path, *, public: str, internal: str, port: int) -> str:
    """The shipped site file, changed only as the module docstring says."""
    text = SITE.read_text()
    www = directory / "www"
    replacements = {
        "listen 443 ssl http2;": f"listen 127.0.0.1:{port};",
        "listen [::]:443 ssl http2;": "",
        "server unix:/run/anonticket/public.sock;": f"server {public};",
        "server 127.0.0.1:9090;": f"server {internal};",
        "proxy_pass http://protected_service;": f"root {www};",
        "/run/nginx-anonticket-cache": f"{directory}/cache",
        "/var/log/nginx/": f"{directory}/log/",
        "/etc/nginx/anonticket-gateway-credential.conf": f"{directory}/credential.conf",
    }
    for old, new in replacements.items():
        if old not in text:
            raise RuntimeError(f"deploy/nginx-gateway.conf no longer has {old!r}")
        text = text.replace(old, new)
    text = "\n".join(line for line in text.splitlines()
                     if not line.strip().startswith(("ssl_certificate", "ssl_protocols",
                                                     "ssl_session_tickets")))
    check = _CHECK_BLOCK.search(text)
    if check is None:
        raise RuntimeError("deploy/nginx-gateway.conf has no /_anonticket/check location")
    live = (check.group(0).replace("location = /_anonticket/check", "location = /_anonticket/live")
            .replace("/api/v1/check;", "/health/live;"))
    extra = (f"    location /open/ {{\n        auth_request off;\n        root {www};\n    }}\n"
             f"    location /bench-live/ {{\n        auth_request /_anonticket/live;\n"
             f"        root {www};\n    }}\n{live}")
    marker = "    # ---------------------------------------------------------------- protected\n"
    return text.replace(marker, extra + marker, 1)


class Nginx:
    """Debian's nginx with one worker, pinned like the service; CPU is master + worker."""

    def __init__(self, public: str, internal: str, cpus: str | None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="atb-nginx-", dir="/tmp"))
        self.directory.chmod(0o755)  # workers run as www-data when we are root
        for sub in ("log", "tmp", "www", "www/open", "www/bench-live", "www/static", "www/api"):
            (self.directory / sub).mkdir()
        for sub in ("", "open/", "bench-live/", "static/", "api/"):
            (self.directory / "www" / f"{sub}{PAGE}").write_bytes(FILE_BODY)
        (self.directory / "credential.conf").write_text("")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        site = bench_site(self.directory, public=public, internal=internal, port=self.port)
        (self.directory / "site.conf").write_text(site)
        temp = " ".join(f"{kind}_temp_path {self.directory}/tmp/{kind};"
                        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        user = "user www-data;" if os.geteuid() == 0 else ""
        (self.directory / "nginx.conf").write_text(
            f"{user} worker_processes 1; daemon off; pid {self.directory}/nginx.pid;\n"
            f"error_log {self.directory}/log/main-error.log;\n"
            f"events {{ worker_connections 4096; }}\n"
            f"http {{ {temp} include {self.directory}/site.conf; }}\n")
        command = ["nginx", "-e", f"{self.directory}/log/main-error.log", "-p", str(self.directory),
                   "-c", str(self.directory / "nginx.conf")]
        if cpus:
            command = ["taskset", "-c", cpus, *command]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not http_get_ok(self.address, f"/open/{PAGE}"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ProcessFailed("nginx did not start: "
                                    + (self.directory / "log" / "main-error.log").read_text()[-500:])
            time.sleep(0.02)

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [self.proc.pid, *map(int, children.read_text().split())]
        except OSError:
            return [self.proc.pid]

    def cpu_secs(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.directory, ignore_errors=True)


class Together:
    """nginx and the service as one server for the report's CPU-per-request column."""

    def __init__(self, address: str, *parts: object) -> None:
        self.address = address
        self.parts = parts

    def cpu_secs(self) -> float:
        return sum(part.cpu_secs() for part in self.parts)  # type: ignore[attr-defined]
