"""The webhook settings: checked by the rules their users apply, secrets never shown."""

from __future__ import annotations

import pytest

from anonticket.config import Config
from anonticket.domain.errors import ConfigError
from anonticket.domain.webhook import new_secret

SECRET = new_secret()


def test_webhooks_are_off_by_default() -> None:
    config = Config.from_env({})
    assert config.webhook_url is None and config.webhook_secret is None
    assert len(config.webhook_retry_schedule_secs) == 9
    assert sum(config.webhook_retry_schedule_secs) == 75 * 3600 + 35 * 60 + 5  # the spec's


@pytest.mark.parametrize("url", ["ftp://h/x", "http:///x", "http://h/x#frag", "http://h /x",
                                 "http://h:0/x", "http://h:99999/x", "h/x"])
def test_a_bad_url_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({"WEBHOOK_URL": url, "WEBHOOK_SECRET": SECRET})
    assert str(info.value).startswith("WEBHOOK_URL: ") and url not in str(info.value)


def test_a_url_needs_a_secret_and_a_previous_secret_needs_a_current_one() -> None:
    with pytest.raises(ConfigError, match="^WEBHOOK_SECRET: required"):
        Config.from_env({"WEBHOOK_URL": "https://backend.example/hook"})
    with pytest.raises(ConfigError, match="^WEBHOOK_SECRET_PREVIOUS: "):
        Config.from_env({"WEBHOOK_SECRET_PREVIOUS": SECRET})


def test_a_malformed_secret_is_refused_without_quoting_it() -> None:
    bad = SECRET[:-4] + "!!!!"
    with pytest.raises(ConfigError) as info:
        Config.from_env({"WEBHOOK_URL": "https://b.example/h", "WEBHOOK_SECRET": bad})
    assert str(info.value).startswith("WEBHOOK_SECRET: ") and bad not in str(info.value)


def test_describe_masks_the_secrets_and_the_urls_credentials_and_query() -> None:
    previous = new_secret()
    config = Config.from_env({"WEBHOOK_URL": "https://hook:pa55word@b.example/h?key=k3y",
                              "WEBHOOK_SECRET": SECRET, "WEBHOOK_SECRET_PREVIOUS": previous,
                              "WEBHOOK_RETRY_SCHEDULE_SECS": "0.5,60"})
    shown = config.describe()
    assert shown["WEBHOOK_URL"] == "https://***@b.example/h?***"
    assert shown["WEBHOOK_SECRET"] == shown["WEBHOOK_SECRET_PREVIOUS"] == "***"
    assert shown["WEBHOOK_RETRY_SCHEDULE_SECS"] == "0.5,60"
    text = " ".join(shown.values())
    for secret in (SECRET, previous, "pa55word", "k3y"):
        assert secret not in text


@pytest.mark.parametrize("schedule", ["", "5,,10", "5,-1", "0", "nan", "inf", "5;10"])
def test_a_bad_retry_schedule_is_refused(schedule: str) -> None:
    with pytest.raises(ConfigError, match="^WEBHOOK_RETRY_SCHEDULE_SECS: "):
        Config.from_env({"WEBHOOK_RETRY_SCHEDULE_SECS": schedule})


def test_webhooks_are_accepted_with_a_postgresql_database() -> None:
    """PostgreSQL has its outbox now (storage/postgres/outbox.py): the settings that were
    refused there until it existed start like on SQLite."""
    for database in ("postgresql:///anonticket?host=/run/postgresql", "postgres://db/anonticket"):
        config = Config.from_env({"DATABASE_URL": database, "WEBHOOK_URL": "http://127.0.0.1:9/hook",
                                  "WEBHOOK_SECRET": SECRET})
        assert (config.database_url, config.webhook_url) == (database, "http://127.0.0.1:9/hook")
    with pytest.raises(ConfigError, match="^WEBHOOK_SECRET: required"):  # the rules still apply
        Config.from_env({"DATABASE_URL": "postgresql:///anonticket",
                         "WEBHOOK_URL": "http://127.0.0.1:9/hook"})
