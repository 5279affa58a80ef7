"""``anonticket webhook …`` as the operator runs it: the real binary against the running
service's internal listener (with the admin token), the service delivering to a real
receiver on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from anonticket.service.app import Service, start_service
from anonticket.domain.webhook import new_secret, parse_secret
from conftest import make_config
from crash_helpers import wait_until
from test_cli import clean_env, one_error_line
from test_cli_admin import ADMIN_TOKEN, DEAD_PROXY, cli, paid_and_redeemed
from webhook_receiver import Receiver

SECRET = new_secret()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(SECRET) as running:
        yield running


@pytest.fixture
async def service(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Service]:
    running = await start_service(make_config(
        tmp_path, API_INTERNAL_TOKEN=ADMIN_TOKEN, WEBHOOK_URL=receiver.url,
        WEBHOOK_SECRET=SECRET, WEBHOOK_RETRY_SCHEDULE_SECS="0.05"))
    yield running
    await running.aclose()


def env_for(service: Service) -> dict[str, str]:
    return clean_env(API_INTERNAL_BIND_ADDRESS=service.internal_address,
                     API_INTERNAL_TOKEN=ADMIN_TOKEN, **DEAD_PROXY)


async def test_secret_prints_a_fresh_valid_secret() -> None:
    first = await cli(clean_env(), "webhook", "secret")
    second = await cli(clean_env(), "webhook", "secret")
    assert first[0] == second[0] == 0 and first[1] != second[1]
    secret = first[1].strip()
    assert len(parse_secret(secret)) == 32
    Webhook(secret)  # the reference implementation takes it too


async def test_test_list_replay_and_enable(service: Service, receiver: Receiver) -> None:
    env = env_for(service)
    code, out, err = await cli(env, "webhook", "test")
    assert code == 0, err
    assert "delivered" in out and receiver.requests[-1].verified
    assert receiver.requests[-1].payload["type"] == "webhook.test"
    receiver.answer(500)
    code, out, err = await cli(env, "webhook", "test", "--json")
    assert code == 1 and json.loads(out)["http_status"] == 500
    assert one_error_line(err) == ("anonticket: the receiver did not accept the test event "
                                   "(http_500)")

    receiver.answer(500, times=2)  # both attempts of the next event fail: it is dead
    await paid_and_redeemed(service)
    storage = service.state.ledger.storage

    async def dead() -> bool:
        return (await storage.webhook_queue())["dead"] == 1

    await wait_until(dead, "the dead event")
    code, out, err = await cli(env, "webhook", "list", "--dead")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["webhooks", "on"] and lines[2].split() == ["dead", "1"]
    event = json.loads((await cli(env, "webhook", "list", "--json"))[1])["events"][0]
    assert event["status"] == "dead" and event["type"] == "token.issued"
    assert event["id"] in out and "http_500" in out
    code, out, err = await cli(env, "webhook", "replay", event["id"])
    assert (code, out) == (0, "queued again: 1\n"), err
    await receiver.wait_for(lambda r: any(d.id == event["id"] and d.status == 204
                                          for d in r.requests), "the replayed event")
    code, out, err = await cli(env, "webhook", "replay", "--all-dead")
    assert (code, out) == (0, "queued again: 0\n")
    code, _, err = await cli(env, "webhook", "replay", "msg_nope")
    assert code == 1 and "webhook_event_not_found" in one_error_line(err)
    code, _, err = await cli(env, "webhook", "replay")
    assert code == 2 and one_error_line(err) == "anonticket: give an event ID or --all-dead"
    code, out, err = await cli(env, "webhook", "enable")
    assert code == 0 and out.startswith("delivery enabled"), err
