-- anonticket schema for PostgreSQL, version 3: the same tables, keys and CHECKs as v2.sql
-- followed by v3.sql on SQLite (storage/sql/), written for PostgreSQL by hand. Applied by
-- anonticket.storage.postgres.schema inside one transaction that also records the version in
-- schema_versions, under an advisory transaction lock so that instances starting together
-- apply it once. Amounts, heights and times are bigint (integer is 32-bit here; piconero
-- totals pass 2^31 at 0.002 XMR). No STRICT/WITHOUT ROWID: bytea and bigint columns are
-- typed already, and every table is a heap with its primary key as a B-tree index.

-- One row per payment ID that has received confirmed credit.
CREATE TABLE payments (
    pid          bytea    NOT NULL PRIMARY KEY CHECK (length(pid) = 32),
    -- the transfer the token derives from: the earliest credited (lowest height, then txid)
    txid         bytea    NOT NULL CHECK (length(txid) = 32),
    amount       bigint   NOT NULL CHECK (amount >= 0),          -- piconero, sum of transfers
    first_height bigint   NOT NULL CHECK (first_height >= 0),
    status       smallint NOT NULL DEFAULT 0 CHECK (status IN (0, 1)),  -- 0 unclaimed, 1 claimed
    created_at   bigint   NOT NULL,                              -- unix seconds
    claimed_at   bigint,
    -- the token this payment's credit goes to (its own, or the one a top-up added it to)
    token        bytea    CHECK (token IS NULL OR length(token) = 32),
    -- seconds of access bought (each credit at the price in force then); NULL: unlimited
    seconds      bigint   CHECK (seconds IS NULL OR seconds >= 0),
    CHECK ((status = 1) = (claimed_at IS NOT NULL))
);

-- Every credited wallet transfer exactly once: the primary key makes re-ingestion harmless.
-- No foreign key to payments and no index on pid, as on SQLite (`db check` verifies them).
CREATE TABLE transfers (
    txid        bytea  NOT NULL PRIMARY KEY CHECK (length(txid) = 32),
    pid         bytea  NOT NULL CHECK (length(pid) = 32),
    amount      bigint NOT NULL CHECK (amount > 0),
    height      bigint NOT NULL CHECK (height > 0),
    credited_at bigint NOT NULL
);

CREATE TABLE service_tokens (
    token         bytea  NOT NULL PRIMARY KEY CHECK (length(token) = 32),
    pid           bytea  NOT NULL UNIQUE REFERENCES payments (pid),
    amount        bigint NOT NULL CHECK (amount >= 0),
    issued_at     bigint NOT NULL,
    revoked_at    bigint,
    revoke_reason text   CHECK (revoke_reason IS NULL OR length(revoke_reason) <= 256),
    abuse_score   bigint NOT NULL DEFAULT 0 CHECK (abuse_score >= 0),
    spent         bigint NOT NULL DEFAULT 0 CHECK (spent >= 0 AND spent <= amount),
    expires_at    bigint,
    CHECK (revoke_reason IS NULL OR revoked_at IS NOT NULL)
);

-- The monitor's cursor (NULL until the first poll) and the fencing epoch: an instance that
-- becomes active bumps the epoch, and every credit checks, under this row's lock, that the
-- epoch is still the one its instance took over with (anonticket/storage/postgres/leader.py).
CREATE TABLE monitor_state (
    id             smallint PRIMARY KEY CHECK (id = 1),
    scanned_height bigint   CHECK (scanned_height IS NULL OR scanned_height >= -1),
    epoch          bigint   NOT NULL DEFAULT 0 CHECK (epoch >= 0)
);
INSERT INTO monitor_state (id, scanned_height) VALUES (1, NULL) ON CONFLICT (id) DO NOTHING;

-- Every revocation request, repeats included.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          bigint NOT NULL,
    action      text   NOT NULL CHECK (action IN ('revoke')),
    token       bytea  NOT NULL CHECK (length(token) = 32) REFERENCES service_tokens (token),
    reason      text   CHECK (reason IS NULL OR length(reason) <= 256),
    abuse_score bigint CHECK (abuse_score IS NULL OR abuse_score >= 0)
);
CREATE INDEX audit_log_by_token ON audit_log (token);

-- Every applied debit, kept for good: a token's spent is the sum of its debits (db check).
-- Ids come from the sequence: two instances (a stale leader) can never hand out one twice.
CREATE SEQUENCE debits_id_seq AS bigint;
CREATE TABLE debits (
    id     bigint NOT NULL PRIMARY KEY DEFAULT nextval('debits_id_seq'),
    token  bytea  NOT NULL CHECK (length(token) = 32),
    amount bigint NOT NULL CHECK (amount > 0),
    memo   text   CHECK (memo IS NULL OR length(memo) <= 128),
    at     bigint NOT NULL
);
ALTER SEQUENCE debits_id_seq OWNED BY debits.id;
CREATE INDEX debits_by_token ON debits (token, id);

-- The answer given to each (token, Idempotency-Key), replayed on a retry (see storage/sql/v3.sql).
CREATE TABLE idempotency_keys (
    token      bytea   NOT NULL CHECK (length(token) = 32),
    key        text    NOT NULL CHECK (length(key) BETWEEN 1 AND 128),
    request    bytea   NOT NULL CHECK (length(request) = 32),
    status     integer NOT NULL,
    body       text    NOT NULL,
    created_at bigint  NOT NULL,
    PRIMARY KEY (token, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
