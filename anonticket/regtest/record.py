"""DIRECTORY/env.json: what a running network recorded, and stopping exactly that.

``attach``, ``stop`` and the watchdog may run in other processes than ``start``, so
the urls and pids live in this file, not in memory. A recorded pid is only ever
signalled while its command line still names the directory.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from anonticket.regtest.process import DirLock, pid_is_ours, reap, stop_pid, unrecorded_children

log = logging.getLogger("anonticket.regtest")

ENV_FILE = "env.json"
ENV_FORMAT = 1
# Stop order, with the grace in s before SIGKILL: the watchdog first so it does not
# race the stop, the daemon last so the wallets can still save against it.
STOP_ORDER = (("watchdog", 5.0), ("merchant", 15.0), ("payer", 15.0), ("monerod", 30.0))


def load_state(root: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((root / ENV_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("format") == ENV_FORMAT else None


def write_state(root: Path, state: dict[str, Any]) -> None:
    """Atomic replace: a reader (attach, the watchdog) never sees half a file."""
    tmp = root / (ENV_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, root / ENV_FILE)


def running(root: Path, state: dict[str, Any]) -> bool:
    pids = state.get("pids") or {}
    return all(pid_is_ours(int(pids.get(name) or 0), root) for name in ("monerod", "merchant", "payer"))


def stop_recorded(root: Path, reason: str, procs: dict[str, subprocess.Popen[bytes]], lock: DirLock) -> int:
    """Stop the recorded processes, and reap ``procs``, the ones this process spawned.

    Then any child of this process that still names ROOT: one whose spawn an interrupt
    cut short, after the fork but before its pid could be recorded. Marks env.json
    stopped (the pids stay, for the post-mortem). The watchdog calls this too, so it
    never signals its own pid. Returns how many were running.
    """
    stopped = 0
    with lock:
        state = load_state(root) or {"pids": {}}
        pids = dict(state.get("pids") or {})
        known = {os.getpid()}
        for name, grace in STOP_ORDER:
            pid = int(pids.get(name) or (procs[name].pid if name in procs else 0))
            known.add(pid)
            if pid and pid != os.getpid():
                stopped += stop_pid(pid, root, name, grace, procs.get(name))
        for pid in unrecorded_children(root, known | {proc.pid for proc in procs.values()}):
            log.warning("stopping pid %d, started for %s but never recorded (an interrupted start)",
                        pid, root)
            stopped += stop_pid(pid, root, "an unrecorded child", 5.0)
            reap(pid)
        if "directory" in state and not state.get("stopped"):
            state["stopped"] = reason
            write_state(root, state)
    for proc in procs.values():
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not exit after being stopped", proc.pid)
    return stopped
