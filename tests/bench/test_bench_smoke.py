"""The benchmark keeps working, and the shortcuts it motivated answer like the long way.

Not a timed test: machines are noisy, so nothing here compares a rate to a target.
The smoke run only proves that ``bench/run.py --quick`` still builds its database,
drives the real ``bin/anonticket serve`` with wrk and the Unix-socket client, and
writes every figure. The property tests pin the hot-path shortcuts of
``anonticket.api.public`` (a regex for the usual redeem body, a 16-hex PID fast path,
answers rendered from bytes) to the general path they replace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anonticket.api.public import (
    _claimed_bytes,
    claim_from_body,
    claimed_view,
    _redeem_claim,
    _token_view_bytes,
    parse_pid,
    token_view,
)
from anonticket.api.request import json_object
from anonticket.domain.ids import PaymentId, Receipt
from anonticket.domain.errors import InvalidPid, InvalidReceipt, InvalidRequest
from anonticket.ledger.views import Claimed
from anonticket.storage import TokenRow

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = ("health_vs_bare", "redeem_success", "redeem_receipt_vs_pid", "redeem_already_claimed",
             "redeem_unknown_flood", "token_issued", "token_unknown", "mixed", "uds_redeem_unknown_flood",
             "uds_token_issued_cold", "redeem_success_plans", "token_issued_plans", "debit")


@pytest.mark.slow  # every phase of bench/run.py, a minute or more
@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (Debian package wrk)")
def test_quick_benchmark_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(out),
         "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    for name in SCENARIOS:
        scenario = result["scenarios"][name]
        assert scenario["rps"] > 0 and scenario["baseline_rps"] > 0, name
        assert scenario["p50_ms"] > 0 and scenario["p99_ms"] >= scenario["p50_ms"], name
        assert 0 < scenario["ratio"], name
        assert len(scenario["pairs"]) >= 1
    # each scenario measured what it claims: every redeem of a fresh PID won, every
    # random PID was unknown, every issued token was found
    assert result["scenarios"]["redeem_success"]["pairs"][0]["scenario"]["outcomes"]["success"] > 0
    receipt_pair = result["scenarios"]["redeem_receipt_vs_pid"]["pairs"][0]
    assert receipt_pair["baseline"]["outcomes"]["success"] > 0 and "404" not in receipt_pair["baseline"]["outcomes"]
    # plans on: every redeem won a token that expires, every such token was found, and
    # every debit (each its own Idempotency-Key) was applied, none replayed
    # (redeem_receipt_vs_pid: every receipt and every bare PID of its baseline won)
    for name in ("redeem_receipt_vs_pid", "redeem_already_claimed", "redeem_unknown_flood", "token_issued", "token_unknown",
                 "redeem_success_plans", "token_issued_plans", "debit"):
        assert result["scenarios"][name]["checks_ok"], result["scenarios"][name]["problems"]
    assert result["rss"]["vmhwm_mb"] > 0 and result["rss"]["answered_404"] >= 5_000
    assert all(secs > 0 for secs in result["startup"]["runs"])
    assert result["ingest"]["transfers_per_sec"] > 0
    assert result["ingest_empty_db"]["transfers_per_sec"] > 0
    assert result["dataset"]["payments"] == 2_000
    # the gateway phase: the check alone always, through nginx when it is installed;
    # every answer a 200 (issued tokens, balances that last the run)
    gateway = ["gateway_check"] + (["gateway_nginx_check", "gateway_nginx_cached",
                                    "gateway_nginx_metered"] if shutil.which("nginx") else [])
    for name in gateway:
        assert result["scenarios"][name]["checks_ok"], result["scenarios"][name]["problems"]
    # the credential phase: every issue answered a credential, every check with one a 200,
    # and the shipped verifier and the three signing backends measured
    for name in ("credential_issue", "gateway_check_credential"):
        assert result["scenarios"][name]["checks_ok"], result["scenarios"][name]["problems"]
    verifier = result["credential_verifier"]
    assert verifier["verifications"] > 0 and verifier["verifications_per_core_sec"] > 0
    assert all(verifier[f"sign_{name}_per_core_sec"] > 0
               for name in ("pycryptodome", "openssl", "libsodium"))
    assert verifier["source"] == "the service's key document and credentials"
    # the private_token phase: every batch signed, every token redeemed once (a 200 each)
    for name in ("private_token_issue", "private_token_redeem"):
        assert result["scenarios"][name]["checks_ok"], result["scenarios"][name]["problems"]
    assert result["scenarios"]["private_token_issue"]["tokens_per_sec"] > 0
    assert result["private_tokens_spent"] >= result["scenarios"]["private_token_redeem"]["pairs"][0][
        "scenario"]["outcomes"]["200"]
    for line in ("health_vs_bare", "peak RSS", "start-up", "monitor ingest", "shipped verifier",
                 "tokens/s through the API"):
        assert line in run.stdout


def test_migration_benchmark_migrates_and_checks(tmp_path: Path) -> None:
    """bench/migration.py builds a version-2 database, times the migration, verifies it."""
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "migration.py"), "--payments", "2000",
         "--claimed", "0.5", "--runs", "1", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["payments"] == 2000 and result["migration_secs"][0] > 0


@pytest.mark.postgres  # bench/fence_cost.py starts its cluster itself, out of conftest's sight
def test_fence_cost_benchmark_runs_both_modes(tmp_path: Path) -> None:
    """bench/fence_cost.py measures the same PostgreSQL write fenced and unfenced."""
    sys.path.insert(0, str(REPO / "tests"))
    import pg_cluster

    reason = pg_cluster.missing()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "fence.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "fence_cost.py"), "--quick", "--cpus", "",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result) == {"fenced", "unfenced", "fence"}
    assert result["fenced"]["wall_us"] > 0 and result["unfenced"]["wall_us"] > 0


# ---------------------------------------------------------------------- shortcuts = long way
def _general_claim(raw: bytes) -> tuple[bytes, bytes | None]:
    """What a redeem body means without the regex shortcut: json.loads, then Receipt.parse
    or PaymentId.parse, as (raw PID, raw receipt or None)."""
    claim = claim_from_body(json_object(raw), False)
    if isinstance(claim, Receipt):
        return claim.pid_raw, claim.raw
    return claim.raw, None


def _fast_claim(raw: bytes) -> tuple[bytes, bytes | None]:
    pid, receipt = _redeem_claim(raw, False)
    return pid, None if receipt is None else receipt.raw


def _outcome(fn: Any, *args: Any) -> tuple[str, object]:
    try:
        value = fn(*args)
    except InvalidPid:
        return "invalid_pid", None
    except InvalidReceipt:
        return "invalid_receipt", None
    except InvalidRequest:
        return "invalid_request", None
    return "ok", getattr(value, "raw", value)


_hex = st.text(alphabet="0123456789abcdefABCDEF", min_size=0, max_size=70)
_receipt_hex = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)
_pid_text = (_hex | st.text(max_size=20) | st.just("0" * 16) | st.just(" " + "a" * 15)
             | _receipt_hex | _receipt_hex.map(lambda h: "-".join(h[i:i + 8] for i in range(0, 64, 8))))
_space = st.sampled_from(["", " ", "\t", "\n", "\r\n", "\f", "\v", "\u00a0"])


@given(pid=_pid_text, a=_space, b=_space, c=_space, field=st.sampled_from(["pid", "receipt"]))
def test_redeem_body_shortcut_answers_like_json_and_parse(pid: str, a: str, b: str, c: str,
                                                          field: str) -> None:
    for raw in (f'{a}{{{b}"{field}"{c}:{a}"{pid}"{b}}}{c}'.encode(),
                json.dumps({field: pid}).encode(),
                json.dumps({field: pid, "x": 1}).encode(),
                json.dumps({"pid": pid, "receipt": pid}).encode()):
        assert _outcome(_fast_claim, raw) == _outcome(_general_claim, raw), raw


@given(raw=st.binary(max_size=80))
def test_redeem_body_shortcut_on_arbitrary_bytes(raw: bytes) -> None:
    assert _outcome(_fast_claim, raw) == _outcome(_general_claim, raw)


@given(text=_pid_text | st.integers() | st.none())
def test_pid_fast_path_is_payment_id_parse(text: object) -> None:
    assert _outcome(parse_pid, text, False) == _outcome(PaymentId.parse, text)


@st.composite
def token_rows(draw: st.DrawFn) -> TokenRow:
    amount = draw(st.integers(0, 2**62))
    revoked = draw(st.none() | st.integers(0, 2**33))
    return TokenRow(draw(st.binary(min_size=32, max_size=32)), amount, draw(st.integers(0, 2**33)),
                    revoked, "why" if revoked else None, draw(st.integers(0, 2**62)),
                    draw(st.integers(0, amount)), draw(st.none() | st.integers(0, 2**33)))


@given(record=token_rows(), now=st.integers(0, 2**33))
def test_token_answer_bytes_equal_the_dict(record: TokenRow, now: int) -> None:
    assert json.loads(_token_view_bytes(record, now)) == token_view(record, now)


@given(status=st.sampled_from(["success", "already_claimed"]), record=token_rows())
def test_redeem_answer_bytes_equal_the_dict(status: str, record: TokenRow) -> None:
    result = Claimed(status, record.token, record)
    assert json.loads(_claimed_bytes(result)) == claimed_view(result)
    assert claimed_view(result)["service_token"] == record.token.hex()


@pytest.mark.regtest  # starts its own chain
def test_provisional_benchmark_quick_run_measures_both_figures(tmp_path: Path) -> None:
    """bench/provisional.py --quick: pool → first 200 at the gateway, and after the N-th block."""
    out = tmp_path / "provisional.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "provisional.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["payments"] == 3
    assert 0 < result["provisional_median_secs"] <= result["provisional_p99_secs"]
    assert result["after_nth_block_median_secs"] > 0
    assert result["at_n_confirmations_expected_secs"] >= 3 * 120
