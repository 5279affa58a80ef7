"""PaymentId / ServiceToken rules from the spec, including the ones that protect money."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anonticket.domain.ids import PaymentId, ServiceToken, derive_service_token, parse_txid
from anonticket.domain.errors import InvalidPid, InvalidToken

SHORT = "0123456789abcdef"


def test_token_vector_from_the_spec() -> None:
    token = derive_service_token(PaymentId.parse(SHORT), "tx1")
    assert token.hex() == "369e0f7c09124783e45fa6a6b7588733e362e2917f36fb7036f49284c1952fa9"


def test_pid_is_case_insensitive_and_canonical_lowercase() -> None:
    assert PaymentId.parse(SHORT.upper()).hex() == SHORT
    assert PaymentId.parse(SHORT.upper()) == PaymentId.parse(SHORT)


def test_zero_padded_long_form_is_the_short_pid() -> None:
    long_form = SHORT + "0" * 48
    pid = PaymentId.parse(long_form)  # accepted without opting in to long PIDs
    assert pid == PaymentId.parse(SHORT)
    assert pid.hex() == SHORT and pid.is_short
    assert len(pid.raw) == 32


@pytest.mark.parametrize("text", ["0" * 16, "0" * 64, "0" * 16 + "0" * 48])
def test_all_zero_pid_is_invalid_in_either_form(text: str) -> None:
    with pytest.raises(InvalidPid):
        PaymentId.parse(text)
    with pytest.raises(InvalidPid):
        PaymentId.parse(text, accept_long=True)


def test_genuine_long_pid_needs_opt_in() -> None:
    long_pid = "ab" * 32
    with pytest.raises(InvalidPid):
        PaymentId.parse(long_pid)
    pid = PaymentId.parse(long_pid, accept_long=True)
    assert pid.hex() == long_pid and not pid.is_short


@pytest.mark.parametrize(
    "text",
    [" " + SHORT[1:], SHORT + " ", SHORT[:-1], SHORT + "0", "g" * 16, "", None, 123, ["x"],
     "0x" + SHORT[2:], "１" * 16, "0123 4567 89abcd", SHORT[:8] + "\t" + SHORT[9:], "٣" * 16],
)
def test_malformed_pids_are_rejected_without_trimming(text: object) -> None:
    with pytest.raises(InvalidPid) as info:
        PaymentId.parse(text)
    assert not isinstance(text, str) or len(text) < 8 or text not in info.value.message


def test_repr_and_str_never_show_the_value() -> None:
    pid = PaymentId.parse(SHORT)
    token = derive_service_token(pid, "tx1")
    for shown in (repr(pid), str(pid), f"{pid}", repr(token), str(token), repr([pid, token])):
        assert SHORT not in shown and token.hex() not in shown


def test_generated_pids_are_short_random_and_valid() -> None:
    pids = {PaymentId.generate() for _ in range(200)}
    assert len(pids) == 200
    for pid in pids:
        assert pid.is_short
        assert PaymentId.parse(pid.hex()) == pid


def test_token_parse_rules() -> None:
    token = ServiceToken.parse("AB" * 32)
    assert token.hex() == "ab" * 32
    for bad in ("ab" * 31, "ab" * 33, "zz" * 32, None, 5):
        with pytest.raises(InvalidToken):
            ServiceToken.parse(bad)


def test_txid_parse() -> None:
    assert parse_txid("cd" * 32) == bytes.fromhex("cd" * 32)
    with pytest.raises(ValueError):
        parse_txid("cd" * 31)


@given(st.text(max_size=80))
def test_pid_parsing_never_raises_anything_but_invalid_pid(text: str) -> None:
    try:
        pid = PaymentId.parse(text, accept_long=True)
    except InvalidPid as exc:
        assert len(text) < 8 or text not in exc.message  # the input is never echoed
    else:
        assert any(pid.raw) and len(pid.raw) == 32


HEX_DIGITS = set("0123456789abcdefABCDEF")
# hex digits mixed with what bytes.fromhex would skip or misread
NEAR_HEX = st.text(alphabet=st.sampled_from("0123456789abcdefABCDEF \t\n\r\x0b\x0cgG１٣"),
                   min_size=62, max_size=66)


@given(NEAR_HEX)
def test_txids_and_tokens_are_exactly_64_hex_digits(text: str) -> None:
    exact = len(text) == 64 and set(text) <= HEX_DIGITS
    try:
        txid = parse_txid(text)
    except ValueError:
        txid = None
    try:
        token = ServiceToken.parse(text).raw
    except InvalidToken:
        token = None
    expected = bytes.fromhex(text) if exact else None
    assert (txid, token) == (expected, expected)


@given(st.binary(min_size=8, max_size=8).filter(any), st.binary(min_size=32, max_size=32))
def test_token_derivation_matches_its_definition(short: bytes, txid: bytes) -> None:
    from Crypto.Hash import SHA3_256

    pid = PaymentId.parse(short.hex())
    expected = SHA3_256.new(f"{short.hex()}|{txid.hex()}".encode()).hexdigest()
    assert derive_service_token(pid, txid.hex()).hex() == expected


def test_token_pseudonyms_are_stable_distinct_and_pinned() -> None:
    import hashlib

    from anonticket.domain.ids import token_id, token_subject
    token = bytes(range(32))
    assert token_id(token) == hashlib.sha256(b"anonticket token id v1\x00" + token).hexdigest()[:32]
    assert token_subject(token) == hashlib.sha256(b"anonticket subject v1\x00" + token).hexdigest()[:32]
    assert token_id(token) != token_subject(token) and token_id(token) == token_id(bytes(token))
    assert token_id(token) != token_id(bytes(31) + b"\x01")
