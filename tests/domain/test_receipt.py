"""Receipts: the documented derivations and vectors, exactly what parses, and the customer
guide's shell one-liners run as printed.

The vectors are read from docs/security.md and recomputed with pycryptodome's SHA3 (an
implementation other than the hashlib one the code uses) and with the ``openssl`` command.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from Crypto.Hash import SHA3_256
from hypothesis import given
from hypothesis import strategies as st

import anonticket.domain.ids as ids
from anonticket.domain.errors import InvalidReceipt
from anonticket.domain.ids import (
    PaymentId,
    Receipt,
    derive_receipt_token,
    derive_service_token,
    receipt_pid,
)

REPO = Path(__file__).resolve().parents[2]
SECURITY = (REPO / "docs" / "security.md").read_text()
CUSTOMERS = (REPO / "docs" / "customers.md").read_text()
# the rule docs/security.md and anonticket/api/openapi.yaml state, as a regex
DOCUMENTED = re.compile(r"[0-9a-fA-F]{64}|[0-9a-fA-F]{8}(-[0-9a-fA-F]{8}){7}|[0-9a-fA-F]{8}( [0-9a-fA-F]{8}){7}")


def documented_vectors() -> dict[str, str]:
    block = SECURITY.split("<!-- receipt-vectors -->", 1)[1].split("```", 2)[1]
    return {name: value.strip() for name, value in
            (line.split(": ", 1) for line in block.strip().splitlines())}


def sha3(data: bytes) -> bytes:
    return SHA3_256.new(data).digest()


# ---------------------------------------------------------------------- derivations
def test_the_documented_vectors_hold() -> None:
    v = documented_vectors()
    receipt = Receipt.parse(v["receipt"])
    txid = bytes.fromhex(v["txid"])
    assert receipt.grouped() == v["shown"] and Receipt.parse(v["shown"]) == receipt
    assert receipt.pid.hex() == v["pid"] and receipt.pid.is_short
    assert derive_receipt_token(receipt.raw, txid).hex() == v["token"]
    assert derive_service_token(receipt.pid, txid.hex()).hex() == v["bare-pid token of the same payment"]
    # the same numbers from the documented formulas, by another SHA3 implementation
    assert sha3(b"anonticket/pid/v1" + receipt.raw)[:8].hex() == v["pid"]
    assert sha3(b"anonticket/token/v1" + receipt.raw + txid).hex() == v["token"]
    assert sha3(f"{v['pid']}|{v['txid']}".encode()).hex() == v["bare-pid token of the same payment"]


@given(raw=st.binary(min_size=32, max_size=32), txid=st.binary(min_size=32, max_size=32))
def test_derivations_are_the_documented_formulas(raw: bytes, txid: bytes) -> None:
    assert receipt_pid(raw) == sha3(b"anonticket/pid/v1" + raw)[:8] + bytes(24)
    assert derive_receipt_token(raw, txid).raw == sha3(b"anonticket/token/v1" + raw + txid)


def test_the_token_is_not_what_the_payers_side_can_compute() -> None:
    """The payer knows the address (hence the PID), the txid and the amount; the receipt
    token is none of the hashes those make, and changes with the receipt alone."""
    receipt, txid = Receipt.generate(), bytes(range(32))
    token = derive_receipt_token(receipt.raw, txid).raw
    pid = receipt.pid
    public = [pid.raw[:8], pid.raw, txid, pid.hex().encode(), txid.hex().encode()]
    guesses = {derive_service_token(pid, txid.hex()).raw, sha3(pid.raw[:8] + txid),
               sha3(b"anonticket/token/v1" + pid.raw + txid), sha3(b"anonticket/token/v1" + pid.raw[:8] + txid)}
    guesses |= {sha3(a + b) for a in public for b in public}
    assert token not in guesses
    other = Receipt.generate()
    assert derive_receipt_token(other.raw, txid).raw != token


def test_openssl_computes_the_same_pid(tmp_path: Path) -> None:
    """What docs/security.md tells a reader to type."""
    receipt = Receipt.generate()
    command = SECURITY.split("With OpenSSL: `", 1)[1].split("`", 1)[0]
    assert "$receipt" in command
    done = subprocess.run(["bash", "-c", f"receipt={receipt.hex()}; {command}"], capture_output=True,
                          text=True, timeout=30, check=True)
    assert done.stdout.split("= ", 1)[1].strip()[:16] == receipt.pid.hex()


@pytest.mark.parametrize("marker", ["<!-- receipt-one-liner -->", "<!-- receipt-python -->"])
def test_the_customer_guides_one_liners_make_a_receipt_and_its_pid(marker: str) -> None:
    """Run exactly the block docs/customers.md prints, three times; each receipt is new and
    the PID it prints is the one the service derives."""
    block = CUSTOMERS.split(marker, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    for tool in ("xxd", "openssl", "python3"):
        if tool in block:
            assert shutil.which(tool), f"{tool} is missing: bin/setup --test installs it"
    seen = set()
    for _ in range(3):
        done = subprocess.run(["bash", "-c", block], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        printed = dict(line.rsplit(" ", 1) for line in done.stdout.strip().splitlines())
        receipt = Receipt.parse(printed["receipt"])
        assert printed["payment id"] == receipt.pid.hex()
        seen.add(receipt)
    assert len(seen) == 3


# ---------------------------------------------------------------------- parsing
def test_what_the_checkout_shows_and_plain_hex_parse_to_one_receipt() -> None:
    receipt = Receipt.generate()
    text = receipt.hex()
    forms = [text, text.upper(), receipt.grouped(), receipt.grouped().upper(),
             receipt.grouped().replace("-", " ")]
    assert {Receipt.parse(form) for form in forms} == {receipt}
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){7}", receipt.grouped())


@pytest.mark.parametrize("bad", [
    "", "0" * 63, "a" * 65, " " + "a" * 64, "a" * 64 + "\n", "a" * 63 + "g", "a" * 63 + "٣",
    "-".join(["abcdef01"] * 7 + ["abcdef0"]), "-".join(["abcdef01"] * 4) + " " + " ".join(["abcdef01"] * 4),
    "_".join(["abcdef01"] * 8), "--".join(["abcdef01"] * 8), "-".join(["abcdef0", "1abcdef01"] + ["abcdef01"] * 6),
    "-".join(["abcd ef1"] + ["abcdef01"] * 7), "0x" + "a" * 62, "a" * 128, "ａ" * 64,
])
def test_anything_else_is_refused_without_echo(bad: str) -> None:
    with pytest.raises(InvalidReceipt) as caught:
        Receipt.parse(bad)
    assert caught.value.message == InvalidReceipt.message and str(caught.value) == InvalidReceipt.message


@pytest.mark.parametrize("bad", [None, 7, b"a" * 64, ["a" * 64], {"receipt": "a" * 64}, 1.5])
def test_non_text_is_refused(bad: object) -> None:
    with pytest.raises(InvalidReceipt):
        Receipt.parse(bad)


@given(text=st.text(max_size=80) | st.text(alphabet="0123456789abcdefABCDEF- ", min_size=60, max_size=75))
def test_parse_accepts_exactly_the_documented_forms(text: str) -> None:
    try:
        receipt = Receipt.parse(text)
    except InvalidReceipt as exc:
        assert not DOCUMENTED.fullmatch(text)
        assert str(exc) == exc.message == InvalidReceipt.message  # fixed: nothing of the input
        return
    assert DOCUMENTED.fullmatch(text)
    assert receipt.hex() == re.sub("[- ]", "", text).lower()


def test_a_receipt_whose_pid_is_zero_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2^-64 draw nobody can aim at; refused as the zero PID is (plain payments carry it)."""
    raw = bytes(range(32))
    monkeypatch.setattr(ids, "receipt_pid", lambda receipt: bytes(32))
    with pytest.raises(InvalidReceipt):
        Receipt.parse(raw.hex())
    with pytest.raises(InvalidReceipt):
        Receipt.from_bytes(raw)


def test_generated_receipts_are_fresh_and_pay_short_pids() -> None:
    receipts = {Receipt.generate() for _ in range(200)}
    assert len(receipts) == 200 and len({r.pid for r in receipts}) == 200
    for receipt in receipts:
        assert isinstance(receipt.pid, PaymentId) and receipt.pid.is_short and any(receipt.pid.raw)
        assert receipt.pid_raw == receipt.pid.raw


def test_repr_and_str_never_show_the_value() -> None:
    receipt = Receipt.generate()
    for shown in (repr(receipt), str(receipt), f"{receipt}", repr([receipt]), repr({receipt: 1})):
        assert receipt.hex() not in shown and receipt.pid.hex() not in shown
        assert receipt.hex()[:16] not in shown and "<redacted>" in shown
