#!/usr/bin/env python3
"""SQLite and PostgreSQL in ONE run: both services up at once, their (baseline, scenario)
pairs interleaved, so a drift of the shared machine hits both backends alike.

    python3 bench/ab_backends.py --payments 100000 --rounds 10

The answers from memory only (the unknown-PID flood, already claimed, issued tokens): each
round runs, for each backend in turn (the order alternating by round), ``/health/live`` then
the scenario, 1 s each, with wrk pinned to CPU 1 and both services and the cluster on CPU 0
(the other one idles meanwhile: only its background timers run). Prints the median ratio per backend and
scenario, and the service's CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dataset  # noqa: E402
import loadgen  # noqa: E402
from procs import REPO, start_service  # noqa: E402

LIVE = ["mode=get", "path=/health/live"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--claims", type=int, default=20_000, help="PIDs redeemed first")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    import pg_cluster

    work = Path(tempfile.mkdtemp(prefix="anonticket-ab-"))
    cluster = pg_cluster.start_cluster(cpus="0")
    services = {}
    try:
        targets = {"sqlite": work / "sqlite" / "bench.db",
                   "postgres": cluster.dsn(cluster.create_database())}
        keys: dict[str, dict[str, Path]] = {}
        for name, db in targets.items():
            (work / name).mkdir(exist_ok=True)
            asyncio.run(dataset.build_database(db, args.payments, workdir=work / name))
            dataset.settle(db)
            service = start_service(db, work / name, f"ab-{name}", cpus="0")  # type: ignore[arg-type]
            services[name] = service
            pids = dataset.read_pids(work / name)[:args.claims]
            new = dataset.write_keys(work / name / "new.txt", pids)
            loadgen.wrk(service.address, ["mode=redeem_new", f"keys={new}"], args.claims / 1000 + 5,
                        server=service, cpus="1")
            claimed, tokens = dataset.claimed_keys(db, args.claims)
            keys[name] = {"claimed": dataset.write_keys(work / name / "claimed.txt", claimed),
                          "tokens": dataset.write_keys(work / name / "tokens.txt", tokens)}
        scenarios = {
            "redeem_unknown_flood": lambda name: ["mode=redeem_unknown"],
            "redeem_already_claimed": lambda name: ["mode=redeem_claimed", f"keys={keys[name]['claimed']}"],
            "token_issued": lambda name: ["mode=token", f"keys={keys[name]['tokens']}"],
        }
        results: dict[str, dict[str, list[dict[str, float]]]] = {}
        for scenario, script in scenarios.items():
            for number in range(args.rounds):
                order = list(services) if number % 2 == 0 else list(services)[::-1]
                for name in order:
                    service = services[name]
                    base = loadgen.wrk(service.address, LIVE, 1, server=service, cpus="1")
                    run = loadgen.wrk(service.address, script(name), 1, server=service, cpus="1")
                    results.setdefault(scenario, {}).setdefault(name, []).append(
                        {"ratio": run.rps / base.rps, "cpu_us": run.server_cpu_us,
                         "base_cpu_us": base.server_cpu_us, "rps": run.rps, "base_rps": base.rps})
            line = [scenario]
            for name, runs in results[scenario].items():
                ratio = statistics.median(r["ratio"] for r in runs)
                quotient = statistics.median(r["base_cpu_us"] / r["cpu_us"] for r in runs)
                line.append(f"{name} ratio {ratio:.3f} (cpu quotient {quotient:.3f}, "
                            f"{statistics.median(r['base_cpu_us'] for r in runs):.0f}/"
                            f"{statistics.median(r['cpu_us'] for r in runs):.0f} µs)")
            print("  ".join(line), flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        for service in services.values():
            service.stop()
        pg_cluster.remove(cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
