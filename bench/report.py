"""Targets, the median-of-pairs rule, and the printed table."""

from __future__ import annotations

import statistics
from typing import Any

from loadgen import Load

# ratio to /health/live in the same run (health_vs_bare: /health/live to the bare app)
RATIO_TARGETS = {
    "health_vs_bare": 0.60,
    "redeem_success": 0.20,
    "redeem_receipt_vs_pid": 0.90,  # issue 22: to redeem by bare PID, not to /health/live
    "redeem_already_claimed": 0.60,
    "redeem_unknown_flood": 0.65,
    "token_issued": 0.75,
    "token_unknown": 0.75,
    "redeem_success_plans": 0.20,
    "token_issued_plans": 0.75,
    "debit": 0.25,  # to /health/live on the internal listener, where debits are served
    # the gateway (bench/gateway.py): each to its own baseline, see docs/benchmarks.md
    "gateway_check": 0.85,
    "gateway_nginx_check": 0.90,
    "gateway_nginx_cached": 0.60,
    "gateway_nginx_metered": 0.50,
    # issue 23 (bench/credentials.py): to /health/live on the listener each is served on
    "credential_issue": 0.50,
    "gateway_check_credential": 0.85,
    # issue 24 (bench/private_tokens.py): a signature verify and a spent-set insert per request
    "private_token_redeem": 0.50,
}
# issue 15: the writes on PostgreSQL (a round trip per statement, the server on the same core)
PG_RATIO_TARGETS = {**RATIO_TARGETS, "redeem_success": 0.15, "redeem_success_plans": 0.15,
                    "debit": 0.15}
RSS_TARGET_MB = 150.0
STARTUP_TARGET_SECS = 2.0
INGEST_TARGET_PER_SEC = 20_000
PG_INGEST_TARGET_PER_SEC = 10_000
# answered from the same in-process views on both backends: issue 15 asks their PostgreSQL
# ratios to stay within 10 % of SQLite's
FROM_MEMORY = ("health_vs_bare", "redeem_already_claimed", "redeem_unknown_flood", "token_issued",
               "token_unknown", "token_issued_plans", "uds_redeem_unknown_flood", "gateway_check",
               "credential_issue", "gateway_check_credential")


def targets_for(backend: str) -> dict[str, float]:
    return PG_RATIO_TARGETS if backend == "postgres" else RATIO_TARGETS


def ingest_target_for(backend: str) -> int:
    return PG_INGEST_TARGET_PER_SEC if backend == "postgres" else INGEST_TARGET_PER_SEC


def summarise_pairs(name: str, pairs: list[tuple[Load, Load]], expect: dict[str, str],
                    targets: dict[str, float] = RATIO_TARGETS) -> dict[str, Any]:
    """pairs are (baseline, scenario) run back to back; the ratio is the median of the
    per-pair ratios, and the figures shown are those of the median pair."""
    ratios = [s.rps / b.rps if b.rps else 0.0 for b, s in pairs]
    order = sorted(range(len(pairs)), key=lambda i: ratios[i])
    mid = order[len(order) // 2]
    base, scen = pairs[mid]
    problems = _check(scen, expect)
    target = targets.get(name)
    result: dict[str, Any] = {
        "ratio": round(statistics.median(ratios), 3),
        "target": target,
        "met": None if target is None else statistics.median(ratios) >= target,
        "rps": round(scen.rps, 1),
        "baseline_rps": round(base.rps, 1),
        "p50_ms": round(scen.p50_ms, 3),
        "p99_ms": round(scen.p99_ms, 3),
        "server_cpu_us_per_req": round(scen.server_cpu_us, 1),
        "baseline_server_cpu_us_per_req": round(base.server_cpu_us, 1),
        "client_cpu": round(scen.client_cpu, 3),
        **({} if scen.db_cpu_us is None else {
            # medians over all runs: the database's work comes in bursts (autovacuum)
            "db_cpu_us_per_req": round(statistics.median(s.db_cpu_us or 0.0 for _, s in pairs), 1),
            "baseline_db_cpu_us_per_req": round(statistics.median(
                b.db_cpu_us or 0.0 for b, _ in pairs), 1),
            "db_cpu_us_per_req_max": round(max(max(b.db_cpu_us or 0.0, s.db_cpu_us or 0.0)
                                               for b, s in pairs), 1)}),
        "checks_ok": not problems,
        "problems": problems,
        "pairs": [{"ratio": round(r, 3), "baseline": b.as_dict(), "scenario": s.as_dict()}
                  for r, (b, s) in zip(ratios, pairs)],
    }
    return result


def _check(load: Load, expect: dict[str, str]) -> list[str]:
    """Each scenario must measure what it claims: every answer of the expected kind."""
    problems = []
    if load.errors:
        problems.append(f"socket errors {load.errors}")
    for key, what in expect.items():
        got = load.outcomes.get(key, 0)
        if what == "all" and got < load.requests - load.outcomes.get("exhausted", 0):
            problems.append(f"only {got} of {load.requests} answers were {key}")
        if what == "some" and got == 0:
            problems.append(f"no answer was {key}")
    if load.outcomes.get("exhausted"):
        # the run was cut short (loadgen stops wrk then), so its rate stands, on fewer requests
        problems.append("the slice of unredeemed PIDs ran out before the planned end")
    if load.requests == 0:
        problems.append("no request completed")
    return problems


def table(result: dict[str, Any]) -> str:
    lines = [f"{'scenario':<26}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu us':>8}{'client':>8}"
             f"{'ratio':>8}{'target':>8}  ok"]
    for name, s in result["scenarios"].items():
        target = s["target"]
        mark = "" if target is None else ("yes" if s["met"] else "NO")
        if not s["checks_ok"]:
            mark += " (checks failed)"
        lines.append(
            f"{name:<26}{s['rps']:>9.0f}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}"
            f"{s['server_cpu_us_per_req']:>8.0f}{s['client_cpu']:>8.2f}{s['ratio']:>8.2f}"
            f"{'' if target is None else f'{target:.2f}':>8}  {mark}")
    rss = result.get("rss")
    if rss:
        lines.append(f"{'peak RSS (VmHWM)':<26}{rss['vmhwm_mb']:>9.1f} MB after {rss['probes']} probes"
                     f"  target <= {RSS_TARGET_MB:.0f}  {'yes' if rss['met'] else 'NO'}")
    start = result.get("startup")
    if start:
        lines.append(f"{'start-up':<26}{start['median_secs']:>9.2f} s  (runs {start['runs']})"
                     f"  target <= {STARTUP_TARGET_SECS:.0f}  {'yes' if start['met'] else 'NO'}")
    ingest = result.get("ingest")
    if ingest:
        lines.append(f"{'monitor ingest':<26}{ingest['transfers_per_sec']:>9} transfers/s "
                     f"(batch {ingest['batch']})  target >= "
                     f"{ingest.get('target_per_sec', INGEST_TARGET_PER_SEC)}  "
                     f"{'yes' if ingest['met'] else 'NO'}")
    empty = result.get("ingest_empty_db")
    if empty:
        lines.append(f"{'  (into an empty DB)':<26}{empty['transfers_per_sec']:>9} transfers/s")
    verifier = result.get("credential_verifier")
    if verifier:
        lines.append(f"{'shipped verifier':<26}{verifier['verifications_per_core_sec']:>9} "
                     f"verifications/s per core (the check with a credential: "
                     f"{verifier['check_per_core_sec']}/s per core)")
        lines.append(f"{'credential signing':<26}{verifier['sign_libsodium_per_core_sec']:>9} "
                     f"/s per core with libsodium, "
                     f"{verifier['sign_openssl_per_core_sec']} with OpenSSL, "
                     f"{verifier['sign_pycryptodome_per_core_sec']} with pycryptodome")
    build = result.get("dataset", {})
    if build.get("credit_secs") is not None:
        lines.append(f"{'database build':<26}{build['payments']} payments credited in "
                     f"{build['credit_secs']:.1f} s ({build['credit_per_sec']}/s, one transaction)")
    return "\n".join(lines)


_LABELS = {
    "health_vs_bare": "`/health/live` vs the bare aiohttp app",
    "redeem_success": "redeem success (each PID once)",
    "redeem_receipt_vs_pid": "redeem success by receipt vs by bare PID (each once)",
    "redeem_already_claimed": "redeem, already claimed",
    "redeem_unknown_flood": "redeem flood of random unknown PIDs",
    "token_issued": "token introspection, issued tokens",
    "token_unknown": "token introspection, unknown tokens",
    "mixed": "mixed load (10/20/30/30/10, see scenarios.lua)",
    "uds_redeem_unknown_flood": "Unix socket: unknown-PID flood",
    "uds_token_issued_cold": "Unix socket: issued tokens, cache cold after restart",
    "redeem_success_plans": "plans on: redeem success, tokens that expire",
    "token_issued_plans": "plans on: token introspection, issued tokens that expire",
    "debit": "plans on: debit, a key of its own each (internal listener)",
    "gateway_check": "gateway check alone (issued tokens, cost 0) vs `/health/live`",
    "gateway_nginx_check": "nginx `auth_request` → the check vs → `/health/live`",
    "gateway_nginx_cached": "nginx, cached check vs the same file unprotected",
    "gateway_nginx_metered": "nginx, metered (cost > 0) vs uncached check only",
    "credential_issue": "issuing a credential (POST /api/v1/credential) vs `/health/live`",
    "gateway_check_credential": "gateway check with a credential (verified before) vs `/health/live`",
}


def markdown(result: dict[str, Any]) -> str:
    """The docs/benchmarks.md tables of one run's JSON: ``python3 bench/report.py run.json``."""
    rows = ["| Scenario | Ratio (median of pairs) | Target | Met | req/s | p50 / p99 ms "
            "| server CPU µs/req | client CPU |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in result["scenarios"].items():
        target = "—" if s["target"] is None else f"≥ {s['target']:.2f}"
        met = "—" if s["met"] is None else ("yes" if s["met"] else "**no**")
        rows.append(f"| {_LABELS.get(name, name)} | {s['ratio']:.3f} | {target} | {met} "
                    f"| {s['rps']:,.0f} | {s['p50_ms']:.2f} / {s['p99_ms']:.2f} "
                    f"| {s['server_cpu_us_per_req']:.0f} | {s['client_cpu']:.2f} |")
    rss, start, ingest = result["rss"], result["startup"], result["ingest"]
    empty, build = result.get("ingest_empty_db"), result.get("dataset", {})
    rows += ["", "| Resource | Measured | Target | Met |", "| --- | --- | --- | --- |",
             f"| peak RSS (VmHWM) after {rss['answered_404']:,} random probes, 1M payments stored "
             f"| {rss['vmhwm_mb']:.1f} MB | ≤ {RSS_TARGET_MB:.0f} MB | {_yes(rss['met'])} |",
             f"| start-up with 1M payments, process start → `/health/live` answers "
             f"| {start['median_secs']:.2f} s (median of {start['runs']}) "
             f"| ≤ {STARTUP_TARGET_SECS:.0f} s | {_yes(start['met'])} |",
             f"| monitor ingest, polls of {ingest['batch']:,} transfers into the 1M database "
             f"| {ingest['transfers_per_sec']:,} transfers/s (median poll) "
             f"| ≥ {ingest.get('target_per_sec', INGEST_TARGET_PER_SEC):,} | {_yes(ingest['met'])} |"]
    if empty:
        rows.append(f"| monitor ingest into an empty database (context) "
                    f"| {empty['transfers_per_sec']:,} transfers/s | — | — |")
    verifier = result.get("credential_verifier")
    if verifier:
        rows += [f"| the shipped verifier (`CredentialVerifier.verify`, no cache), one core "
                 f"| {verifier['verifications_per_core_sec']:,} verifications/s "
                 f"(the check with a credential: {verifier['check_per_core_sec'] or 0:,}/s per core) "
                 f"| — | — |",
                 f"| credential signing, Ed25519 with libsodium vs OpenSSL vs pycryptodome, one "
                 f"core | {verifier['sign_libsodium_per_core_sec']:,}/s vs "
                 f"{verifier['sign_openssl_per_core_sec']:,}/s vs "
                 f"{verifier['sign_pycryptodome_per_core_sec']:,}/s | — | — |"]
    if build.get("credit_secs") is not None:
        rows.append(f"| building the 1M database: one `credit_transfers` call, one transaction "
                    f"| {build['credit_secs']:.1f} s ({build['credit_per_sec']:,} payments/s) "
                    f"| — | — |")
    return "\n".join(rows) + "\n"


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def compare(sqlite: dict[str, Any], postgres: dict[str, Any]) -> str:
    """Every scenario of two runs side by side (``report.py --compare SQLITE.json PG.json``):
    ratios, the PostgreSQL target, and for the answers from memory whether the PostgreSQL
    ratio is within 10 % of SQLite's; the CPU columns say where the time went."""
    rows = ["| Scenario | SQLite ratio | PostgreSQL ratio | PostgreSQL / SQLite | PostgreSQL target "
            "| service µs/req SQLite · PostgreSQL | PostgreSQL cluster µs/req (scenario · baseline) "
            "| req/s SQLite · PostgreSQL |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    a_all, b_all = sqlite["scenarios"], postgres["scenarios"]
    for name in [*a_all, *(n for n in b_all if n not in a_all)]:
        a, b = a_all.get(name), b_all.get(name)
        if b is None:
            rows.append(f"| {_LABELS.get(name, name)} | {a['ratio']:.3f} | not run | — | — "
                        f"| {a['server_cpu_us_per_req']:.0f} · — | — | {a['rps']:,.0f} · — |")
            continue
        rel = "—"
        if a is not None and a["ratio"]:
            change = b["ratio"] / a["ratio"] - 1
            rel = f"{change:+.0%}"
            if name in FROM_MEMORY:
                rel += " (within 10 %)" if abs(change) <= 0.10 else " (**outside 10 %**)"
        target = "—" if b["target"] is None else (
            f"≥ {b['target']:.2f} {'yes' if b['met'] else '**no**'}")
        db = "—" if "db_cpu_us_per_req" not in b else (
            f"{b['db_cpu_us_per_req']:.0f} · {b['baseline_db_cpu_us_per_req']:.0f}")
        a_ratio = "—" if a is None else f"{a['ratio']:.3f}"
        a_cpu = "—" if a is None else f"{a['server_cpu_us_per_req']:.0f}"
        a_rps = "—" if a is None else f"{a['rps']:,.0f}"
        rows.append(f"| {_LABELS.get(name, name)} | {a_ratio} | {b['ratio']:.3f} | {rel} | {target} "
                    f"| {a_cpu} · {b['server_cpu_us_per_req']:.0f} | {db} "
                    f"| {a_rps} · {b['rps']:,.0f} |")
    rows += ["", "| Resource | SQLite | PostgreSQL |", "| --- | --- | --- |"]
    for key, label in (("ingest", "monitor ingest, polls into the 1M database"),
                       ("ingest_empty_db", "ingest into an empty database (context)")):
        if key in sqlite and key in postgres:
            target = postgres[key].get("target_per_sec")
            rows.append(f"| {label} | {sqlite[key]['transfers_per_sec']:,}/s "
                        f"| {postgres[key]['transfers_per_sec']:,}/s"
                        + (f" (target ≥ {target:,}: {_yes(postgres[key]['met'])})" if target else "")
                        + " |")
    if "startup" in sqlite and "startup" in postgres:
        rows.append(f"| start-up → `/health/live` (median) | {sqlite['startup']['median_secs']:.2f} s "
                    f"| {postgres['startup']['median_secs']:.2f} s |")
        if "ready_runs" in postgres["startup"]:
            ready = sorted(postgres["startup"]["ready_runs"])
            rows.append(f"| start-up → `/health/ready` 200, i.e. active with its views loaded "
                        f"(median) | (= live) | {ready[len(ready) // 2]:.2f} s |")
    if "rss" in sqlite and "rss" in postgres:
        rows.append(f"| peak RSS after {postgres['rss']['probes']:,} probes "
                    f"| {sqlite['rss']['vmhwm_mb']:.1f} MB | {postgres['rss']['vmhwm_mb']:.1f} MB |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import json
    import sys

    if sys.argv[1] == "--compare":
        print(compare(*(json.loads(open(path).read()) for path in sys.argv[2:4])), end="")
    else:
        print(markdown(json.loads(open(sys.argv[1]).read())), end="")
