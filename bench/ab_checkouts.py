#!/usr/bin/env python3
"""Two checkouts of anonticket in ONE run: a change measured against the commit before it.

    git worktree add /tmp/before HEAD~1
    python3 bench/ab_checkouts.py /tmp/before . --workdir /tmp/bw/full1 --rounds 6
    python3 bench/ab_checkouts.py /tmp/before . --workdir /tmp/bw/full1 \
        --scenarios redeem_claimed,token,check,debit

Both services are started at once on copies of the same database (``bench.db`` and the
``claimed.txt``, ``priced-tokens.txt`` a ``bench/run.py --phases tcp,plans --workdir DIR``
run leaves in DIR), with ``ACCESS_PRICE_PER_DAY`` set as in its plans phase, both on CPU 0
and wrk on CPU 1. Each round runs, for each checkout in turn (the order alternating by
round) and each scenario, ``/health/live`` on the scenario's listener and then the scenario,
``--secs`` each: ``debit`` (internal listener, a key of its own each), ``redeem_claimed``
(already-claimed PIDs: the memory-first redeem path), ``token`` (introspection of issued,
expiring tokens), ``check`` (the gateway check with those tokens, internal listener).
A checkout without its own ``.venv`` needs one (a symlink to this checkout's will do:
``bin/anonticket`` puts its own tree first on the path). A drift of the shared machine between separate runs is far larger than most single
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
SCENARIOS = ("debit", "redeem_claimed", "token", "check")


def scenario_load(name: str, workdir: Path) -> tuple[list[str], bool]:
    """wrk's options for a scenario, and whether it runs on the internal listener."""
    tokens = workdir / "priced-tokens.txt"
    if name == "debit":
        return ["mode=debit", f"keys={tokens}", f"nonce={uuid.uuid4().hex[:12]}"], True
    if name == "redeem_claimed":
        return ["mode=redeem_claimed", f"keys={workdir / 'claimed.txt'}"], False
    if name == "token":
        return ["mode=token", f"keys={tokens}", "expiry=1"], False
    if name == "check":
        return ["mode=bearer", f"keys={tokens}", "path=/api/v1/check"], True
    raise ValueError(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="checkout A (e.g. a worktree of HEAD~1)")
    parser.add_argument("after", type=Path, help="checkout B")
    parser.add_argument("--workdir", type=Path, required=True,
                        help="a full bench/run.py --workdir: its bench.db and priced-tokens.txt")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--secs", type=float, default=2.0)
    parser.add_argument("--scenarios", default="debit",
                        help=f"comma-separated, of {', '.join(SCENARIOS)} (default: debit)")
    args = parser.parse_args(argv)
    scenarios = args.scenarios.split(",")
    for name in scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    services: list = []
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
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
            for name in scenarios:
                runs[label, name] = []
        for round_ in range(args.rounds):
            for label, service in services[::1 if round_ % 2 == 0 else -1]:
                for name in scenarios:
                    options, internal = scenario_load(name, args.workdir)
                    address = service.internal_address if internal else service.address
                    live = loadgen.wrk(address, LIVE, args.secs, server=service, cpus="1")
                    load = loadgen.wrk(address, options, args.secs, server=service, cpus="1")
                    if load.outcomes.get("200", 0) != load.requests:
                        raise RuntimeError(f"{label} {name}: not every answer was 200: {load.outcomes}")
                    runs[label, name].append(
                        (load.rps / live.rps, live.server_cpu_us, load.server_cpu_us))
    finally:
        for _, service in services:
            service.stop()
    for name in scenarios:
        for label, checkout in (("A", args.before), ("B", args.after)):
            ratios, live_cpu, load_cpu = zip(*runs[label, name], strict=True)
            print(f"{name} {label} {checkout}: {name}/live ratio {statistics.median(ratios):.3f} "
                  f"(rounds {', '.join(f'{r:.3f}' for r in ratios)}); service CPU per request "
                  f"live {statistics.median(live_cpu):.0f} us, {name} {statistics.median(load_cpu):.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
