#!/usr/bin/env python3
"""Time to access with provisional credit, on a private regtest chain (issue 25).

    python3 bench/provisional.py                  # 100 payments, the figures for docs/benchmarks.md
    python3 bench/provisional.py --quick          # 3 payments: a smoke run

A real monerod + wallet-rpc (anonticket.regtest) and the service in this process (SQLite,
``PROVISIONAL_MAX_PER_PID`` on, production's ``MONITOR_POLL_INTERVAL_SECS`` of 5 s unless
``--poll`` says otherwise). For each payment, one after the other: the payer pays a fresh PID
(``pay`` returns once the merchant wallet shows the tx in its pool: the clock starts there);
the customer (holding the receipt the PID derives from) then redeems every 20 ms until 200 and asks the gateway check with the token
until 200. Figure: the time from the payment entering the pool to that first 200 at the
gateway, median and p99 over the payments.

Beside it, the time at N confirmations: the chain's own clock (N blocks of 2 minutes on
average, not measurable on regtest where blocks are mined on demand) plus what the service
adds once the N-th block is there, measured here the same way on payments with provisional
credit off (median over ``--confirmed`` payments). Writes one JSON object (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from anonticket.config import Config  # noqa: E402
from anonticket.domain.ids import Receipt  # noqa: E402
from anonticket.regtest import RegtestNetwork  # noqa: E402
from anonticket.service.app import start_service  # noqa: E402

XMR = 10**12
BLOCK_SECS = 120
DEADLINE_SECS = 120.0


def config(net: RegtestNetwork, workdir: Path, *, provisional: bool, poll: float, need: int,
           start: int) -> Config:
    return Config.from_env({
        "DATABASE_URL": str(workdir / f"bench-{provisional}.db"),
        "API_BIND_ADDRESS": "127.0.0.1:0", "API_INTERNAL_BIND_ADDRESS": "127.0.0.1:0",
        "API_ACCESS_LOG": "false", "MONERO_RPC_URL": net.merchant_url,
        "MONITOR_MIN_CONFIRMATIONS": str(need), "MONITOR_START_HEIGHT": str(start),
        "MONITOR_POLL_INTERVAL_SECS": str(poll), "MONITOR_MIN_PAYMENT_AMOUNT": "1000",
        "PROVISIONAL_MAX_PER_PID": str(XMR) if provisional else "0",
        "PROVISIONAL_MAX_OUTSTANDING": str(1000 * XMR),
    })


async def first_200(http: aiohttp.ClientSession, service: Any, receipt: Receipt) -> float:
    """Redeem until 200, then the gateway check with the token until 200; when it answered."""
    deadline = time.monotonic() + DEADLINE_SECS
    public = f"http://{service.public_address}"
    internal = f"http://{service.internal_address}"
    token = None
    while time.monotonic() < deadline:
        if token is None:
            async with http.post(public + "/api/v1/redeem",
                                 json={"receipt": receipt.hex()}) as resp:
                if resp.status == 200:
                    token = (await resp.json())["service_token"]
        if token is not None:
            async with http.get(internal + "/api/v1/check",
                                headers={"Authorization": f"Bearer {token}"}) as resp:
                if resp.status == 200:
                    return time.monotonic()
        await asyncio.sleep(0.02)
    raise RuntimeError("no 200 at the gateway before the deadline")


async def measure(net: RegtestNetwork, workdir: Path, *, payments: int, confirmed: int,
                  poll: float, need: int) -> dict[str, Any]:
    start = await asyncio.to_thread(net.mine, 1)
    provisional: list[float] = []
    service = await start_service(config(net, workdir, provisional=True, poll=poll, need=need,
                                         start=start))
    try:
        async with aiohttp.ClientSession(trust_env=False) as http:
            for _ in range(payments):
                receipt = Receipt.generate()  # as the checkout makes them
                await asyncio.to_thread(net.pay, receipt.pid.hex(), XMR // 100)
                entered = time.monotonic()
                provisional.append(await first_200(http, service, receipt) - entered)
    finally:
        await service.aclose()
    start = await asyncio.to_thread(net.mine, 1)
    after_n: list[float] = []
    service = await start_service(config(net, workdir, provisional=False, poll=poll, need=need,
                                         start=start))
    try:
        async with aiohttp.ClientSession(trust_env=False) as http:
            for _ in range(confirmed):
                receipt = Receipt.generate()
                await asyncio.to_thread(net.pay, receipt.pid.hex(), XMR // 100)
                await asyncio.to_thread(net.mine, need)
                mined = time.monotonic()
                after_n.append(await first_200(http, service, receipt) - mined)
    finally:
        await service.aclose()
    ordered = sorted(provisional)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {
        "payments": payments, "poll_interval_secs": poll, "min_confirmations": need,
        "provisional_median_secs": round(statistics.median(provisional), 3),
        "provisional_p99_secs": round(p99, 3),
        "after_nth_block_median_secs": round(statistics.median(after_n), 3),
        "at_n_confirmations_expected_secs": need * BLOCK_SECS + round(statistics.median(after_n)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 payments: a smoke run")
    parser.add_argument("--payments", type=int, default=100)
    parser.add_argument("--confirmed", type=int, default=5)
    parser.add_argument("--poll", type=float, default=5.0, help="MONITOR_POLL_INTERVAL_SECS")
    parser.add_argument("--confirmations", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.payments, args.confirmed, args.poll, args.confirmations = 3, 1, 0.5, 3
    with tempfile.TemporaryDirectory(prefix="anonticket-bench-provisional-") as work:
        net = RegtestNetwork.start(Path(work) / "xmr")
        try:
            result = asyncio.run(measure(net, Path(work), payments=args.payments,
                                         confirmed=args.confirmed, poll=args.poll,
                                         need=args.confirmations))
        finally:
            net.stop()
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
