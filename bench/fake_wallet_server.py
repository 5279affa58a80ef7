"""tests/fake_wallet.py's FakeWallet as a separate process, serving big rounds of transfers.

Round r is ``--batch`` fresh transfers at height BASE + 20 r. They appear in the wallet
with the r-th ``get_height`` (the first call of each poll), which answers BASE + 20 r + 10,
so the monitor's r-th poll (everything above its cursor) sees exactly round r, all of it
confirmed, as if 20 blocks full of payments had arrived since the last poll. A separate
process, so encoding the answer does not share the monitor's event loop.

    python3 bench/fake_wallet_server.py --batch 100000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fake_wallet import FakeWallet, make_transfer  # noqa: E402

BASE_HEIGHT = 1000
AMOUNT = 10**12


def rounds_of_transfers(batch: int, rounds: int, seed: int) -> list[list[dict[str, object]]]:
    rng = random.Random(seed)
    return [
        [make_transfer(rng.randbytes(8).hex(), AMOUNT, BASE_HEIGHT + 20 * r,
                       txid=rng.randbytes(32).hex()) for _ in range(batch)]
        for r in range(rounds)
    ]


async def main(args: argparse.Namespace) -> int:
    wallet = FakeWallet(height=BASE_HEIGHT)
    rounds = rounds_of_transfers(args.batch, args.rounds, args.seed)
    wallet.live_confirmations = False  # entries as stored: no per-entry copy per answer
    calls = 0

    def get_height(params: dict[str, object]) -> dict[str, int]:
        nonlocal calls
        r = min(calls, args.rounds - 1)
        if calls < args.rounds:
            wallet.incoming.extend(rounds[r])
        calls += 1
        return {"height": BASE_HEIGHT + 20 * r + 10}

    wallet.methods["get_height"] = get_height
    await wallet.start()
    print(f"listening on {wallet.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.max_secs)
    except TimeoutError:
        pass
    finally:
        await wallet.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-secs", type=float, default=600.0, help="exit after this long anyway")
    sys.exit(asyncio.run(main(parser.parse_args())))
