-- anonticket schema for PostgreSQL, version 4: the webhook outbox, and the expiry notices it
-- reports. Together with version 3 (v3.sql) this is what SQLite's version 3 holds
-- (storage/sql/v3.sql): the PostgreSQL backend shipped its version 3 without the outbox, so
-- the numbers of the two dialects part here. Applied by anonticket.storage.postgres.schema in
-- the transaction that records version 4 in schema_versions, under the advisory lock.

-- Set once a token's expiry has been noticed (the sweep marks it and writes its
-- token.expired event in one transaction), cleared when a top-up moves the expiry again.
-- The partial index holds only the tokens still to be noticed, so the sweep's probe costs
-- nothing when none has expired.
ALTER TABLE service_tokens ADD COLUMN expired_notified smallint NOT NULL DEFAULT 0
    CHECK (expired_notified IN (0, 1));
-- Version 3 never noticed an expiry (it had no outbox to report one to): tokens already
-- expired when this runs count as noticed, as they would on SQLite with webhooks off,
-- rather than announced all at once to a receiver that starts listening today.
UPDATE service_tokens SET expired_notified = 1
 WHERE expires_at IS NOT NULL AND expires_at <= extract(epoch FROM now())::bigint;
CREATE INDEX service_tokens_to_notice ON service_tokens (expires_at)
    WHERE expired_notified = 0 AND expires_at IS NOT NULL;

-- The webhook outbox (docs/webhooks.md): one row per event, written in the transaction of
-- the change it reports, and only while WEBHOOK_URL is set. id is the webhook-id (random,
-- never reused), body the exact text every attempt sends and signs. status 0: due at
-- next_attempt_at (unix seconds, fractions allowed); 1: delivered, pruned after
-- WEBHOOK_RETENTION_SECS; 2: dead (every attempt failed), kept until replayed.
-- last_result is a fixed word (http_503, timeout, ...), never text from the receiver.
-- seq orders the sender's reads; from two sessions it need not be commit order, and
-- nothing relies on that.
CREATE TABLE webhook_events (
    seq             bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              text             NOT NULL UNIQUE CHECK (length(id) BETWEEN 1 AND 64),
    type            text             NOT NULL,
    body            text             NOT NULL,
    created_at      bigint           NOT NULL,
    status          smallint         NOT NULL DEFAULT 0 CHECK (status IN (0, 1, 2)),
    attempts        integer          NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at double precision NOT NULL,
    last_attempt_at bigint,
    last_result     text,
    delivered_at    bigint
);
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE status = 0;
CREATE INDEX webhook_events_by_status ON webhook_events (status, seq);

-- One row. disabled_url is the SHA-256 of the WEBHOOK_URL that answered 410 Gone (the URL
-- may hold a password): delivery stays off for that URL until `anonticket webhook enable`,
-- and a different URL is not affected.
CREATE TABLE webhook_state (
    id           smallint PRIMARY KEY CHECK (id = 1),
    disabled_at  bigint,
    disabled_url bytea    CHECK (disabled_url IS NULL OR length(disabled_url) = 32)
);
INSERT INTO webhook_state (id) VALUES (1) ON CONFLICT (id) DO NOTHING;
