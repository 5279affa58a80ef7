#!/usr/bin/env python3
"""The anonticket benchmark: one command, a table on stdout and a JSON file.

    python3 bench/run.py                       # full: 1M payments, 15 pairs of 1 s runs
    python3 bench/run.py --quick --out x.json  # smoke: 2,000 payments, 1 s runs

Builds a database of N confirmed unclaimed payments through the storage layer, starts
the real ``bin/anonticket serve`` (production defaults, monitor off) and a bare aiohttp
app, and drives them with wrk (TCP) and bench/uds_client.py (Unix socket), each a
separate process. Every scenario is run as back-to-back (baseline, scenario) pairs and
reported as the median ratio. See docs/benchmarks.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

import dataset  # noqa: E402
import loadgen  # noqa: E402
from credentials import credential_phase  # noqa: E402
from gateway import Nginx, Together  # noqa: E402
from ingest import run_in_own_process  # noqa: E402
from procs import REPO, Proc, cpu_secs_of_tree, postmaster_pid, start_bare, start_service  # noqa: E402
from report import (  # noqa: E402
    RSS_TARGET_MB,
    STARTUP_TARGET_SECS,
    ingest_target_for,
    summarise_pairs,
    table,
    targets_for,
)

LIVE = ["mode=get", "path=/health/live"]
# --quick's runs are 1 s; on a busy machine one can end before its first answer, which
# measures nothing: such a run is repeated with twice the time, at most this many times more
# (a run that uses up PIDs takes fresh ones: the pools hold these runs too)
QUICK_RETRIES = 3
PRICED_PER_SEC = 10_000  # priced PIDs set aside per second of a plans redeem run (~3,000/s used)
RECEIPTS_PER_SEC = 10_000  # receipts (and as many bare PIDs) per second of a receipt-scenario run
# piconero a day for the plans phase: 1 XMR (every dataset payment) buys 100 days
PRICE_PER_DAY = 10**10
GATEWAY_TOKENS = 20_000
PHASES = ("tcp", "plans", "gateway", "credential", "uds", "ingest")


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.db: Path | str = workdir / "bench.db"
        self.cluster: Any = None  # a Cluster of tests/pg_cluster.py with --backend postgres
        self.pids: list[str] = []
        self.priced_pids: list[str] = []  # credited with a price in force (plans phase)
        self.gateway_pids: list[str] = []
        # the receipt scenario: receipt payments, and as many bare-PID payments for its baseline
        self.receipts: list[str] = []
        self.twin_pids: list[str] = []
        self.used: dict[str, int] = {}
        self.result: dict[str, Any] = {"scenarios": {}}

    # ------------------------------------------------------------------ helpers
    def wrk(self, target: Proc, script_args: list[str], secs: float | None = None,
            address: str | None = None) -> loadgen.Load:
        return loadgen.wrk(address or target.address, script_args, secs or self.args.secs,
                           server=target, cpus=self.args.client_cpus)

    def take_pids(self, pool: str, runs_left: int, per_sec: int, secs: float) -> Path:
        """A fresh slice of never-redeemed PIDs for one run, written to a file for the script.

        Half of the PIDs feed redeem-success runs, half the mixed load, and the priced ones
        the plans phase; each run gets enough for its duration at ``per_sec``, never more
        than its share of what is left.
        """
        half = len(self.pids) // 2
        pids = {"priced": self.priced_pids, "receipt": self.receipts,
                "twin": self.twin_pids}.get(pool, self.pids)
        start, end = {"new": (0, half), "mixed": (half, len(pids))}.get(pool, (0, len(pids)))
        used = self.used.setdefault(pool, start)
        count = max(1, min(int(secs * per_sec), (end - used) // max(runs_left, 1)))
        chunk = pids[used:min(used + count, end)]
        if not chunk:
            raise RuntimeError("out of unredeemed PIDs; use more --payments")
        self.used[pool] = used + len(chunk)
        return dataset.write_keys(self.workdir / f"{pool}.txt", chunk)

    def runs_planned(self) -> int:
        """The runs of one scenario, counting the warm-up and --quick's spare runs."""
        return self.args.pairs + 1 + (QUICK_RETRIES if self.args.quick else 0)

    def answered(self, run: Callable[..., loadgen.Load]) -> loadgen.Load:
        """One load; in --quick, again with twice the time while it got no answer at all."""
        load, secs = run(), self.args.secs
        for _ in range(QUICK_RETRIES if self.args.quick else 0):
            if load.requests:
                break
            secs *= 2
            print(f"    no answer in {secs / 2:g} s (a busy machine): again for {secs:g} s", flush=True)
            load = run(secs)
        return load

    def pairs(self, name: str, baseline, scenario, expect: dict[str, str],  # type: ignore[no-untyped-def]
              warmup=None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        """Warm up, then ``--pairs`` back-to-back (baseline, scenario) runs.

        Every other pair runs the scenario first, so a drift in the machine's speed
        (other tenants come and go) does not always favour the same side.
        """
        if not self.args.quick:
            (warmup or scenario)(min(1.0, self.args.secs))
        runs = []
        for i in range(self.args.pairs):
            if i % 2:
                second = self.answered(scenario)
                runs.append((self.answered(baseline), second))
            else:
                first = self.answered(baseline)
                runs.append((first, self.answered(scenario)))
        summary = summarise_pairs(name, runs, expect, targets_for(self.args.backend))
        self.result["scenarios"][name] = summary
        print(f"  {name}: ratio {summary['ratio']:.2f} ({summary['rps']:.0f} req/s)"
              + ("" if summary["checks_ok"] else f"  CHECKS: {summary['problems']}"), flush=True)
        return summary

    # ------------------------------------------------------------------ phases
    def build(self) -> None:
        cache = self.args.dataset_cache if self.args.backend == "sqlite" else None
        cached = cache / f"payments-{self.args.payments}.db" if cache else None
        if self.args.backend == "postgres":
            print(f"building a PostgreSQL database of {self.args.payments} payments ...", flush=True)
            self.result["dataset"] = asyncio.run(dataset.build_database(
                self.db, self.args.payments, workdir=self.workdir))
        elif cached is not None and cached.exists():
            shutil.copyfile(cached, self.db)
            shutil.copyfile(cached.with_suffix(".pids"), self.workdir / "pids.txt")
            self.result["dataset"] = {"payments": self.args.payments, "reused": str(cached)}
        else:
            print(f"building a database of {self.args.payments} payments ...", flush=True)
            self.result["dataset"] = asyncio.run(dataset.build_database(self.db, self.args.payments))
            if cached is not None:
                cache.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.db, cached)
                shutil.copyfile(self.workdir / "pids.txt", cached.with_suffix(".pids"))
        self.pids = dataset.read_pids(self.workdir)
        # set apart before the redeem pools are cut: the gateway phase redeems these itself
        share = min(GATEWAY_TOKENS, len(self.pids) // 10)
        self.pids, self.gateway_pids = self.pids[:-share], self.pids[-share:]
        # PIDs whose credit bought time, as with ACCESS_PRICE_PER_DAY set; into the working
        # copy only, so the cached dataset stays what every earlier run measured
        count = round(self.runs_planned() * self.args.secs * PRICED_PER_SEC)
        print(f"crediting {count} payments at a price per day ...", flush=True)
        self.priced_pids, self.result["priced_dataset"] = asyncio.run(
            dataset.credit_priced(self.db, count, PRICE_PER_DAY))
        count = round((self.args.pairs + 1) * self.args.secs * RECEIPTS_PER_SEC)
        print(f"crediting {count} bare-PID payments, marking all so far as before receipts, "
              f"then {count} receipt payments ...", flush=True)
        self.twin_pids, _ = asyncio.run(dataset.credit_priced(self.db, count, None, seed=4))
        dataset.mark_before_receipts(self.db)
        self.receipts = asyncio.run(dataset.credit_receipts(self.db, count))
        if self.args.backend == "postgres":
            print("VACUUM (ANALYZE) and CHECKPOINT of the fresh PostgreSQL database ...", flush=True)
            self.result["settle"] = dataset.settle(self.db)

    def tcp_phase(self) -> None:
        args = self.args
        bare = start_bare(self.workdir, cpus=args.server_cpus)
        service = start_service(self.db, self.workdir, "serve-tcp", cpus=args.server_cpus)
        startups = [service.startup_secs]
        try:
            live = lambda secs=None: self.wrk(service, LIVE, secs)  # noqa: E731
            self.pairs("health_vs_bare", lambda secs=None: self.wrk(bare, ["mode=get", "path=/"], secs),
                       live, {"200": "all"}, warmup=lambda secs: (live(secs), self.wrk(bare, ["mode=get", "path=/"], secs)))
            bare_rc = bare.stop()
            if bare_rc != 0:
                raise RuntimeError(f"bare app exited with {bare_rc}")
            live(min(1.0, args.secs))

            runs_left = {"new": self.runs_planned(), "mixed": self.runs_planned()}

            def new(secs: float | None = None) -> loadgen.Load:
                keys = self.take_pids("new", runs_left["new"], 20_000, secs or args.secs)
                runs_left["new"] -= 1
                return self.wrk(service, ["mode=redeem_new", f"keys={keys}"], secs)

            self.pairs("redeem_success", live, new, {"200": "all", "success": "all"})
            self.receipt_scenario(service)
            claimed_pids, tokens = dataset.claimed_keys(self.db, 100_000)
            claimed_file = dataset.write_keys(self.workdir / "claimed.txt", claimed_pids)
            token_file = dataset.write_keys(self.workdir / "tokens.txt", tokens)
            self.result["issued_tokens_probed"] = len(tokens)
            self.pairs("redeem_already_claimed", live,
                       lambda secs=None: self.wrk(service, ["mode=redeem_claimed", f"keys={claimed_file}"], secs),
                       {"200": "all", "already_claimed": "all"})
            self.pairs("redeem_unknown_flood", live,
                       lambda secs=None: self.wrk(service, ["mode=redeem_unknown"], secs),
                       {"404": "all"})
            self.pairs("token_issued", live,
                       lambda secs=None: self.wrk(service, ["mode=token", f"keys={token_file}"], secs),
                       {"200": "all", "active": "all"})
            self.pairs("token_unknown", live,
                       lambda secs=None: self.wrk(service, ["mode=token_unknown"], secs),
                       {"404": "all"})

            def mixed(secs: float | None = None) -> loadgen.Load:
                keys = self.take_pids("mixed", runs_left["mixed"], 4_000, secs or args.secs)
                runs_left["mixed"] -= 1
                return self.wrk(service, ["mode=mixed", f"new={keys}", f"claimed={claimed_file}",
                                          f"tokens={token_file}"], secs)

            self.pairs("mixed", live, mixed, {"success": "some", "already_claimed": "some",
                                              "404": "some", "active": "some"})
            self.rss(service)
        finally:
            rc = service.stop()
            bare.stop()
        if rc != 0:
            raise RuntimeError(f"anonticket serve exited with {rc} on SIGTERM")
        self.result["startup_runs_tcp"] = startups

    def receipt_scenario(self, service: Proc) -> None:
        """Redeem by receipt against redeem by bare PID, each payment once: the receipt
        costs one SHA3 more to find its PID and one more to derive its token (issue 22's
        target: within 10 %). The baseline's payments are marked as before receipts, so the
        service runs on its production default, REDEEM_PLAIN_PIDS=refuse."""
        runs_left = {"twin": self.args.pairs + 1, "receipt": self.args.pairs + 1}

        def redeem(pool: str, extra: list[str]):  # type: ignore[no-untyped-def]
            def run(secs: float | None = None) -> loadgen.Load:
                keys = self.take_pids(pool, runs_left[pool], RECEIPTS_PER_SEC, secs or self.args.secs)
                runs_left[pool] -= 1
                return self.wrk(service, ["mode=redeem_new", f"keys={keys}", *extra], secs)
            return run

        self.pairs("redeem_receipt_vs_pid", redeem("twin", []), redeem("receipt", ["field=receipt"]),
                   {"200": "all", "success": "all"})

    def plans_phase(self) -> None:
        """Plans on (``ACCESS_PRICE_PER_DAY``): redeems and introspection of tokens that
        expire, and debits, which the operator's services send to the internal listener."""
        args = self.args
        service = start_service(self.db, self.workdir, "serve-plans", cpus=args.server_cpus,
                                extra_env={"ACCESS_PRICE_PER_DAY": str(PRICE_PER_DAY)})
        try:
            live = lambda secs=None: self.wrk(service, LIVE, secs)  # noqa: E731
            live(min(1.0, args.secs))
            runs_left = self.runs_planned()

            def new(secs: float | None = None) -> loadgen.Load:
                nonlocal runs_left
                keys = self.take_pids("priced", runs_left, PRICED_PER_SEC, secs or args.secs)
                runs_left -= 1
                return self.wrk(service, ["mode=redeem_new", f"keys={keys}", "expiry=1"], secs)

            self.pairs("redeem_success_plans", live, new,
                       {"200": "all", "success": "all", "expires": "all"})
            tokens = dataset.write_keys(self.workdir / "priced-tokens.txt",
                                        dataset.expiring_tokens(self.db, 100_000))
            self.pairs("token_issued_plans", live,
                       lambda secs=None: self.wrk(service, ["mode=token", f"keys={tokens}",
                                                            "expiry=1"], secs),
                       {"200": "all", "active": "all", "expires": "all"})
            internal = service.internal_address
            # the baseline on the listener the debits use: it has its own middleware and bound
            internal_live = lambda secs=None: self.wrk(service, LIVE, secs, internal)  # noqa: E731
            self.pairs("debit", internal_live,
                       lambda secs=None: self.wrk(service, ["mode=debit", f"keys={tokens}",
                                                            f"nonce={uuid.uuid4().hex[:12]}"],
                                                  secs, internal),
                       {"200": "all", "debited": "all"})
        finally:
            rc = service.stop()
        if rc != 0:
            raise RuntimeError(f"anonticket serve (plans) exited with {rc} on SIGTERM")

    def rss(self, service: Proc) -> None:
        probes = self.args.probes
        cap = min(600.0, probes / 2000 + 10)
        print(f"  {probes} random probes for the peak RSS ...", flush=True)
        load = self.wrk(service, ["mode=probe", f"limit={probes}"], cap)
        hwm = service.status_kb("VmHWM") / 1024
        self.result["rss"] = {
            "probes": load.requests, "answered_404": load.outcomes.get("404", 0), "probe_rps": round(load.rps, 1),
            "vmhwm_mb": round(hwm, 1), "vmrss_mb": round(service.status_kb("VmRSS") / 1024, 1),
            "target_mb": RSS_TARGET_MB, "met": hwm <= RSS_TARGET_MB and load.outcomes.get("404", 0) >= probes,
        }
        print(f"  peak RSS {hwm:.1f} MB", flush=True)

    def uds_phase(self) -> None:
        """Start-up over the Unix socket listener (3 starts) and the UDS client scenarios."""
        args = self.args
        sock = Path(tempfile.mkdtemp(prefix="atb-", dir="/tmp")) / "public.sock"
        token_file = self.workdir / "tokens.txt"
        startups, ready = [], []
        try:
            for attempt in range(args.starts):
                service = start_service(self.db, self.workdir, f"serve-uds-{attempt}",
                                        unix_socket=sock, cpus=args.server_cpus)
                startups.append(round(service.startup_secs, 3))
                ready.append(round(service.ready_secs, 3))
                try:
                    if attempt == 0:
                        self.uds_scenarios(service, str(sock), token_file)
                finally:
                    rc = service.stop()
                if rc != 0:
                    raise RuntimeError(f"anonticket serve (unix socket) exited with {rc}")
        finally:
            shutil.rmtree(sock.parent, ignore_errors=True)
        median = sorted(startups)[len(startups) // 2]
        # on PostgreSQL /health/live answers before the views are loaded (a standby answers
        # it too); /health/ready is 200 once this instance is active, its views loaded
        self.result["startup"] = {"runs": startups, "ready_runs": ready, "median_secs": median,
                                  "target_secs": STARTUP_TARGET_SECS,
                                  "met": median <= STARTUP_TARGET_SECS}

    def uds_scenarios(self, service: Proc, sock: str, token_file: Path) -> None:
        def uds(script: list[str]):  # type: ignore[no-untyped-def]
            return lambda secs=None: loadgen.uds(sock, script, secs or self.args.secs,
                                                 server=service, cpus=self.args.client_cpus)

        live = uds(["--mode", "get", "--path", "/health/live"])
        self.pairs("uds_redeem_unknown_flood", live, uds(["--mode", "redeem_unknown"]), {"404": "all"})
        # a fresh process: the record cache starts empty, so the first lookup of each issued
        # token reads SQLite; this is the "just restarted" figure, not the warm one over TCP
        self.pairs("uds_token_issued_cold", live,
                   uds(["--mode", "token", "--keys", str(token_file)]),
                   {"200": "all", "active": "all"})

    def gateway_phase(self) -> None:
        """The gateway check alone, then deploy/nginx-gateway.conf in front of a file
        (bench/gateway.py): one service and one nginx worker on the server CPUs."""
        args = self.args
        if shutil.which("nginx") is None:
            print("  gateway: nginx is not installed, the nginx figures are skipped", flush=True)
        service = start_service(self.db, self.workdir, "serve-gateway", cpus=args.server_cpus)
        nginx: Nginx | None = None
        try:
            # issued through the service itself, so its record cache holds them as a
            # long-running service's holds the tokens in use (the uncached case is the
            # Unix socket phase's "cache cold" figure)
            pids = dataset.write_keys(self.workdir / "gateway-pids.txt", self.gateway_pids)
            self.wrk(service, ["mode=redeem_new", f"keys={pids}"], len(self.gateway_pids) / 1000 + 5)
            tokens = dataset.tokens_of(self.db, self.gateway_pids)
            # wrk drops what it has not sent when the list runs out: nearly all is enough
            if len(tokens) < 0.9 * len(self.gateway_pids):
                raise RuntimeError(f"only {len(tokens)} of {len(self.gateway_pids)} gateway PIDs redeemed")
            many = dataset.write_keys(self.workdir / "gateway-tokens.txt", tokens)
            # the cached location: a few customers making many requests each (one per
            # connection); with thousands, each one's first request in a TTL is a miss
            few = dataset.write_keys(self.workdir / "gateway-few.txt", tokens[:loadgen.CONNECTIONS])
            self.result["gateway_tokens"] = {"check": len(tokens), "cached": loadgen.CONNECTIONS}

            def load(target: Any, path: str, keys: Path):  # type: ignore[no-untyped-def]
                def run(secs: float | None = None) -> loadgen.Load:
                    return loadgen.wrk(target.address, ["mode=bearer", f"keys={keys}", f"path={path}"],
                                       secs or args.secs, server=target, cpus=args.client_cpus)
                return run

            internal = Together(service.internal_address, service)
            self.pairs("gateway_check", load(internal, "/health/live", many),
                       load(internal, "/api/v1/check", many), {"200": "all"})
            if shutil.which("nginx") is None:
                return
            nginx = Nginx(service.address, service.internal_address, args.server_cpus)
            both = Together(nginx.address, nginx, service)
            page = "index.html"
            self.pairs("gateway_nginx_check", load(both, f"/bench-live/{page}", many),
                       load(both, f"/{page}", many), {"200": "all"})
            self.pairs("gateway_nginx_cached", load(both, f"/open/{page}", few),
                       load(both, f"/static/{page}", few), {"200": "all"})
            self.pairs("gateway_nginx_metered", load(both, f"/{page}", many),
                       load(both, f"/api/{page}", many), {"200": "all"})
        finally:
            if nginx is not None:
                nginx.stop()
            rc = service.stop()
        if rc != 0:
            raise RuntimeError(f"anonticket serve (gateway) exited with {rc} on SIGTERM")

    def credential_phase(self) -> None:
        """Issuing a credential, the check with one, the shipped verifier (bench/credentials.py)."""
        credential_phase(self)

    def ingest_phase(self) -> None:
        args = self.args
        print(f"  monitor ingest: {args.ingest_rounds} polls of {args.ingest_batch} transfers ...",
              flush=True)
        result = run_in_own_process(self.db, self.workdir, args.ingest_batch, args.ingest_rounds)
        empty_db: Path | str = self.workdir / "empty.db"
        if self.cluster is not None:
            empty_db = self.cluster.dsn(self.cluster.create_database())
        result["database"] = f"the benchmark's, {args.payments} payments and more"
        result["target_per_sec"] = ingest_target_for(args.backend)
        result["met"] = result["transfers_per_sec"] >= result["target_per_sec"]
        self.result["ingest"] = result
        # context, not the target's figure: the same polls into an empty database, where
        # every B-tree still fits in memory
        empty = run_in_own_process(empty_db, self.workdir, args.ingest_batch,
                                   max(1, args.ingest_rounds // 2 + 1))
        empty["database"] = "empty at the first poll"
        self.result["ingest_empty_db"] = empty


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    loop = "asyncio"  # the service's loop (no uvloop), and so the bare app's
    return {
        "command": " ".join(["python3 bench/run.py", *sys.argv[1:]]),
        "backend": args.backend,
        "quick": args.quick, "payments": args.payments, "secs_per_run": args.secs,
        "pairs": args.pairs, "connections": loadgen.CONNECTIONS,
        "client": "wrk -t1 -c32" + (f" pinned to CPU {args.client_cpus}" if args.client_cpus else ""),
        "server_cpus": args.server_cpus or "any",
        "event_loop": loop, "python": platform.python_version(), "aiohttp": aiohttp.__version__,
        "cpus": os.cpu_count(), "git": commit, "loadavg_before": os.getloadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="anonticket benchmark (see docs/benchmarks.md)")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite",
                        help="postgres: a throwaway PostgreSQL 15 cluster (tests/pg_cluster.py), "
                        "pinned to the server CPUs like the service")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: 2,000 payments, 1 s runs, 1 pair, small ingest")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--payments", type=int)
    parser.add_argument("--secs", type=float, help="seconds per measured run")
    parser.add_argument("--pairs", type=int, help="(baseline, scenario) pairs per scenario")
    parser.add_argument("--probes", type=int, help="random probes before reading the peak RSS")
    parser.add_argument("--starts", type=int, help="server starts timed for the start-up figure")
    parser.add_argument("--ingest-batch", type=int)
    parser.add_argument("--ingest-rounds", type=int)
    parser.add_argument("--client-cpus", default="1", help="taskset CPU list for the load "
                        "generator ('' for none)")
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list for the servers "
                        "('' for none); apart from the client's, so neither steals the other's core")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="comma-separated phases to run (default: all of "
                        f"{','.join(PHASES)}); the table shows what ran")
    parser.add_argument("--dataset-cache", type=Path,
                        help="keep/reuse the built database here (skips the build when present)")
    parser.add_argument("--workdir", type=Path, help="keep the run's files here (default: a "
                        "temporary directory, removed afterwards)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "payments": 2_000 if quick else 1_000_000, "secs": 1.0,
        "pairs": 1 if quick else 15, "probes": 5_000 if quick else 1_000_000,
        "starts": 1 if quick else 3, "ingest_batch": 1_000 if quick else 100_000,
        "ingest_rounds": 1 if quick else 5,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not args.phases <= set(PHASES):
        parser.error(f"--phases: choose from {','.join(PHASES)}")
    args.client_cpus = args.client_cpus or None
    args.server_cpus = args.server_cpus or None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="anonticket-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, workdir)
    bench.result["meta"] = _meta(args)
    if args.backend == "postgres":
        sys.path.insert(0, str(REPO / "tests"))
        import pg_cluster

        bench.cluster = pg_cluster.start_cluster(cpus=args.server_cpus)
        bench.db = bench.cluster.dsn(bench.cluster.create_database())
        postmaster = postmaster_pid(bench.cluster.data)
        loadgen.DB_CPU = lambda: cpu_secs_of_tree(postmaster)
    try:
        bench.build()
        for phase in PHASES:
            if phase in args.phases:
                getattr(bench, f"{phase}_phase")()
    finally:
        if bench.cluster is not None:
            pg_cluster.remove(bench.cluster)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    bench.result["meta"]["loadavg_after"] = os.getloadavg()
    print(table(bench.result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(bench.result, indent=2) + "\n")
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
