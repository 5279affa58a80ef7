"""Processes, ports, pids and the directory lock behind a regtest network.

Everything here is about leaving nothing behind: pids are recorded before they are
waited on, and a recorded pid is only ever signalled while its command line still
names the network's directory (a pid reused by an unrelated process is left alone).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from anonticket.regtest.errors import RegtestError

log = logging.getLogger("anonticket.regtest")

BINARIES = ("monerod", "monero-wallet-rpc")
_POLL = 0.05


def find_binary(name: str) -> str | None:
    """``MONERO_BIN_DIR`` lets a machine use monero binaries outside PATH."""
    bindir = os.environ.get("MONERO_BIN_DIR")
    if bindir:
        path = os.path.join(bindir, name)
        return path if os.access(path, os.X_OK) else None
    return shutil.which(name)


def require_binary(name: str) -> str:
    path = find_binary(name)
    if path is None:
        raise RegtestError(f"{name} is not installed (Debian package monero; bin/install-monero)")
    return path


def ensure_monero_installed() -> None:
    """Install Debian's ``monero`` when monerod or monero-wallet-rpc is missing.

    Runs apt-get as root or through ``sudo -n`` (never prompts); the package lists are
    refreshed only when the first attempt fails, since that costs a network round.
    """
    if all(find_binary(b) for b in BINARIES):
        return
    if os.environ.get("MONERO_BIN_DIR"):
        raise RegtestError(f"MONERO_BIN_DIR={os.environ['MONERO_BIN_DIR']} lacks {' or '.join(BINARIES)}")
    if not shutil.which("apt-get"):
        raise RegtestError("monerod is missing and apt-get is not available: install monero 0.18")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise RegtestError("monerod is missing and we are not root: run `apt-get install monero`")
        prefix = ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = [*prefix, "apt-get", "-o", "DPkg::Lock::Timeout=300", "-q"]
    install = [*apt, "install", "-y", "--no-install-recommends", "monero"]
    started = time.monotonic()
    log.info("installing the Debian package monero with apt-get")
    result = subprocess.run(install, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        log.info("apt-get install failed with the current package lists; running apt-get update")
        subprocess.run([*apt, "update"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        result = subprocess.run(install, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0 or not all(find_binary(b) for b in BINARIES):
        output = result.stdout.decode(errors="replace")[-3000:]
        raise RegtestError(f"apt-get install monero failed (exit {result.returncode}):\n{output}")
    log.info("installed monero in %.1fs", time.monotonic() - started)


def free_ports(count: int) -> list[int]:
    """Distinct ports the kernel just handed out; a later bind can still lose a race,
    which `start` detects in the logs and retries."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def pid_alive(pid: int) -> bool:
    """A zombie counts as gone: it no longer runs, it only waits to be reaped."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def pid_is_ours(pid: int, directory: Path) -> bool:
    """True if pid runs with DIRECTORY or a path under it among its arguments."""
    if not pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    root = str(directory)
    return any(a == root or a.startswith(root + os.sep) for a in argv)


def unrecorded_children(directory: Path, known: set[int]) -> list[int]:
    """This process's running children that name DIRECTORY but are not in ``known``.

    A KeyboardInterrupt (Ctrl-C, or the sandbox's SIGTERM) that lands inside
    ``subprocess.Popen`` after its fork leaves the child running with no Popen object and
    no recorded pid: only its parent can still find it, by its parent pid.
    """
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in known:
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == me and pid_is_ours(int(entry.name), directory):
            found.append(int(entry.name))
    return found


def reap(pid: int) -> None:
    """Collect a stopped child of ours that no Popen object holds, so no zombie stays."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_pid(pid: int, directory: Path, name: str, grace: float,
             proc: subprocess.Popen[bytes] | None = None) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` s; True if it was running. A child we spawned
    (``proc``) is ours whatever its command line, and is reaped so no zombie and no
    ResourceWarning stays behind."""
    spawned_and_running = proc is not None and proc.pid == pid and proc.poll() is None
    if not spawned_and_running and not pid_is_ours(pid, directory):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, proc, grace):
        log.warning("%s (pid %d) ignored SIGTERM for %.0fs; sending SIGKILL", name, pid, grace)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, proc, 10.0):
            raise RegtestError(f"could not stop {name} (pid {pid})")
    log.info("stopped %s (pid %d)", name, pid)
    return True


def _wait_gone(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        if not pid_alive(pid):
            return True
        time.sleep(_POLL)
    return False


def spawn(argv: list[str], logfile: Path, cwd: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A child in its own session, so a Ctrl-C meant for pytest does not kill the chain
    before the fixture's teardown has stopped it in order."""
    with open(logfile, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env, start_new_session=True, close_fds=True)


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_bytes().decode(errors="replace").splitlines()
    except OSError:
        return f"    (no log at {path})"
    return "\n".join("    " + line for line in text[-lines:])


class DirLock:
    """An exclusive lock on DIRECTORY/.lock shared by every process driving the network.

    Re-entrant within a process (``pay(mine=1)`` calls ``mine``), exclusive across
    threads and processes: flock belongs to the open file, so each outermost holder
    opens its own. A holder that dies releases it with its file descriptors.
    """

    def __init__(self, path: Path, timeout: float = 900.0) -> None:
        self.path = path
        self.timeout = timeout
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._file: IO[str] | None = None

    def __enter__(self) -> DirLock:
        if not self._thread_lock.acquire(timeout=self.timeout):
            raise RegtestError(f"timed out after {self.timeout:.0f}s waiting for {self.path}")
        try:
            if self._depth == 0:
                self._file = self._acquire()
            self._depth += 1
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def _acquire(self) -> IO[str]:
        f = open(self.path, "a+")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return f
            except BlockingIOError:
                if time.monotonic() > deadline:
                    f.close()
                    raise RegtestError(f"timed out after {self.timeout:.0f}s waiting for {self.path}") from None
                time.sleep(_POLL)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth == 0 and self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None
        self._thread_lock.release()
