"""The Monero address codec against addresses the real wallet produced, and by properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anonticket.domain.address import (
    ALPHABET,
    KINDS,
    NETWORKS,
    AddressError,
    MoneroAddress,
    base58_decode,
    base58_encode,
    decode_address,
    make_integrated_address,
)

# The fixed test wallet. Secret keys (regtest/test use only):
#   spend df948b64f84a82258987bbf379da18f2e3c71318483a23343c8ee0606ea7f109
#   view  31a38784ce6e21c6b686bf8056105c25c76e8283ea0529fa82acfc6a2f9e9406
SPEND = bytes.fromhex("2641ff41d5d1e0853b0ad6688e4bffe69d9848105bf146ccb5a0eeacf2dd9f32")
VIEW = bytes.fromhex("81d89ab97e06ce5617455c29f621f2bcb7a009c2a48dce697f0f6055d136b51f")
PID = "0123456789abcdef"

MAINNET = "435CNkaTRD9PHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL4bpF6az"
MAINNET_INTEGRATED = (
    "4CmsPZPx2UfPHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL6BnMUc71Dr4Tyd8GuK"
)

# Pinned outputs of the real monero-wallet-rpc 0.18.0.0 (Debian bookworm), started
# `--offline [--testnet|--stagenet] --disable-rpc-login` with an empty --wallet-dir:
# `generate_from_keys` with the secret keys above, then `get_address` (standard),
# `create_address {"account_index": 0}` (subaddress 0/1) and
# `make_integrated_address {"payment_id": ...}` (integrated). Keys are network
# independent, so every standard/integrated address carries SPEND/VIEW.
# (network, kind, address, payment id or None)
WALLET_VECTORS = [
    ("mainnet", "standard", MAINNET, None),
    ("mainnet", "integrated", MAINNET_INTEGRATED, PID),
    (
        "mainnet",
        "integrated",
        "4CmsPZPx2UfPHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL6MSXSqCnTZYVpF4h59",
        "ffffffffffffffff",
    ),
    (
        "mainnet",
        "subaddress",
        "87zCqEuri9V4V8wd7WdCkYQ2fNEYSMyZaagNiiDaokhkbSAMsKzB52wKHM3Eva7P6M1Q8dEmqf4jMQaERubhXf4zTkJXAip",
        None,
    ),
    (
        "testnet",
        "standard",
        "9tcjs1EihaFPHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL4bQNXHh",
        None,
    ),
    (
        "testnet",
        "integrated",
        "A4KQsp4DJqmPHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL6BnMUc71Dr4U33F3pC",
        PID,
    ),
    (
        "testnet",
        "integrated",
        "A4KQsp4DJqmPHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL6MSXSqCnTZYVp5yMvJ",
        "ffffffffffffffff",
    ),
    (
        "testnet",
        "subaddress",
        "BdiL8C7DUmM4V8wd7WdCkYQ2fNEYSMyZaagNiiDaokhkbSAMsKzB52wKHM3Eva7P6M1Q8dEmqf4jMQaERubhXf4zTnecGmr",
        None,
    ),
    (
        "stagenet",
        "standard",
        "53HETbVR4pFPHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL4WRASeX",
        None,
    ),
    (
        "stagenet",
        "integrated",
        "5CyuUQJug5mPHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL6BnMUc71Dr4U35BSgG",
        PID,
    ),
    (
        "stagenet",
        "integrated",
        "5CyuUQJug5mPHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL6MSXSqCnTZYVppWDuJ",
        "ffffffffffffffff",
    ),
    (
        "stagenet",
        "subaddress",
        "77nAkPzu4YP4V8wd7WdCkYQ2fNEYSMyZaagNiiDaokhkbSAMsKzB52wKHM3Eva7P6M1Q8dEmqf4jMQaERubhXf4zTkBg5j6",
        None,
    ),
]
STANDARD = {net: addr for net, kind, addr, _ in WALLET_VECTORS if kind == "standard"}
SUBADDRESS = {net: addr for net, kind, addr, _ in WALLET_VECTORS if kind == "subaddress"}

# Leading characters follow from the prefix: it fills the top of the first 8-byte block.
FIRST_CHARS = {
    ("mainnet", "standard"): "4",
    ("mainnet", "integrated"): "4",
    ("mainnet", "subaddress"): "8",
    ("testnet", "standard"): "9A",
    ("testnet", "integrated"): "A",
    ("testnet", "subaddress"): "B",
    ("stagenet", "standard"): "5",
    ("stagenet", "integrated"): "5",
    ("stagenet", "subaddress"): "7",
}
PREFIXES = {
    ("mainnet", "standard"): 18,
    ("mainnet", "integrated"): 19,
    ("mainnet", "subaddress"): 42,
    ("testnet", "standard"): 53,
    ("testnet", "integrated"): 54,
    ("testnet", "subaddress"): 63,
    ("stagenet", "standard"): 24,
    ("stagenet", "integrated"): 25,
    ("stagenet", "subaddress"): 36,
}
# The fixed messages are part of the interface (the CLI prints them); none can
# carry the input.
MESSAGES = {
    "text contains a character outside the Monero base58 alphabet",
    "base58 text ends in a block of impossible length",
    "a base58 block encodes a value too large for its byte count",
    "address has the wrong length",
    "address checksum does not match (mistyped address?)",
    "address has an unknown network prefix",
    "integrated addresses are built from a primary address",
    "payment id must be exactly 16 hex characters and not all zero",
}


def keccak_checked(body: bytes) -> str:
    """Encode arbitrary bytes with a correct checksum, to reach the checks after it."""
    from Crypto.Hash import keccak

    return base58_encode(body + keccak.new(digest_bits=256, data=body).digest()[:4])


def assert_secret_free(err: pytest.ExceptionInfo[AddressError], *secrets: str) -> None:
    message = str(err.value)
    for secret in secrets:
        assert secret not in message
    assert message in MESSAGES
    # a chained exception would print in a traceback; the PID one is suppressed
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


# --- vectors from the real wallet -------------------------------------------------


def test_the_documented_mainnet_vector() -> None:
    assert make_integrated_address(MAINNET, PID) == MAINNET_INTEGRATED


@pytest.mark.parametrize(("network", "kind", "address", "pid"), WALLET_VECTORS)
def test_wallet_addresses_decode_and_encode_back(network: str, kind: str, address: str, pid: str | None) -> None:
    decoded = decode_address(address)
    assert (decoded.network, decoded.kind) == (network, kind)
    assert decoded.payment_id == (None if pid is None else bytes.fromhex(pid))
    if kind != "subaddress":  # a subaddress has keys of its own
        assert (decoded.spend_key, decoded.view_key) == (SPEND, VIEW)
    assert decoded.encode() == address
    assert address[0] in FIRST_CHARS[network, kind]
    assert len(address) == (106 if kind == "integrated" else 95)


@pytest.mark.parametrize(("network", "kind", "address", "pid"), [v for v in WALLET_VECTORS if v[1] == "integrated"])
def test_integrated_addresses_equal_the_wallets(network: str, kind: str, address: str, pid: str) -> None:
    assert make_integrated_address(STANDARD[network], pid) == address


def test_uppercase_pid_gives_the_same_address_as_the_wallet() -> None:
    # wallet-rpc answers 0123456789ABCDEF with the lowercase vector as well
    assert make_integrated_address(MAINNET, PID.upper()) == MAINNET_INTEGRATED


def test_decoded_prefix_bytes_are_the_documented_ones() -> None:
    for network, kind, address, _ in WALLET_VECTORS:
        assert base58_decode(address)[0] == PREFIXES[network, kind]


def test_to_dict_is_the_cli_json_shape() -> None:
    assert decode_address(MAINNET_INTEGRATED).to_dict() == {
        "network": "mainnet",
        "kind": "integrated",
        "public_spend_key": SPEND.hex(),
        "public_view_key": VIEW.hex(),
        "payment_id": PID,
        "standard_address": MAINNET,
    }
    assert decode_address(MAINNET).to_dict()["payment_id"] is None
    assert decode_address(MAINNET).to_dict()["standard_address"] == MAINNET
    assert decode_address(SUBADDRESS["mainnet"]).to_dict()["standard_address"] is None


def test_repr_never_shows_the_payment_id_or_keys() -> None:
    decoded = decode_address(MAINNET_INTEGRATED)
    for shown in (repr(decoded), str(decoded), f"{decoded}", repr([decoded])):
        assert shown.strip("[]") == "MoneroAddress(mainnet, integrated)"


# --- refusals ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["0", "O", "I", "l", "é", " ", "+"])
def test_character_outside_the_alphabet(bad: str) -> None:
    text = MAINNET[:50] + bad + MAINNET[51:]
    with pytest.raises(AddressError, match="outside the Monero base58 alphabet") as err:
        decode_address(text)
    assert_secret_free(err, text)


@pytest.mark.parametrize("text", ["", MAINNET[:-1], MAINNET + "1", MAINNET_INTEGRATED[:-1], MAINNET * 2])
def test_wrong_text_length(text: str) -> None:
    with pytest.raises(AddressError, match="wrong length") as err:
        decode_address(text)
    assert_secret_free(err, text or "\0")


@pytest.mark.parametrize(
    ("network", "kind", "body_len"),
    [("mainnet", "integrated", 65), ("testnet", "standard", 73), ("stagenet", "subaddress", 73)],
)
def test_wrong_byte_length_for_the_prefixs_kind(network: str, kind: str, body_len: int) -> None:
    # right checksum and a text length that exists, but not for this kind
    body = bytes([PREFIXES[network, kind]]) + bytes(range(1, body_len))
    text = keccak_checked(body)
    with pytest.raises(AddressError, match="wrong length") as err:
        decode_address(text)
    assert_secret_free(err, text)


@pytest.mark.parametrize("prefix", [0, 17, 20, 55, 127, 128, 0x92, 255])
def test_unknown_prefix(prefix: int) -> None:
    text = keccak_checked(bytes([prefix]) + SPEND + VIEW)
    with pytest.raises(AddressError, match="unknown network prefix") as err:
        decode_address(text)
    assert_secret_free(err, text)


@pytest.mark.parametrize("position", [1, 11, 40, 90, 94])
def test_mistyped_character_fails_the_checksum(position: int) -> None:
    # swapping in the next alphabet character keeps every block in range here
    old = MAINNET[position]
    text = MAINNET[:position] + ALPHABET[ALPHABET.index(old) - 1] + MAINNET[position + 1 :]
    with pytest.raises(AddressError, match="checksum does not match") as err:
        decode_address(text)
    assert_secret_free(err, text, MAINNET)


def test_checksum_is_keccak_not_sha3() -> None:
    from Crypto.Hash import SHA3_256

    body = bytes([18]) + SPEND + VIEW
    text = base58_encode(body + SHA3_256.new(body).digest()[:4])
    with pytest.raises(AddressError, match="checksum"):
        decode_address(text)


def test_overflowing_block_in_an_address() -> None:
    text = "z" * 11 + MAINNET[11:]
    with pytest.raises(AddressError, match="too large for its byte count") as err:
        decode_address(text)
    assert_secret_free(err, text)


def b58_block(value: int, width: int) -> str:
    """One block written out independently of the module under test."""
    digits = []
    for _ in range(width):
        value, digit = divmod(value, 58)
        digits.append(ALPHABET[digit])
    assert value == 0
    return "".join(reversed(digits))


@pytest.mark.parametrize(("size", "width"), [(1, 2), (2, 3), (3, 5), (4, 6), (5, 7), (6, 9), (7, 10), (8, 11)])
def test_block_values_up_to_the_byte_count_and_no_further(size: int, width: int) -> None:
    largest = b58_block(256**size - 1, width)
    assert base58_decode(largest) == b"\xff" * size
    assert base58_decode("1" * 11 + largest) == bytes(8) + b"\xff" * size
    for text in (
        b58_block(256**size, width),
        "1" * 11 + b58_block(256**size, width),  # in the final block
        b58_block(2**64, 11) + largest,  # in a full block before it
    ):
        with pytest.raises(AddressError, match="too large for its byte count"):
            base58_decode(text)


@pytest.mark.parametrize("length", [1, 4, 8, 12, 15, 19])
def test_impossible_final_block_length(length: int) -> None:
    with pytest.raises(AddressError, match="block of impossible length"):
        base58_decode("2" * length)


@pytest.mark.parametrize("source", [SUBADDRESS["mainnet"], SUBADDRESS["testnet"], MAINNET_INTEGRATED])
def test_integrated_addresses_come_from_a_primary_address_only(source: str) -> None:
    with pytest.raises(AddressError, match="^integrated addresses are built from a primary address$") as err:
        make_integrated_address(source, PID)
    assert_secret_free(err, source, PID)


@pytest.mark.parametrize(
    "pid",
    [
        "0000000000000000",  # every plain payment carries it; wallet-rpc would accept it
        "0123456789abcde",
        "0123456789abcdef0",
        "0123456789abcdeg",
        " 0123456789abcde",
        "0123456789abcdef" * 4,  # a long PID: no integrated form
        "",
        "０123456789abcde",  # a fullwidth digit
    ],
)
def test_bad_payment_id(pid: str) -> None:
    with pytest.raises(AddressError, match="payment id must be exactly 16 hex") as err:
        make_integrated_address(MAINNET, pid)
    assert_secret_free(err, MAINNET, pid or "\0")


def test_a_bad_primary_address_is_reported_before_the_pid() -> None:
    with pytest.raises(AddressError, match="checksum"):
        make_integrated_address(MAINNET[:-1] + "b", "not a pid")


@pytest.mark.parametrize("value", [None, 42, b"435CN", ["4"]])
def test_non_text_is_an_address_error(value: object) -> None:
    with pytest.raises(AddressError):
        decode_address(value)  # type: ignore[arg-type]
    with pytest.raises(AddressError):
        make_integrated_address(MAINNET, value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        ("regtest", "standard", SPEND, VIEW, None),
        ("mainnet", "primary", SPEND, VIEW, None),
        ("mainnet", "standard", SPEND[:31], VIEW, None),
        ("mainnet", "standard", SPEND, VIEW + b"\0", None),
        ("mainnet", "standard", SPEND, VIEW, bytes(8)),
        ("mainnet", "integrated", SPEND, VIEW, None),
        ("mainnet", "integrated", SPEND, VIEW, bytes(32)),
    ],
)
def test_impossible_addresses_cannot_be_constructed(fields: tuple) -> None:
    with pytest.raises(ValueError):
        MoneroAddress(*fields)


# --- properties -------------------------------------------------------------------

keys = st.binary(min_size=32, max_size=32)


@st.composite
def addresses(draw: st.DrawFn) -> MoneroAddress:
    kind = draw(st.sampled_from(KINDS))
    pid = draw(st.binary(min_size=8, max_size=8)) if kind == "integrated" else None
    return MoneroAddress(draw(st.sampled_from(NETWORKS)), kind, draw(keys), draw(keys), pid)


@given(addresses())
def test_round_trip(address: MoneroAddress) -> None:
    text = address.encode()
    assert decode_address(text) == address
    assert text[0] in FIRST_CHARS[address.network, address.kind]
    assert set(text) <= set(ALPHABET)


@given(st.binary(max_size=200))
def test_base58_round_trip_and_length(data: bytes) -> None:
    text = base58_encode(data)
    assert base58_decode(text) == data
    full, rest = divmod(len(data), 8)
    assert len(text) == 11 * full + [0, 2, 3, 5, 6, 7, 9, 10, 11][rest]


@given(st.text(max_size=300))
def test_arbitrary_text_raises_only_address_error(text: str) -> None:
    try:
        decode_address(text)
    except AddressError as err:
        assert str(err) in MESSAGES
        assert err.__context__ is None


@given(st.text(alphabet=ALPHABET, min_size=95, max_size=95) | st.text(alphabet=ALPHABET, min_size=106, max_size=106))
def test_random_base58_of_address_length_is_refused(text: str) -> None:
    # all checks up to the checksum pass for some of these; the checksum then
    # refuses them except with probability 2^-32
    with pytest.raises(AddressError):
        decode_address(text)


@given(addresses(), st.data())
def test_any_single_substitution_is_refused(address: MoneroAddress, data: st.DataObject) -> None:
    text = address.encode()
    i = data.draw(st.integers(0, len(text) - 1))
    c = data.draw(st.sampled_from(ALPHABET.replace(text[i], "")))
    with pytest.raises(AddressError) as err:  # checksum collision: probability 2^-32
        decode_address(text[:i] + c + text[i + 1 :])
    assert str(err.value) in MESSAGES
