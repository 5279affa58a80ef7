"""The command line's receipts: ``pid new --receipt`` (what the docs teach first) and
``token derive --receipt``, in-process and as the real ``bin/anonticket``."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from anonticket.cli.parser import main
from anonticket.config import SETTINGS
from anonticket.domain.address import decode_address
from anonticket.domain.ids import Receipt, derive_receipt_token
from conftest import REPO

BIN = str(REPO / "bin" / "anonticket")
# docs/MONERO.md's primary address, as in tests/cli/test_cli.py
PRIMARY = ("435CNkaTRD9PHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8Wx"
           "L4bpF6az")
TXID = "20" * 32


def run_bin(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {s.name for s in SETTINGS}}
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60, env=env, input=stdin)


def test_pid_new_receipt_json_pays_the_pid_derived_from_the_receipt(capsys: pytest.CaptureFixture[str]) -> None:
    made = []
    for _ in range(2):
        assert main(["pid", "new", "--receipt", "--address", PRIMARY, "--amount", "0.05", "--json"]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        made.append(json.loads(out))
    first = made[0]
    assert set(first) == {"receipt", "pid", "integrated_address", "uri"}
    receipt = Receipt.parse(first["receipt"])
    assert first["receipt"] == receipt.hex() and first["pid"] == receipt.pid.hex()
    decoded = decode_address(first["integrated_address"])
    assert decoded.payment_id is not None and decoded.payment_id.hex() == receipt.pid.hex()
    assert decoded.standard_address() == PRIMARY
    assert first["uri"] == f"monero:{first['integrated_address']}?tx_amount=0.05"
    assert made[1]["receipt"] != first["receipt"] and made[1]["pid"] != first["pid"]


def test_pid_new_receipt_human_output_says_what_to_keep() -> None:
    done = run_bin("pid", "new", "--receipt", "--address", PRIMARY)
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    rows = {line[:18].strip(): line[20:] for line in lines[:4]}
    receipt = Receipt.parse(rows["receipt"])
    assert rows["payment id"] == receipt.pid.hex()
    assert decode_address(rows["integrated address"]).payment_id.hex() == receipt.pid.hex()  # type: ignore[union-attr]
    assert lines[0].startswith("receipt ")  # the thing to keep comes first
    assert "Keep the receipt secret" in lines[-1] and "claim nothing" in lines[-1]
    bare = run_bin("pid", "new")
    assert "receipt" not in bare.stdout.splitlines()[0] and "pid new --receipt" in bare.stdout


def test_token_derive_receipt_is_the_receipt_token() -> None:
    receipt = Receipt.generate()
    expected = derive_receipt_token(receipt.raw, bytes.fromhex(TXID)).hex()
    for args, stdin in (([receipt.hex(), TXID], ""), ([receipt.grouped(), TXID.upper()], ""),
                        (["-", TXID], receipt.hex() + "\n")):
        done = run_bin("token", "derive", "--receipt", *args, stdin=stdin)
        assert (done.returncode, done.stdout, done.stderr) == (0, expected + "\n", "")


@pytest.mark.parametrize("receipt, txid", [("ab" * 31, TXID), ("ab" * 32, "x" * 64), ("ab" * 32, "20" * 31)])
def test_token_derive_receipt_refuses_bad_input_without_echo(receipt: str, txid: str) -> None:
    done = run_bin("token", "derive", "--receipt", receipt, txid)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert receipt not in done.stderr and txid not in done.stderr
