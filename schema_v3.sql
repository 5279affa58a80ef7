-- anonticket schema version 3: what a payment buys (time and/or credit), debits, top-ups.
-- Applied by anonticket.storage after schema.sql (which brings any database to version 2),
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

PRAGMA user_version = 3;
COMMIT;
