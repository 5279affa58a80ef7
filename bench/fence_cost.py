#!/usr/bin/env python3
"""What fencing every PostgreSQL write costs: the same write transaction, fenced and not,
in interleaved rounds on one throwaway cluster.

    python3 bench/fence_cost.py --rounds 10 --transactions 2000
    python3 bench/fence_cost.py --quick          # smoke: 2 rounds of 50

The write is the hot one, a debit under an Idempotency-Key (one per transaction, so the
fence's share is as large as it gets: under load a batch carries many debits per
transaction). Fenced, the storage's BEGIN carries the epoch check and takes a share lock of
the cursor row in the same round trip (``PostgresCore._write``); unfenced it is a plain
BEGIN. Each round runs both (order alternating), the client and the cluster pinned to
CPU 0 as in bench/run.py; prints the medians of the wall time and of the cluster's CPU
per transaction (``/proc``, clock ticks: read it over many transactions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from anonticket.domain.ids import PaymentId, Transfer  # noqa: E402
from anonticket.storage import DebitRequest  # noqa: E402
from anonticket.storage.postgres import PostgresStorage  # noqa: E402
from anonticket.storage.postgres.leader import take_over  # noqa: E402

NOW = 1_700_000_000
_TICK = os.sysconf("SC_CLK_TCK")


def cluster_cpu(postmaster: int) -> float:
    """Seconds of CPU the cluster used so far: the postmaster, its children alive (user +
    system) and those it has reaped (asyncpg's pool replaces a connection every 50,000
    queries, so the backend does not live through a run)."""
    def times(pid: int) -> list[int]:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:  # ended meanwhile: counted with the reaped ones
            return [0, 0, 0, 0, 0]
        fields = text.rsplit(")", 1)[1].split()
        return [int(fields[1]), int(fields[11]), int(fields[12]), int(fields[13]),
                int(fields[14])]

    ticks = sum(times(postmaster)[1:])
    for entry in Path("/proc").iterdir():
        if entry.name.isascii() and entry.name.isdigit():
            parent, user, system, _, _ = times(int(entry.name))
            if parent == postmaster:
                ticks += user + system
    return ticks / _TICK


async def measure(dsn: str, postmaster: int, rounds: int, transactions: int
                  ) -> dict[str, dict[str, float]]:
    storage = await PostgresStorage.open(dsn, pool_max_size=1)
    try:
        await take_over(storage)
        epoch = storage.fencing_epoch
        pid = PaymentId.generate()
        await storage.credit_transfers([Transfer(os.urandom(32), pid, 10**15, 1)], None, NOW)
        token = (await storage.claim_payments([pid.raw], 1, NOW))[pid.raw].token
        assert token is not None
        wall: dict[str, list[float]] = {"fenced": [], "unfenced": []}
        cpu: dict[str, list[float]] = {"fenced": [], "unfenced": []}
        serial = 0
        for n in range(rounds + 1):  # the first round warms up and is not counted
            order = ["fenced", "unfenced"] if n % 2 else ["unfenced", "fenced"]
            for mode in order:
                storage.fencing_epoch = epoch if mode == "fenced" else None
                started, cpu_before = time.perf_counter(), cluster_cpu(postmaster)
                for _ in range(transactions):
                    serial += 1
                    await storage.apply_debits(
                        [DebitRequest(token, 1, f"k{serial}", b"\x01" * 32, None)], NOW)
                if n:
                    wall[mode].append((time.perf_counter() - started) / transactions * 1e6)
                    cpu[mode].append((cluster_cpu(postmaster) - cpu_before) / transactions * 1e6)
        result = {mode: {"wall_us": statistics.median(wall[mode]),
                         "cluster_cpu_us": statistics.median(cpu[mode])} for mode in wall}
        result["fence"] = {key: result["fenced"][key] - result["unfenced"][key]
                           for key in ("wall_us", "cluster_cpu_us")}
        return result
    finally:
        await storage.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--transactions", type=int, default=2000, help="per round and mode")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 50: a smoke run")
    parser.add_argument("--cpus", default="0", help="taskset CPU list for client and cluster")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.transactions = 2, 50
    import pg_cluster

    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    cluster = pg_cluster.start_cluster(port=5433, cpus=args.cpus or None)
    try:
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        result = asyncio.run(measure(cluster.dsn(cluster.create_database()), postmaster,
                                     args.rounds, args.transactions))
    finally:
        pg_cluster.remove(cluster)
    for mode, figures in result.items():
        print(f"{mode:9} {figures['wall_us']:8.1f} µs a transaction, "
              f"cluster CPU {figures['cluster_cpu_us']:6.1f} µs")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
