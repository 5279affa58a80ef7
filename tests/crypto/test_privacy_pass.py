"""Privacy Pass type 0x0002 (anonticket/crypto/privacy_pass.py, privacy_pass_http.py, http_auth.py):
the RFC 9578 Appendix A.2 vectors end to end, every refusal the issuer must answer with a 422,
the header values and the issuer directory, and hostile bytes that must never crash a parser."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from Crypto.PublicKey import RSA
from hypothesis import given, settings
from hypothesis import strategies as st

from anonticket.crypto import blind_rsa
from anonticket.crypto import privacy_pass as pp
from anonticket.crypto import privacy_pass_http as ppx
from anonticket.crypto.http_auth import AuthHeaderError, parse_challenges, parse_credentials
from anonticket.crypto.privacy_pass import (
    InvalidToken, InvalidTokenKey, IssuerKey, MalformedMessage, PrivacyPassError,
    Token, TokenChallenge, TokenKey, TokenRequest, TokenResponse, UnknownTokenKey,
    UnsupportedTokenType,
)
from anonticket.crypto.privacy_pass_http import IssuerDirectory

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "rfc9578_type2_issuance.json").read_text())["vectors"]
FUZZ = settings(deadline=None, database=None, max_examples=150)


def _issuer(vector: dict[str, str]) -> IssuerKey:
    return IssuerKey(RSA.import_key(bytes.fromhex(vector["skS"]).decode()))


@pytest.fixture(scope="module")
def issuer() -> IssuerKey:
    return _issuer(VECTORS[0])


@pytest.fixture(scope="module")
def other_issuer() -> IssuerKey:
    """A second, fresh key: also proves IssuerKey.generate makes a usable type-2 key."""
    key = IssuerKey.generate()
    assert key.token_key.public_key.n.bit_length() == 2048 and key.token_key.public_key.e == 65537
    return key


CHALLENGE = TokenChallenge("issuer.example", b"", ("origin.example",)).encode()


@pytest.mark.parametrize("vector", VECTORS, ids=[f"vector{i + 1}" for i in range(len(VECTORS))])
def test_rfc9578_type2_vectors(vector: dict[str, str]) -> None:
    issuer = _issuer(vector)
    spki = bytes.fromhex(vector["pkS"])
    assert issuer.token_key.spki == spki  # our SPKI encoding is the RFC's, byte for byte
    assert TokenKey.from_spki(spki) == issuer.token_key
    challenge = bytes.fromhex(vector["token_challenge"])
    assert TokenChallenge.decode(challenge).encode() == challenge

    request, pending = pp._create_token_request(
        challenge, issuer.token_key, bytes.fromhex(vector["nonce"]), bytes.fromhex(vector["salt"]),
        int(vector["blind"], 16))
    assert request.encode().hex() == vector["token_request"]

    response = issuer.issue(TokenRequest.decode(bytes.fromhex(vector["token_request"])))
    assert response.encode().hex() == vector["token_response"]

    token = pp.finalize_token(pending, TokenResponse.decode(bytes.fromhex(vector["token_response"])))
    assert token.encode().hex() == vector["token"]
    assert token.challenge_digest == pp.challenge_digest(challenge)
    assert token.token_key_id == issuer.token_key.token_key_id
    pp.verify_token(Token.decode(bytes.fromhex(vector["token"])), issuer.token_key)


def test_the_key_id_is_sha256_of_the_rsassa_pss_spki(issuer: IssuerKey) -> None:
    """RFC 9578 §6.5: id-RSASSA-PSS with sha384 / mgf1-sha384 / salt 48 and the hash parameters
    omitted; a plain rsaEncryption SPKI of the same key is not a token key."""
    spki = issuer.token_key.spki
    assert spki[4:67] == bytes.fromhex(
        "303d06092a864886f70d01010a3030a00d300b0609608648016503040202a11a301806092a864886f70d010108"
        "300b0609608648016503040202a203020130")
    assert issuer.token_key.token_key_id == hashlib.sha256(spki).digest()
    assert issuer.token_key.truncated_token_key_id == issuer.token_key.token_key_id[-1]
    with pytest.raises(InvalidTokenKey):
        TokenKey.from_spki(issuer.token_key.public_key.export_key("DER"))
    with pytest.raises(InvalidTokenKey):
        TokenKey.from_spki(spki + b"\x00")
    with pytest.raises(InvalidTokenKey):
        TokenKey.from_spki(spki[:-1])


def test_only_2048_bit_keys_are_type_2_keys() -> None:
    small = RSA.construct((RSA.generate(1024).n, 65537))
    with pytest.raises(InvalidTokenKey):
        TokenKey.from_public_key(small)
    spki_1024 = pp.encode_spki(small)  # well-formed, wrong size
    with pytest.raises(InvalidTokenKey):
        TokenKey.from_spki(spki_1024)


def test_issuer_refusals_are_the_rfc_422s(issuer: IssuerKey, other_issuer: IssuerKey) -> None:
    request, _ = pp.create_token_request(CHALLENGE, issuer.token_key)
    wire = request.encode()
    assert len(wire) == 259
    with pytest.raises(UnsupportedTokenType) as wrong_type:
        TokenRequest.decode(b"\x00\x01" + wire[2:])
    assert wrong_type.value.code == "unsupported_token_type"
    with pytest.raises(UnsupportedTokenType):
        TokenRequest.decode(b"\x00\x01")  # the type is judged before the size
    for data in (b"", b"\x00", b"\x00\x02", wire[:-1], wire + b"\x00"):
        with pytest.raises(MalformedMessage) as wrong_size:
            TokenRequest.decode(data)
        assert wrong_size.value.code == "malformed_message"
    with pytest.raises(UnknownTokenKey) as wrong_key:
        issuer.issue(TokenRequest((request.truncated_token_key_id + 1) % 256, request.blinded_msg))
    assert wrong_key.value.code == "unknown_token_key"
    with pytest.raises(MalformedMessage):  # right size, not below n
        issuer.issue(TokenRequest(request.truncated_token_key_id, b"\xff" * 256))


def test_client_refuses_a_response_from_the_wrong_key(issuer: IssuerKey, other_issuer: IssuerKey) -> None:
    request, pending = pp.create_token_request(CHALLENGE, issuer.token_key)
    their_n = other_issuer.token_key.public_key.n
    forged = blind_rsa.blind_sign(other_issuer._private_key,
                                  (int.from_bytes(request.blinded_msg, "big") % their_n).to_bytes(256, "big"))
    with pytest.raises(InvalidToken):
        pp.finalize_token(pending, TokenResponse(forged))
    with pytest.raises(MalformedMessage):
        TokenResponse.decode(forged[:-1])
    with pytest.raises(UnsupportedTokenType):
        pp.create_token_request(TokenChallenge("issuer.example", token_type=1).encode(), issuer.token_key)


def test_origin_verification(issuer: IssuerKey, other_issuer: IssuerKey) -> None:
    request, pending = pp.create_token_request(CHALLENGE, issuer.token_key)
    token = pp.finalize_token(pending, issuer.issue(request))
    pp.verify_token(token, issuer.token_key)
    with pytest.raises(UnknownTokenKey):
        pp.verify_token(token, other_issuer.token_key)
    authenticator = bytearray(token.authenticator)
    authenticator[7] ^= 1
    for forged in (Token(token.nonce, token.challenge_digest, token.token_key_id, bytes(authenticator)),
                   Token(bytes(32), token.challenge_digest, token.token_key_id, token.authenticator),
                   Token(token.nonce, bytes(32), token.token_key_id, token.authenticator)):
        with pytest.raises(InvalidToken) as refused:
            pp.verify_token(forged, issuer.token_key)
        assert refused.value.code == "invalid_token"
    # a token another key signed, relabelled with this key's id, does not verify either
    request, pending = pp.create_token_request(CHALLENGE, other_issuer.token_key)
    theirs = pp.finalize_token(pending, other_issuer.issue(request))
    with pytest.raises(InvalidToken):
        pp.verify_token(Token(theirs.nonce, theirs.challenge_digest, issuer.token_key.token_key_id,
                              theirs.authenticator), issuer.token_key)
    wire = token.encode()
    assert len(wire) == Token.SIZE == 354 and Token.decode(wire) == token
    with pytest.raises(UnsupportedTokenType):
        Token.decode(b"\x00\x01" + wire[2:])
    with pytest.raises(MalformedMessage):
        Token.decode(wire[:-1])


def test_token_challenge_structure() -> None:
    context = bytes(range(32))
    challenge = TokenChallenge("issuer.example", context, ("a.example", "b.example"))
    wire = challenge.encode()
    assert wire[:2] == b"\x00\x02" and TokenChallenge.decode(wire) == challenge
    assert TokenChallenge.decode(TokenChallenge("i").encode()).origin_info == ()
    for bad in (TokenChallenge(""), TokenChallenge("i", b"short"), TokenChallenge("i", origin_info=("",)),
                TokenChallenge("i", origin_info=("a,b",)), TokenChallenge("i", token_type=1 << 16)):
        with pytest.raises(MalformedMessage):
            bad.encode()
    for bad_wire in (wire + b"\x00", wire[:-1], b"\x00\x02\x00\x00\x00\x00\x00",
                     b"\x00\x02\x00\x01\xff\x00\x00\x00", b"\x00\x02\x00\x01i\x05abcde\x00\x00",
                     b"\x00\x02\x00\x01i\x00\x00\x03a,,"):
        with pytest.raises(MalformedMessage):
            TokenChallenge.decode(bad_wire)
    with pytest.raises(UnicodeEncodeError):
        TokenChallenge("issuér").encode()


def test_header_values_round_trip(issuer: IssuerKey) -> None:
    value = ppx.format_www_authenticate(CHALLENGE, issuer.token_key, max_age=300)
    assert value.startswith('PrivateToken challenge="') and '", token-key="' in value
    (found,) = ppx.parse_www_authenticate(f'Bearer realm="anonticket", {value}, Basic realm="x"')
    assert found == ppx.PrivateTokenChallenge(CHALLENGE, issuer.token_key.spki, 300)
    assert TokenKey.from_spki(found.token_key) == issuer.token_key
    assert ppx.parse_www_authenticate('Bearer realm="anonticket"') == []

    request, pending = pp.create_token_request(found.challenge, issuer.token_key)
    token = pp.finalize_token(pending, issuer.issue(request))
    header = ppx.format_authorization(token)
    assert header == f'PrivateToken token="{base64.urlsafe_b64encode(token.encode()).decode()}"'
    assert ppx.parse_authorization(header) == token
    unpadded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    assert ppx.parse_authorization(f"privatetoken  TOKEN={unpadded}") == token
    assert ppx.parse_authorization("Bearer 0123abcd") is None
    assert ppx.parse_authorization('Basic realm="x"') is None


def test_headers_as_privacypass_ts_writes_them(issuer: IssuerKey) -> None:
    """Its default output is unquoted, padding included, no space after the comma."""
    b64 = base64.urlsafe_b64encode
    value = f"PrivateToken challenge={b64(CHALLENGE).decode()},token-key={b64(issuer.token_key.spki).decode()}"
    (found,) = ppx.parse_www_authenticate(value)
    assert found.challenge == CHALLENGE and found.token_key == issuer.token_key.spki


@pytest.mark.parametrize("value", [
    "PrivateToken", 'PrivateToken token="!!!"', 'PrivateToken token="AAAA", token="BBBB" x',
    'PrivateToken token="AAIA"', 'PrivateToken other="x"', 'PrivateToken token="A"',
    'PrivateToken token="AA=A"', 'PrivateToken token="x", Bearer y', '"PrivateToken"',
])
def test_malformed_authorization(value: str) -> None:
    with pytest.raises(MalformedMessage):
        ppx.parse_authorization(value)


_CHALLENGE_B64 = base64.urlsafe_b64encode(CHALLENGE).decode()


@pytest.mark.parametrize("value", [
    'PrivateToken token-key="AAAA"', f'PrivateToken challenge="{_CHALLENGE_B64}"',
    f'PrivateToken challenge="{_CHALLENGE_B64}", token-key="AAAA", max-age="-1"',
    f'PrivateToken challenge="{_CHALLENGE_B64}", token-key="AAAA", max-age="1e3"',
    f'PrivateToken challenge="{_CHALLENGE_B64}", token-key="AAAA", max-age={"9" * 5000}',
    'PrivateToken challenge="AAIAAA==", token-key="AAAA"',  # not a TokenChallenge
    "PrivateToken challenge=", 'PrivateToken challenge="a"b',
])
def test_malformed_www_authenticate(value: str) -> None:
    with pytest.raises(MalformedMessage):
        ppx.parse_www_authenticate(value)


def test_auth_grammar() -> None:
    parsed = parse_challenges('Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"')
    assert [(c.scheme, c.params) for c in parsed] == [
        ("newauth", {"realm": "apps", "type": "1", "title": 'Login to "apps"'}),
        ("basic", {"realm": "simple"})]
    assert parse_credentials("Bearer mF_9.B5f-4.1JqM").token68 == "mF_9.B5f-4.1JqM"
    for bad in ("Bearer a b", "a, b c d", 'x y="unterminated', "Basic realm=\"x\" junk", "=x"):
        with pytest.raises(AuthHeaderError):
            parse_challenges(bad)
    with pytest.raises(AuthHeaderError):
        parse_credentials("Basic a, Bearer b")


def test_issuer_directory(issuer: IssuerKey, other_issuer: IssuerKey) -> None:
    document = ppx.issuer_directory("/token-request", [(other_issuer.token_key, 2_000_000_000),
                                                      (issuer.token_key, None)])
    assert document == {
        "issuer-request-uri": "/token-request",
        "token-keys": [
            {"token-type": 2, "token-key": ppx.b64url_encode(other_issuer.token_key.spki),
             "not-before": 2_000_000_000},
            {"token-type": 2, "token-key": ppx.b64url_encode(issuer.token_key.spki)},
        ]}
    assert ppx.b64url_encode(b"\xfb\xff") == "-_8="  # base64url, with padding (RFC 9578 §4)
    parsed = IssuerDirectory.from_json(json.loads(json.dumps(document)))
    assert parsed.to_json() == document
    assert parsed.current_key(1_999_999_999.5).token_key == issuer.token_key
    assert parsed.current_key(2_000_000_000).token_key == other_issuer.token_key
    mixed = {"issuer-request-uri": "https://i.example/r", "token-keys": [
        {"token-type": 1, "token-key": "AAAA"}, document["token-keys"][1]]}
    assert [k.token_key for k in IssuerDirectory.from_json(mixed).token_keys] == [issuer.token_key]
    assert IssuerDirectory("u", ()).current_key(0) is None
    for bad in ([], {"token-keys": []}, {"issuer-request-uri": "u", "token-keys": {}},
                {"issuer-request-uri": "u", "token-keys": [{"token-type": "2"}]},
                {"issuer-request-uri": "u", "token-keys": [{"token-type": 2, "token-key": "AAAA"}]},
                {"issuer-request-uri": "u", "token-keys": [{**document["token-keys"][1], "not-before": 1.5}]}):
        with pytest.raises(PrivacyPassError):
            IssuerDirectory.from_json(bad)


def test_private_key_round_trip_and_repr(issuer: IssuerKey) -> None:
    again = IssuerKey.from_pkcs8(issuer.to_pkcs8())
    assert again.token_key == issuer.token_key
    key = issuer._private_key
    for text in (repr(issuer), str(issuer)):
        for secret in (key.d, key.p, key.q):
            assert str(secret) not in text and format(secret, "x") not in text
    request, pending = pp.create_token_request(CHALLENGE, issuer.token_key)
    assert "inv" not in repr(pending) and str(pending.inv) not in repr(pending)
    with pytest.raises(ValueError):
        IssuerKey.from_pkcs8(b"not a key")
    with pytest.raises(TypeError):
        IssuerKey(key.public_key())


def test_errors_carry_code_and_fixed_message() -> None:
    for cls in (MalformedMessage, UnsupportedTokenType, UnknownTokenKey, InvalidTokenKey, InvalidToken):
        error = cls()
        assert isinstance(error, PrivacyPassError) and isinstance(error, ValueError)
        assert error.args == (cls.message,) and cls.code.isidentifier()
    assert len({cls.code for cls in (MalformedMessage, UnsupportedTokenType, UnknownTokenKey,
                                     InvalidTokenKey, InvalidToken)}) == 5


# --- hostile input: parsers raise PrivacyPassError and nothing else ----------------------------

def _only_format_errors(call: Callable[[], Any]) -> None:
    try:
        call()
    except PrivacyPassError as error:
        assert error.args == (type(error).message,)  # never the input


@FUZZ
@given(st.binary(max_size=400))
def test_hostile_bytes_never_crash_the_decoders(data: bytes) -> None:
    for decode in (TokenChallenge.decode, TokenRequest.decode, TokenResponse.decode, Token.decode,
                   TokenKey.from_spki):
        _only_format_errors(lambda: decode(data))


@FUZZ
@given(st.binary(min_size=3 + pp.NK, max_size=3 + pp.NK))
def test_hostile_requests_never_crash_the_issuer(issuer: IssuerKey, data: bytes) -> None:
    data = b"\x00\x02" + bytes([issuer.token_key.truncated_token_key_id]) + data[3:]
    _only_format_errors(lambda: issuer.issue(TokenRequest.decode(data)))


_HEADERISH = st.one_of(
    st.text(max_size=300),
    st.text(alphabet='PrivateTokn tkeychalg=",\\ AZaz09-_/+=\t', max_size=300),
    st.builds(lambda a, b: f"PrivateToken {a}={b}", st.sampled_from(["token", "challenge", "token-key"]),
              st.text(alphabet="AZaz09-_=\"", max_size=500)),
)


@FUZZ
@given(_HEADERISH)
def test_hostile_header_values_never_crash_the_parsers(value: str) -> None:
    _only_format_errors(lambda: ppx.parse_authorization(value))
    _only_format_errors(lambda: ppx.parse_www_authenticate(value))
    _only_format_errors(lambda: ppx.b64url_decode(value))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                         st.sampled_from(["issuer-request-uri", "token-keys", "token-type", "token-key",
                                          "not-before", "x"]), inner, max_size=4), max_leaves=20)


@FUZZ
@given(_JSON)
def test_hostile_directories_never_crash_the_parser(document: Any) -> None:
    _only_format_errors(lambda: IssuerDirectory.from_json(document))
