"""``python -m anonticket.regtest.watchdog DIRECTORY OWNER_PID``: stop the network when
its owner dies.

A killed pytest never runs its fixture teardown; without this, every such run would
leave a monerod and two wallet-rpc behind. The watchdog steps aside as soon as the
network is stopped or restarted (env.json no longer names it).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from anonticket.regtest.process import DirLock, pid_alive
from anonticket.regtest.record import load_state, stop_recorded

log = logging.getLogger("anonticket.regtest")
POLL_SECONDS = 0.5
# Bounds the loop; an owner alive for a week is a sandbox left on purpose, so the
# watchdog then exits and leaves the network running.
MAX_LIFETIME_SECONDS = 7 * 24 * 3600.0


def watch(root: Path, owner_pid: int) -> str:
    me = os.getpid()
    deadline = time.monotonic() + MAX_LIFETIME_SECONDS
    while time.monotonic() < deadline:
        state = load_state(root)
        if not state or state.get("stopped") or (state.get("pids") or {}).get("watchdog") not in (None, me):
            return "the network was stopped or replaced"
        if not pid_alive(owner_pid):
            log.warning("owner pid %d is gone; stopping the regtest network in %s", owner_pid, root)
            stop_recorded(root, f"owner pid {owner_pid} exited", {}, DirLock(root / ".lock"))
            return "owner exited"
        time.sleep(POLL_SECONDS)
    return "maximum lifetime reached"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not (args[1].isascii() and args[1].isdigit()):
        sys.stderr.write("usage: python -m anonticket.regtest.watchdog DIRECTORY OWNER_PID\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s watchdog %(levelname)s %(message)s")
    log.info("watchdog done: %s", watch(Path(args[0]).resolve(), int(args[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
