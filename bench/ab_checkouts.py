#!/usr/bin/env python3
"""Two checkouts of anonticket in ONE run: a change measured against the commit before it.

    git worktree add /tmp/before HEAD~1
    python3 bench/ab_checkouts.py /tmp/before . --workdir /tmp/bw/full1 --rounds 6

Both services are started at once on copies of the same database (``bench.db`` and the
``priced-tokens.txt`` a full ``bench/run.py --workdir DIR`` run leaves in DIR), with
``ACCESS_PRICE_PER_DAY`` set as in its plans phase, both on CPU 0 and wrk on CPU 1. Each
round runs, for each checkout in turn (the order alternating by round), ``/health/live``
on the internal listener and then the debit scenario (a key of its own each), ``--secs``
each. A drift of the shared machine between separate runs is far larger than most single
changes (docs/benchmarks.md); interleaved, it hits both sides alike. Prints per checkout
the median ratio and the service's median CPU per request.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import uuid
from pathlib import Path

import loadgen
import procs

PRICE_PER_DAY = 10**10  # as bench/run.py's plans phase
LIVE = ["mode=get", "path=/health/live"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="checkout A (e.g. a worktree of HEAD~1)")
    parser.add_argument("after", type=Path, help="checkout B")
    parser.add_argument("--workdir", type=Path, required=True,
                        help="a full bench/run.py --workdir: its bench.db and priced-tokens.txt")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--secs", type=float, default=2.0)
    args = parser.parse_args(argv)
    tokens = args.workdir / "priced-tokens.txt"
    services, runs = [], {}
    try:
        for label, checkout in (("A", args.before), ("B", args.after)):
            work = args.workdir / f"ab-{label}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            shutil.copyfile(args.workdir / "bench.db", work / "bench.db")
            procs.REPO = checkout.resolve()  # start_service runs REPO/bin/anonticket
            services.append((label, procs.start_service(
                work / "bench.db", work, "serve", cpus="0",
                extra_env={"ACCESS_PRICE_PER_DAY": str(PRICE_PER_DAY)})))
            runs[label] = []
        for round_ in range(args.rounds):
            for label, service in services[::1 if round_ % 2 == 0 else -1]:
                live = loadgen.wrk(service.internal_address, LIVE, args.secs, server=service,
                                   cpus="1")
                debit = loadgen.wrk(service.internal_address,
                                    ["mode=debit", f"keys={tokens}",
                                     f"nonce={uuid.uuid4().hex[:12]}"],
                                    args.secs, server=service, cpus="1")
                if debit.outcomes.get("200", 0) != debit.requests:
                    raise RuntimeError(f"{label}: not every debit was granted: {debit.outcomes}")
                runs[label].append((debit.rps / live.rps, live.server_cpu_us, debit.server_cpu_us))
    finally:
        for _, service in services:
            service.stop()
    for label, checkout in (("A", args.before), ("B", args.after)):
        ratios, live_cpu, debit_cpu = zip(*runs[label], strict=True)
        print(f"{label} {checkout}: debit/live ratio {statistics.median(ratios):.3f} "
              f"(rounds {', '.join(f'{r:.3f}' for r in ratios)}); service CPU per request "
              f"live {statistics.median(live_cpu):.0f} us, debit {statistics.median(debit_cpu):.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
