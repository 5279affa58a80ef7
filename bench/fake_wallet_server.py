"""A wallet-rpc stand-in, its own process, serving big rounds of transfers for the ingest run.

Round r is ``--batch`` fresh transfers at height BASE + 20 r, entries with every field
wallet-rpc returns (tests/fake_wallet.py's ``make_transfer``). They appear with the r-th
``get_height`` (the first call of each poll), which answers BASE + 20 r + 10, so the
monitor's r-th poll (everything above its cursor) sees exactly round r, all of it
confirmed, as if 20 blocks full of payments had arrived since the last poll.

Each round's JSON is encoded once, before the wallet listens: the benchmark measures
the service's ingest, so the stand-in must not spend the poll's time encoding 50 MB
(tests/fake_wallet.py's FakeWallet does, per answer). A real monero-wallet-rpc's own
time to build such an answer is the operator's wallet's cost, outside this figure.

    python3 bench/fake_wallet_server.py --batch 100000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fake_wallet import make_transfer  # noqa: E402

BASE_HEIGHT = 1000
AMOUNT = 10**12


def encoded_rounds(batch: int, rounds: int, seed: int) -> list[bytes]:
    """Each round's ``"in"`` list as JSON bytes, ready to be spliced into an answer."""
    rng = random.Random(seed)
    return [
        json.dumps([make_transfer(rng.randbytes(8).hex(), AMOUNT, BASE_HEIGHT + 20 * r,
                                  txid=rng.randbytes(32).hex()) for _ in range(batch)]).encode()
        for r in range(rounds)
    ]


class RoundsWallet:
    """Answers ``get_version``, ``get_height`` and ``get_transfers`` as wallet-rpc does."""

    def __init__(self, rounds: list[bytes]) -> None:
        self.rounds = rounds
        self.released = 0  # rounds whose blocks have "arrived"

    def answer(self, method: str, params: dict[str, Any], request_id: Any) -> bytes:
        head = b'{"jsonrpc":"2.0","id":' + json.dumps(request_id).encode() + b',"result":'
        if method == "get_version":
            return head + b'{"release":true,"version":65561}}'
        if method == "get_height":
            r = min(self.released, len(self.rounds) - 1)
            self.released = min(self.released + 1, len(self.rounds))
            return head + json.dumps({"height": BASE_HEIGHT + 20 * r + 10}).encode() + b"}"
        if method == "get_transfers":
            # min_height exclusive, as in wallet2: the rounds above the caller's cursor
            low = params.get("min_height", 0)
            chosen = [self.rounds[r] for r in range(self.released) if BASE_HEIGHT + 20 * r > low]
            if not chosen:
                return head + b"{}}"  # wallet-rpc leaves an empty category out
            return head + b'{"in":' + _concat_lists(chosen) + b"}}"
        error = b'{"code":-32601,"message":"Method not found"}'
        return b'{"jsonrpc":"2.0","id":' + json.dumps(request_id).encode() + b',"error":' + error + b"}"

    async def handle(self, request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        body = self.answer(doc["method"], doc.get("params") or {}, doc.get("id", 0))
        return web.Response(body=body, content_type="application/json")


def _concat_lists(encoded: list[bytes]) -> bytes:
    if len(encoded) == 1:
        return encoded[0]
    return b"[" + b",".join(e[1:-1] for e in encoded) + b"]"


async def main(args: argparse.Namespace) -> int:
    wallet = RoundsWallet(encoded_rounds(args.batch, args.rounds, args.seed))
    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/json_rpc", wallet.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.max_secs)
    except TimeoutError:
        pass
    finally:
        await runner.cleanup()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-secs", type=float, default=600.0, help="exit after this long anyway")
    sys.exit(asyncio.run(main(parser.parse_args())))
