#!/usr/bin/env python3
"""Takeover time on PostgreSQL with a big database: SIGKILL the active instance, time the
standby until it answers ``/health/ready`` 200 and until it serves a redeem.

    python3 bench/takeover.py                          # own cluster, 1M payments, 5 rounds
    python3 bench/takeover.py --dsn postgresql:///db?host=/tmp/pg.x --rounds 5

Two real ``bin/anonticket serve`` processes (production defaults, monitor off: there is no
wallet; ``DATABASE_LEADER_CHECK_SECS`` at its default of 1 s) on one database, both pinned
to the server CPUs with the cluster, as in bench/run.py. Each round: the active one is
SIGKILLed; the clock starts just before the kill; the survivor is polled every 5 ms over
its public listener (``/health/ready``, then one redeem of a PID not redeemed before,
which must answer 200); then the killed one is started again and waits as the
standby, and the next round kills the other, after a random 1.5–2.5 s (so the kill
falls anywhere in the standby's round of ``DATABASE_LEADER_CHECK_SECS``). Every wait has a deadline; the cluster this
script started is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dataset  # noqa: E402
from procs import REPO, Proc, http_get_ok, start_service  # noqa: E402

GATEWAY_TOKENS = 20_000  # bench/run.py's
POLL_SECS = 0.005
ROUND_DEADLINE_SECS = 30.0


def redeem(address: str, pid: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """One POST /api/v1/redeem over TCP ("host:port"); (status, body), (0, b"") if refused."""
    host, port = address.rsplit(":", 1)
    body = json.dumps({"pid": pid}).encode()
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(b"POST /api/v1/redeem HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
                         b"Content-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    except OSError:
        return 0, b""
    head, _, rest = answer.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), rest
    except (IndexError, ValueError):
        return 0, b""


def wait_until(what: str, predicate: Any, started: float, deadline: float) -> float:
    """Seconds from ``started`` to the first true ``predicate()``, polling every 5 ms."""
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {ROUND_DEADLINE_SECS:.0f} s")
        time.sleep(POLL_SECS)
    return time.monotonic() - started


def measure(dsn: str, workdir: Path, pids: list[str], rounds: int, cpus: str | None) -> dict[str, Any]:
    fresh = iter(pids)  # never redeemed: each round's redeem must be a real claim
    instances: list[Proc] = []
    results: list[dict[str, float]] = []
    try:
        first = start_service(dsn, workdir, "takeover-0", cpus=cpus)  # type: ignore[arg-type]
        instances.append(first)
        second = start_service(dsn, workdir, "takeover-1", cpus=cpus,  # type: ignore[arg-type]
                               wait_ready=False)
        instances.append(second)
        if http_get_ok(second.address, "/health/ready"):
            raise RuntimeError("the second instance is ready while the first holds the lock")
        status, _ = redeem(first.address, next(fresh))
        if status != 200:
            raise RuntimeError(f"the active instance answered a redeem {status}")
        active, standby = first, second
        for number in range(rounds):
            # both settled; a random wait, so the kill lands anywhere in the standby's 1 s round
            time.sleep(random.uniform(1.5, 2.5))
            started = time.monotonic()
            deadline = started + ROUND_DEADLINE_SECS
            active.kill()
            ready = wait_until("ready", lambda: http_get_ok(standby.address, "/health/ready", 0.5),
                               started, deadline)
            pid = next(fresh)
            answers: list[int] = []

            def served() -> bool:
                status, body = redeem(standby.address, pid)  # noqa: B023
                answers.append(status)
                return status == 200 and (b'"success"' in body or b'"already_claimed"' in body)

            redeemed = wait_until("redeem", served, started, deadline)
            results.append({"round": number + 1, "ready_secs": round(ready, 3),
                            "redeem_secs": round(redeemed, 3),
                            "redeem_tries": len(answers)})
            print(f"  round {number + 1}: ready after {ready:.3f} s, redeem served after "
                  f"{redeemed:.3f} s", flush=True)
            # the killed one comes back as the standby
            name = f"takeover-{len(instances)}"
            again = start_service(dsn, workdir, name, cpus=cpus, wait_ready=False)  # type: ignore[arg-type]
            instances.append(again)
            active, standby = standby, again
    finally:
        for proc in instances:
            if proc.proc.poll() is None:
                proc.stop()
    ready_all = [r["ready_secs"] for r in results]
    redeem_all = [r["redeem_secs"] for r in results]
    return {"rounds": results,
            "ready_median_secs": statistics.median(ready_all),
            "ready_range_secs": [min(ready_all), max(ready_all)],
            "redeem_median_secs": statistics.median(redeem_all),
            "redeem_range_secs": [min(redeem_all), max(redeem_all)],
            "startup_live_secs": round(first.startup_secs, 3),
            "startup_ready_secs": round(first.ready_secs, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="an existing database (postgresql://…) with payments of "
                        "bench/dataset.py and its pids.txt in --workdir; default: a throwaway "
                        "cluster and a fresh database of --payments")
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list for the cluster and "
                        "both instances ('' for none)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    args = parser.parse_args(argv)
    cpus = args.server_cpus or None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="anonticket-takeover-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = None
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        dsn = args.dsn
        if dsn is None:
            sys.path.insert(0, str(REPO / "tests"))
            import pg_cluster

            cluster = pg_cluster.start_cluster(cpus=cpus)
            dsn = cluster.dsn(cluster.create_database())
            print(f"building a PostgreSQL database of {args.payments} payments ...", flush=True)
            result["dataset"] = asyncio.run(dataset.build_database(dsn, args.payments, workdir=workdir))
            result["settle"] = dataset.settle(dsn)
        pids = dataset.read_pids(workdir)
        # at random from the last quarter, below the gateway phase's share: bench/run.py's
        # redeem pools start at the front and at the middle, so these are almost surely
        # unredeemed in a benchmark's database too, and in the database of an earlier run of
        # this script (a PID found redeemed after all is answered already_claimed, also a 200)
        result["payments"] = len(pids)
        end = len(pids) - min(GATEWAY_TOKENS, len(pids) // 10)
        fresh = random.sample(pids[len(pids) * 3 // 4:end], args.rounds + 1)
        result.update(measure(dsn, workdir, fresh, args.rounds, cpus))
    finally:
        if cluster is not None:
            pg_cluster.remove(cluster)
    print(f"takeover after SIGKILL with {result['payments']:,} payments: ready "
          f"{result['ready_median_secs']:.2f} s (median, {result['ready_range_secs'][0]:.2f}–"
          f"{result['ready_range_secs'][1]:.2f}), redeem served {result['redeem_median_secs']:.2f} s "
          f"({result['redeem_range_secs'][0]:.2f}–{result['redeem_range_secs'][1]:.2f})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
