"""Monitor ingest rate: the real Monitor polling a wallet stand-in (its own process) that
answers each poll with a big batch of confirmed transfers, credited into the
benchmark's database (1M payments already stored).

The Monitor runs in a process of its own too (``run_in_own_process``), as it does inside
``anonticket serve``: in the benchmark driver it would share the interpreter with the
driver's million-PID lists, and every garbage collection during a poll would walk them.

Rate = transfers credited / wall time of ``poll_once`` (fetch + parse + classify +
credit, everything a poll does); the storage part (``Ledger.credit``) is timed on
its own too, so the report says where the time went.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from procs import BENCH  # noqa: E402

from anonticket.service.app import open_state  # noqa: E402
from anonticket.config import Config  # noqa: E402
from anonticket.monitor.loop import Monitor  # noqa: E402


def _start_wallet(workdir: Path, batch: int, rounds: int) -> tuple[subprocess.Popen[bytes], str]:
    log = workdir / "fake_wallet.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(BENCH / "fake_wallet_server.py"), "--batch", str(batch),
             "--rounds", str(rounds)], stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120 + batch * rounds / 5000
    while time.monotonic() < deadline:
        match = re.search(r"listening on (\S+)", log.read_text())
        if match:
            return proc, match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"fake wallet did not start: {log.read_text()[-500:]}")


async def measure_ingest(db: Path | str, workdir: Path, batch: int, rounds: int,
                         margin: int | None = None, margin_every_poll: bool = False) -> dict[str, Any]:
    wallet, url = _start_wallet(workdir, batch, rounds)
    try:
        # production defaults, including the 10 s wallet timeout a big batch must fit in
        settings = {"DATABASE_URL": str(db), "MONERO_RPC_URL": url, "API_ACCESS_LOG": "false"}
        if margin is not None:  # the rescan margin's cost: compare with --margin 0
            settings["MONITOR_RESCAN_MARGIN_BLOCKS"] = str(margin)
        config = Config.from_env(settings)
        async with AsyncExitStack() as stack:
            state = await open_state(config, stack)
            # the margin below the cursor is re-read only when the wallet's view there may
            # have changed, or by a backstop; a clock leaping ahead makes every poll re-read
            # it, to measure what a re-read costs
            leap = itertools.count(0.0, 1e6)
            monitor = Monitor(state, **({"clock": lambda: next(leap)} if margin_every_poll else {}))
            await monitor.start()
            stack.push_async_callback(monitor.aclose)
            spent = {"credit": 0.0, "wallet": 0.0}

            def timed(name: str, method: Any) -> Any:
                async def wrapper(*args: Any, **kwargs: Any) -> Any:
                    started = time.perf_counter()
                    try:
                        return await method(*args, **kwargs)
                    finally:
                        spent[name] += time.perf_counter() - started
                return wrapper

            # instrumentation only: the same calls, timed (wallet = fetch and JSON decode)
            state.ledger.credit = timed("credit", state.ledger.credit)  # type: ignore[method-assign]
            rpc = monitor._wallet  # noqa: SLF001 - a benchmark may look inside
            rpc.get_transfers = timed("wallet", rpc.get_transfers)  # type: ignore[method-assign]
            polls = []
            for _ in range(rounds):
                spent.update(credit=0.0, wallet=0.0)
                started = time.perf_counter()
                credited = await monitor.poll_once()
                secs = time.perf_counter() - started
                if credited != batch:
                    raise RuntimeError(f"a poll credited {credited} of {batch} transfers")
                polls.append({"transfers": credited, "secs": round(secs, 3),
                              "wallet_secs": round(spent["wallet"], 3),
                              "credit_secs": round(spent["credit"], 3),
                              "classify_secs": round(secs - spent["wallet"] - spent["credit"], 3),
                              "per_sec": round(credited / secs)})
    finally:
        wallet.terminate()
        wallet.wait(10)
    rates = sorted(p["per_sec"] for p in polls)
    return {"batch": batch, "margin": config.monitor_rescan_margin_blocks,
            "margin_every_poll": margin_every_poll, "polls": polls,
            "transfers_per_sec": rates[len(rates) // 2]}


def run_in_own_process(db: Path | str, workdir: Path, batch: int, rounds: int,
                       margin: int | None = None, margin_every_poll: bool = False) -> dict[str, Any]:
    """``measure_ingest`` in a fresh interpreter; its JSON result on the last stdout line."""
    extra = [] if margin is None else ["--margin", str(margin)]
    extra += ["--margin-every-poll"] if margin_every_poll else []
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--db", str(db), "--workdir", str(workdir),
         "--batch", str(batch), "--rounds", str(rounds), *extra],
        capture_output=True, text=True, timeout=300 + batch * rounds / 1000, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"ingest run failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one ingest measurement, JSON on stdout")
    parser.add_argument("--db", required=True, help="a file path or a postgresql:// URL")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--margin", type=int, help="MONITOR_RESCAN_MARGIN_BLOCKS (default: its default)")
    parser.add_argument("--margin-every-poll", action="store_true",
                        help="re-read the margin on every poll, to measure what a re-read costs")
    options = parser.parse_args()
    print(json.dumps(asyncio.run(measure_ingest(options.db, options.workdir, options.batch,
                                                options.rounds, options.margin,
                                                options.margin_every_poll))))
