"""Our Standard Webhooks signatures, checked by code we did not write: the ``standardwebhooks``
package verifies them, and docs/webhooks.md's test vector is recomputed from its text."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from anonticket.domain import webhook

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def _vector() -> dict[str, str]:
    block = re.search(r"<!-- test-vector -->\n```\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/webhooks.md has no test vector block"
    fields = {}
    for line in block.group(1).splitlines():
        name, _, value = line.partition(": ")
        fields[name.strip()] = value
    return fields


def test_the_documented_vector_is_what_we_and_standardwebhooks_compute() -> None:
    v = _vector()
    key = webhook.parse_secret(v["secret"])
    # by hand, as a receiver in another language would do it
    by_hand = hmac.new(base64.b64decode(v["secret"].removeprefix("whsec_")),
                       f"{v['webhook-id']}.{v['webhook-timestamp']}.{v['body']}".encode(),
                       hashlib.sha256).digest()
    assert v["webhook-signature"] == "v1," + base64.b64encode(by_hand).decode()
    headers = webhook.signed_headers([key], v["webhook-id"], int(v["webhook-timestamp"]),
                                     v["body"].encode())
    assert headers["webhook-signature"] == v["webhook-signature"]
    # standardwebhooks checks the timestamp against its own clock: sign "now" with it
    # and with us over the vector's body, and compare
    from datetime import datetime, timezone
    now = int(time.time())
    theirs = Webhook(v["secret"]).sign(v["webhook-id"], datetime.fromtimestamp(now, timezone.utc),
                                       v["body"])
    assert theirs == webhook.signature(key, v["webhook-id"], now, v["body"].encode())
    # and the body is one of ours: the compact JSON event_body makes
    payload = json.loads(v["body"])
    assert webhook.event_body(payload["type"], 1767225600, payload["data"]) == v["body"]


@given(body=st.binary(max_size=300).map(lambda b: b.decode("latin-1").encode()),
       key=st.binary(min_size=24, max_size=64))
def test_standardwebhooks_verifies_every_signature_we_make(body: bytes, key: bytes) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    message_id = webhook.new_message_id()
    now = int(time.time())
    headers = webhook.signed_headers([webhook.parse_secret(secret)], message_id, now, body)
    Webhook(secret).verify(body, headers, json_parse=False)


def test_both_secrets_sign_during_a_rotation_and_either_verifies() -> None:
    old, new = webhook.new_secret(), webhook.new_secret()
    body = webhook.event_body("token.expired", 1767225600, {"token_id": "ab" * 16})
    headers = webhook.signed_headers([webhook.parse_secret(new), webhook.parse_secret(old)],
                                     webhook.new_message_id(), int(time.time()), body.encode())
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers)["type"] == "token.expired"
    with pytest.raises(WebhookVerificationError):
        Webhook(webhook.new_secret()).verify(body, headers)


def test_a_tampered_body_id_or_timestamp_fails_verification() -> None:
    secret = webhook.new_secret()
    key = webhook.parse_secret(secret)
    body = webhook.event_body("token.issued", 1767225600, {"token_id": "cd" * 16, "amount": "5000"})
    now = int(time.time())
    headers = webhook.signed_headers([key], "msg_abc", now, body.encode())
    Webhook(secret).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("5000", "50000"), headers)
    for name, value in (("webhook-id", "msg_abd"), ("webhook-timestamp", str(now - 1))):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(body, {**headers, name: value})


def test_a_replayed_delivery_with_a_stale_timestamp_fails_verification() -> None:
    """What an eavesdropper replays is an attempt signed more than 5 minutes ago."""
    secret = webhook.new_secret()
    body = webhook.event_body("token.revoked", 1767225600, {"token_id": "ef" * 16})
    stale = int(time.time()) - 301
    headers = webhook.signed_headers([webhook.parse_secret(secret)], "msg_x", stale, body.encode())
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(body, headers)


@pytest.mark.parametrize("text", [
    "", "nxw6XnstT2CBo8XnCStNb4GTpcfp+x0/WnyeCy1Paow=",  # no prefix
    "whsec_" + base64.b64encode(bytes(23)).decode(),  # too short
    "whsec_" + base64.b64encode(bytes(65)).decode(),  # too long
    "whsec_nxw6XnstT2CBo8XnCStNb4GTpcfp+x0/WnyeCy1Paow",  # padding missing
    "whsec_nxw6XnstT2CBo8XnCStNb4GTpcfp+x0/WnyeCy1Paow= ",  # trailing space
    "whsec_nxw6Xnst!2CBo8XnCStNb4GTpcfp+x0/WnyeCy1Paow=",  # not base64
])
def test_a_malformed_secret_is_refused_without_quoting_it(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        webhook.parse_secret(text)
    assert not text or text not in str(caught.value)


def test_new_secrets_and_ids_are_fresh_and_well_formed() -> None:
    secrets = {webhook.new_secret() for _ in range(50)}
    assert len(secrets) == 50
    assert all(len(webhook.parse_secret(s)) == webhook.NEW_SECRET_BYTES for s in secrets)
    ids = {webhook.new_message_id() for _ in range(50)}
    assert len(ids) == 50 and all(re.fullmatch(r"msg_[0-9a-f]{32}", i) for i in ids)


def test_the_documented_python_receiver_accepts_the_vector_and_refuses_a_tampered_body() -> None:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert code, "docs/webhooks.md has no Python receiver"
    namespace: dict[str, object] = {}
    exec(code.group(1), namespace)  # noqa: S102 - our own documentation
    verify = namespace["verify"]
    v = _vector()
    headers = {name: v[name] for name in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    body = v["body"].encode()
    assert verify(v["secret"], headers, body, tolerance=10**10)  # type: ignore[operator]
    assert not verify(v["secret"], headers, body + b" ", tolerance=10**10)  # type: ignore[operator]
    assert not verify(v["secret"], headers, body)  # type: ignore[operator]  # stale
