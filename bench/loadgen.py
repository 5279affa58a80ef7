"""Running one load: ``wrk`` over TCP or ``uds_client.py`` over the Unix socket.

Both are separate processes with a fixed number of keep-alive connections and a
bounded duration. Their CPU time comes back from ``wait4`` so the report can show
whether the client, not the server, was the limit. The server's CPU time over the
same window gives "server CPU per request", which other load on the machine
disturbs much less than req/s does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from procs import BENCH, Proc

CONNECTIONS = 32
# With --backend postgres: the cluster's CPU seconds so far (procs.cpu_secs_of_tree), read
# around every load like the server's, so each figure says what the database did meanwhile
DB_CPU: Callable[[], float] | None = None


@dataclass
class Load:
    requests: int
    secs: float
    p50_ms: float
    p99_ms: float
    client_cpu: float  # fraction of one core
    server_cpu_us: float  # server CPU per request, microseconds
    db_cpu_us: float | None = None  # the PostgreSQL cluster's CPU per request, microseconds
    outcomes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.secs if self.secs > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rps": round(self.rps, 1), "requests": self.requests, "secs": round(self.secs, 3),
            "p50_ms": round(self.p50_ms, 3), "p99_ms": round(self.p99_ms, 3),
            "client_cpu": round(self.client_cpu, 3),
            "server_cpu_us_per_req": round(self.server_cpu_us, 1),
            **({} if self.db_cpu_us is None else {"db_cpu_us_per_req": round(self.db_cpu_us, 1)}),
            "outcomes": self.outcomes, "errors": self.errors,
        }


def _run(command: list[str], timeout: float, server: Proc | None,
         done_file: Path | None = None) -> tuple[dict[str, Any], float, float, float | None]:
    """Run a load generator; returns (its BENCH_JSON, its CPU fraction, server CPU secs,
    database CPU secs or None).

    When ``done_file`` appears (the script ran out of work), the generator is sent
    SIGINT, on which wrk stops and reports the time actually run.
    """
    server_cpu = server.cpu_secs() if server is not None else 0.0
    db_cpu = DB_CPU() if DB_CPU is not None else None
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = started + timeout
    interrupted = False
    while True:  # wait4 instead of communicate(): it also returns the child's rusage
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if done_file is not None and not interrupted and done_file.exists():
            proc.send_signal(signal.SIGINT)
            interrupted = True
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            raise RuntimeError(f"load generator did not finish in {timeout:.0f}s: {command}")
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()  # type: ignore[union-attr]
    server_cpu = (server.cpu_secs() - server_cpu) if server is not None else 0.0
    if db_cpu is not None and DB_CPU is not None:
        db_cpu = DB_CPU() - db_cpu
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.strip()[-500:]}")
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            return (json.loads(line[len("BENCH_JSON "):]),
                    (usage.ru_utime + usage.ru_stime) / elapsed, server_cpu, db_cpu)
    raise RuntimeError(f"no BENCH_JSON line from {command[0]}: {out[-500:]} {err[-500:]}")


def wrk(address: str, script_args: list[str], secs: float, *, server: Proc | None = None,
        cpus: str | None = None, threads: int = 1) -> Load:
    done_file = Path(tempfile.mkdtemp(prefix="wrk-")) / "done"
    command = ["wrk", f"-t{threads}", f"-c{CONNECTIONS}", f"-d{max(1, round(secs))}s",
               "--timeout", "5s", "-s", str(BENCH / "scenarios.lua"), f"http://{address}",
               "--", f"threads={threads}", f"done_file={done_file}", *script_args]
    if cpus:
        command = ["taskset", "-c", cpus, *command]  # taskset execs wrk: same pid for SIGINT
    try:
        doc, client_cpu, server_cpu, db_cpu = _run(command, secs + 60, server, done_file)
    finally:
        shutil.rmtree(done_file.parent, ignore_errors=True)
    requests = doc["requests"]
    return Load(
        requests=requests, secs=doc["duration_us"] / 1e6, p50_ms=doc["p50_us"] / 1000,
        p99_ms=doc["p99_us"] / 1000, client_cpu=client_cpu,
        server_cpu_us=server_cpu * 1e6 / requests if requests else 0.0,
        db_cpu_us=None if db_cpu is None else (db_cpu * 1e6 / requests if requests else 0.0),
        outcomes=doc["outcomes"],
        errors={k: v for k, v in doc["errors"].items() if v},
    )


def uds(socket_path: str, script_args: list[str], secs: float, *, server: Proc | None = None,
        cpus: str | None = None) -> Load:
    command = [sys.executable, str(BENCH / "uds_client.py"), "--socket", socket_path,
               "--connections", str(CONNECTIONS), "--secs", str(secs), *script_args]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    doc, client_cpu, server_cpu, db_cpu = _run(command, secs + 60, server)
    requests = doc["requests"]
    return Load(
        requests=requests, secs=doc["duration_us"] / 1e6, p50_ms=doc["p50_us"] / 1000,
        p99_ms=doc["p99_us"] / 1000, client_cpu=client_cpu,
        server_cpu_us=server_cpu * 1e6 / requests if requests else 0.0,
        db_cpu_us=None if db_cpu is None else (db_cpu * 1e6 / requests if requests else 0.0),
        outcomes=doc["outcomes"], errors=doc.get("errors", {}),
    )
