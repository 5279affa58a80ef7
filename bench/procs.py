"""The processes the benchmark starts: the real ``bin/anonticket serve`` and the bare app.

Both are subprocesses with their stderr in a file (the access log is written there,
as it would be to journald), watched through /proc: CPU time for "how much work
was a request", VmHWM for the peak RSS. Every wait has a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PUBLIC_LINE = re.compile(r"public listener on (\S+), internal listener on ([^\s,]+)")


class ProcessFailed(RuntimeError):
    pass


def _wait_for(predicate, deadline: float, proc: subprocess.Popen[bytes], what: str, log: Path):  # type: ignore[no-untyped-def]
    while True:
        result = predicate()
        if result:
            return result
        if proc.poll() is not None:
            raise ProcessFailed(f"{what} exited with {proc.returncode}: {_tail(log)}")
        if time.monotonic() > deadline:
            raise ProcessFailed(f"{what} not ready in time: {_tail(log)}")
        time.sleep(0.002)


def _tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_get_ok(address: str, path: str = "/health/live", timeout: float = 1.0) -> bool:
    """One GET over TCP ("host:port") or a Unix socket ("unix:/path"); True on a 200."""
    try:
        if address.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(address[5:])
        else:
            host, port = address.rsplit(":", 1)
            sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError:
        return False
    with sock:
        try:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64)
        except OSError:
            return False
    return head.startswith(b"HTTP/1.1 200")


class Proc:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, started: float) -> None:
        self.proc = proc
        self.log = log
        self.started = started
        self.address = ""
        self.internal_address = ""  # the service's internal listener (TCP only)
        self.startup_secs = 0.0
        self.ready_secs = 0.0  # to the first 200 of /health/ready (on PostgreSQL: active)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_secs(self) -> float:
        """User + system CPU of every thread of the process so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def kill(self) -> None:
        """SIGKILL, and reap it (the takeover drill: nothing of it runs afterwards)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise ProcessFailed(f"pid {self.pid} did not stop on SIGTERM in {timeout}s") from None


def start_service(
    db: Path, workdir: Path, name: str, *, unix_socket: Path | None = None,
    extra_env: Mapping[str, str] | None = None, cpus: str | None = None, timeout: float = 60.0,
    wait_ready: bool = True,
) -> Proc:
    """Start ``bin/anonticket serve`` on production defaults (access log and metrics on,
    the monitor off: there is no wallet). Start-up time is measured from just before the
    fork to the first 200 from ``/health/live``; ``ready_secs`` to the first 200 from
    ``/health/ready``, which on PostgreSQL is when the instance is active, its views
    loaded (``wait_ready=False``: a second instance that will stand by)."""
    log = workdir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "MONITOR_", "DATABASE_"))}
    env.update({
        "DATABASE_URL": str(db),
        "API_BIND_ADDRESS": "127.0.0.1:0",
        "API_INTERNAL_BIND_ADDRESS": "127.0.0.1:0",
        "MONITOR_ENABLED": "false",
    })
    if unix_socket is not None:
        env["API_UNIX_SOCKET"] = str(unix_socket)
    env.update(extra_env or {})
    command = [str(REPO / "bin" / "anonticket"), "serve"]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    with open(log, "wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=out, cwd=workdir)
    service = Proc(proc, log, started)
    deadline = started + timeout
    if unix_socket is not None:
        address = f"unix:{unix_socket}"
        _wait_for(lambda: http_get_ok(address, timeout=0.5), deadline, proc, name, log)
    else:
        def listening() -> re.Match[str] | None:
            return _PUBLIC_LINE.search(log.read_text(errors="replace"))

        match = _wait_for(listening, deadline, proc, name, log)
        address, service.internal_address = match.group(1), match.group(2)
        _wait_for(lambda: http_get_ok(address), deadline, proc, name, log)
    service.startup_secs = time.monotonic() - started
    service.address = address
    if wait_ready:
        _wait_for(lambda: http_get_ok(address, "/health/ready"), deadline, proc, name, log)
        service.ready_secs = time.monotonic() - started
    return service


def cpu_secs_of_tree(root_pid: int) -> float:
    """CPU of a process, its live children and its reaped ones (``cutime``/``cstime``):
    a PostgreSQL cluster is its postmaster and the backends, autovacuum workers and
    background writers it forks, some of them short-lived."""
    def stat(pid: int) -> list[str] | None:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None

    fields = stat(root_pid)
    if fields is None:
        return 0.0
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != root_pid:
            child = stat(int(entry.name))
            if child is not None and int(child[1]) == root_pid:  # ppid
                ticks += int(child[11]) + int(child[12])
    return ticks / _CLK_TCK


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split()[0])


def start_bare(workdir: Path, *, cpus: str | None = None, timeout: float = 30.0) -> Proc:
    log = workdir / "bare.log"
    command = [sys.executable, str(BENCH / "bare_app.py")]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    with open(log, "wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                cwd=workdir)
    bare = Proc(proc, log, started)

    def listening() -> str | None:
        match = re.search(r"listening on (\S+)", log.read_text(errors="replace"))
        return match.group(1) if match else None

    bare.address = _wait_for(listening, started + timeout, proc, "bare app", log)
    _wait_for(lambda: http_get_ok(bare.address, "/"), started + timeout, proc, "bare app", log)
    bare.startup_secs = time.monotonic() - started
    return bare
