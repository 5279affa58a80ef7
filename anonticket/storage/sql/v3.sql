-- anonticket schema version 3: what a payment buys (time and/or credit), debits, top-ups.
-- Applied by anonticket.storage after v2.sql (which brings any database to version 2),
-- inside one transaction together with PRAGMA user_version, like every version.
-- ADD COLUMN keeps both tables in place: on a million payments the migration is one pass
-- over the claimed ones (docs/operations.md has the measured time).
BEGIN IMMEDIATE;

-- The token a payment's credit goes to: its own (set when it is redeemed) or the one it was
-- added to by a top-up. NULL while unclaimed. Later transfers to the PID credit that token.
ALTER TABLE payments ADD COLUMN token BLOB CHECK (token IS NULL OR length(token) = 32);
-- Seconds of access bought so far, each credit priced at the ACCESS_PRICE_PER_DAY in force
-- when it was credited (so a later price change never rewrites what was bought). NULL: the
-- payment buys unlimited time (no price was in force), which is every version-2 payment.
ALTER TABLE payments ADD COLUMN seconds INTEGER CHECK (seconds IS NULL OR seconds >= 0);
UPDATE payments SET token = (SELECT t.token FROM service_tokens AS t WHERE t.pid = payments.pid)
 WHERE status = 1;

-- amount is what was credited in all (piconero), spent what debits drew from it; the CHECK is
-- the "never below zero" guard every debit statement relies on. expires_at NULL: no time limit.
ALTER TABLE service_tokens ADD COLUMN spent INTEGER NOT NULL DEFAULT 0
    CHECK (spent >= 0 AND spent <= amount);
ALTER TABLE service_tokens ADD COLUMN expires_at INTEGER;

-- Every applied debit, kept for good: a token's spent is the sum of its debits (db check).
CREATE TABLE IF NOT EXISTS debits (
    id     INTEGER PRIMARY KEY,
    token  BLOB    NOT NULL CHECK (length(token) = 32),
    amount INTEGER NOT NULL CHECK (amount > 0),
    memo   TEXT    CHECK (memo IS NULL OR length(memo) <= 128),
    at     INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS debits_by_token ON debits (token, id);

-- The answer given to each (token, Idempotency-Key), refusals included, replayed on a retry
-- with the same request and refused (422) for a different one; pruned after
-- DEBIT_IDEMPOTENCY_TTL_SECS. request is a digest of the request's fields.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    token      BLOB    NOT NULL CHECK (length(token) = 32),
    key        TEXT    NOT NULL CHECK (length(key) BETWEEN 1 AND 128),
    request    BLOB    NOT NULL CHECK (length(request) = 32),
    status     INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (token, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_at);

-- Set once a token's expiry has been noticed (the sweep, every few seconds, marks it and
-- writes its token.expired event in one transaction), cleared when a top-up moves the
-- expiry again. The partial index holds only the tokens still to be noticed, so the
-- sweep's probe costs nothing when none has expired.
ALTER TABLE service_tokens ADD COLUMN expired_notified INTEGER NOT NULL DEFAULT 0
    CHECK (expired_notified IN (0, 1));
CREATE INDEX IF NOT EXISTS service_tokens_to_notice ON service_tokens (expires_at)
    WHERE expired_notified = 0 AND expires_at IS NOT NULL;

-- The webhook outbox (docs/webhooks.md): one row per event, written in the transaction of
-- the change it reports, and only while WEBHOOK_URL is set. id is the webhook-id (random,
-- never reused), body the exact text every attempt sends and signs. status 0: due at
-- next_attempt_at (unix seconds, fractions allowed); 1: delivered, pruned after
-- WEBHOOK_RETENTION_SECS; 2: dead (every attempt failed), kept until replayed.
-- last_result is a fixed word (http_503, timeout, ...), never text from the receiver.
CREATE TABLE IF NOT EXISTS webhook_events (
    seq             INTEGER PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE CHECK (length(id) BETWEEN 1 AND 64),
    type            TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    status          INTEGER NOT NULL DEFAULT 0 CHECK (status IN (0, 1, 2)),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at REAL    NOT NULL,
    last_attempt_at INTEGER,
    last_result     TEXT,
    delivered_at    INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS webhook_events_due ON webhook_events (next_attempt_at)
    WHERE status = 0;
CREATE INDEX IF NOT EXISTS webhook_events_by_status ON webhook_events (status, seq);

-- One row. disabled_url is the SHA-256 of the WEBHOOK_URL that answered 410 Gone (the URL
-- may hold a password): delivery stays off for that URL until `anonticket webhook enable`,
-- and a different URL is not affected.
CREATE TABLE IF NOT EXISTS webhook_state (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    disabled_at  INTEGER,
    disabled_url BLOB CHECK (disabled_url IS NULL OR length(disabled_url) = 32)
) STRICT;
INSERT OR IGNORE INTO webhook_state (id) VALUES (1);

PRAGMA user_version = 3;
COMMIT;
