-- anonticket's SQLite schema as it is now (version 9), as one script to read.
--
-- The service does not run this file: it applies the migrations in anonticket/storage/sql/
-- (v2.sql, then v3.sql, v4.sql, v5.sql, v6.sql, v7.sql, v8.sql, v9.sql), each with its PRAGMA
-- user_version in one transaction, so any older database is brought up to date the same way.
-- tests/storage/test_schema_files.py checks that
-- this script and those migrations build the same database (tables, columns, CHECKs, keys,
-- indexes, seed rows, version). A change is a new migration (docs/architecture.md) and an
-- edit here. PostgreSQL has its own scripts in anonticket/storage/postgres/sql/.
--
-- Hand-written: every invariant the code relies on is a CHECK or a key here, so a bug
-- elsewhere fails loudly instead of corrupting money (one exception, transfers against
-- payments, is verified by `anonticket db check`: see transfers). Amounts are piconero and
-- times unix seconds throughout.
BEGIN IMMEDIATE;

-- One row per payment ID that has received confirmed credit.
CREATE TABLE payments (
    pid          BLOB    NOT NULL PRIMARY KEY CHECK (length(pid) = 32),
    -- the transfer the token derives from: the earliest credited (lowest height, then txid)
    txid         BLOB    NOT NULL CHECK (length(txid) = 32),
    amount       INTEGER NOT NULL CHECK (amount >= 0),          -- sum of its transfers
    first_height INTEGER NOT NULL CHECK (first_height >= 0),
    status       INTEGER NOT NULL DEFAULT 0 CHECK (status IN (0, 1)),  -- 0 unclaimed, 1 claimed
    created_at   INTEGER NOT NULL,
    claimed_at   INTEGER,
    -- the token this payment's credit goes to: its own (set when it is redeemed) or the one
    -- it was added to by a top-up; NULL while unclaimed. Later transfers to the PID credit it.
    token        BLOB    CHECK (token IS NULL OR length(token) = 32),
    -- seconds of access bought so far, each credit priced at the ACCESS_PRICE_PER_DAY in
    -- force when it was credited (a later price change never rewrites what was bought);
    -- NULL: unlimited time (no price was in force)
    seconds      INTEGER CHECK (seconds IS NULL OR seconds >= 0),
    -- 1: the payment may be claimed with its bare PID whatever REDEEM_PLAIN_PIDS says. v5.sql
    -- set it on every payment credited before receipts existed; every later credit is 0 (a
    -- receipt payment is claimed with its receipt: the PID is in the integrated address the
    -- payer's side sees). Nothing writes it afterwards.
    plain_pid_ok INTEGER NOT NULL DEFAULT 0 CHECK (plain_pid_ok IN (0, 1)),
    -- how many provisional credits (provisional_credits, state 0) its amount holds
    provisional  INTEGER NOT NULL DEFAULT 0 CHECK (provisional >= 0),
    CHECK ((status = 1) = (claimed_at IS NOT NULL))
) STRICT, WITHOUT ROWID;

-- Every credited wallet transfer exactly once: the primary key makes re-ingestion harmless.
-- No index on pid and no foreign key to payments: both would be paid on every credited
-- transfer and neither is read by the service (docs/benchmarks.md). Transfers are written
-- only next to their payment, in the monitor's one transaction; `anonticket db check`
-- verifies that every transfer has its payment and every payment is the sum of its
-- transfers, which is stronger than the key was. An ad-hoc "transfers of this PID" query
-- scans the table.
CREATE TABLE transfers (
    txid        BLOB    NOT NULL PRIMARY KEY CHECK (length(txid) = 32),
    pid         BLOB    NOT NULL CHECK (length(pid) = 32),
    amount      INTEGER NOT NULL CHECK (amount > 0),
    height      INTEGER NOT NULL CHECK (height > 0),
    credited_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- A redeemed payment's token. amount is what was credited in all, spent what debits drew
-- from it: the CHECK is the "never below zero" guard every debit statement relies on.
CREATE TABLE service_tokens (
    token            BLOB    NOT NULL PRIMARY KEY CHECK (length(token) = 32),
    pid              BLOB    NOT NULL UNIQUE REFERENCES payments (pid),
    amount           INTEGER NOT NULL CHECK (amount >= 0),
    issued_at        INTEGER NOT NULL,
    revoked_at       INTEGER,
    revoke_reason    TEXT    CHECK (revoke_reason IS NULL OR length(revoke_reason) <= 256),
    abuse_score      INTEGER NOT NULL DEFAULT 0 CHECK (abuse_score >= 0),
    spent            INTEGER NOT NULL DEFAULT 0 CHECK (spent >= 0 AND spent <= amount),
    expires_at       INTEGER,                                   -- NULL: no time limit
    -- set once the expiry has been noticed (the sweep marks it and writes its token.expired
    -- event in one transaction), cleared when a top-up moves the expiry again
    expired_notified INTEGER NOT NULL DEFAULT 0 CHECK (expired_notified IN (0, 1)),
    -- how many provisional credits it holds (its payments' sum): provisional while any is
    provisional      INTEGER NOT NULL DEFAULT 0 CHECK (provisional >= 0),
    -- 1 while a withdrawal has left it without any credit (refused as payment_withdrawn),
    -- until credit arrives again
    withdrawn        INTEGER NOT NULL DEFAULT 0 CHECK (withdrawn IN (0, 1)),
    -- what withdrawn provisional credits had already spent (never taken back from the
    -- customer's debits): amount = its payments' sum + lost
    lost             INTEGER NOT NULL DEFAULT 0 CHECK (lost >= 0),
    CHECK (revoke_reason IS NULL OR revoked_at IS NOT NULL)
) STRICT, WITHOUT ROWID;
-- only the tokens still to be noticed, so the sweep's probe costs nothing when none expired
CREATE INDEX service_tokens_to_notice ON service_tokens (expires_at)
    WHERE expired_notified = 0 AND expires_at IS NOT NULL;
-- the tokens revoked lately: a start refuses their credentials (CREDENTIAL_TTL_SECS)
CREATE INDEX service_tokens_by_revoked_at ON service_tokens (revoked_at)
    WHERE revoked_at IS NOT NULL;

-- The monitor's cursor: the last block height fully scanned (NULL until the first poll).
CREATE TABLE monitor_state (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    scanned_height INTEGER CHECK (scanned_height IS NULL OR scanned_height >= -1)
) STRICT;
INSERT INTO monitor_state (id, scanned_height) VALUES (1, NULL);

-- Every revocation request, repeats included.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    action      TEXT    NOT NULL CHECK (action IN ('revoke')),
    token       BLOB    NOT NULL CHECK (length(token) = 32) REFERENCES service_tokens (token),
    reason      TEXT    CHECK (reason IS NULL OR length(reason) <= 256),
    abuse_score INTEGER CHECK (abuse_score IS NULL OR abuse_score >= 0)
) STRICT;
CREATE INDEX audit_log_by_token ON audit_log (token);

-- Every applied debit, kept for good: a token's spent is the sum of its debits (db check).
CREATE TABLE debits (
    id     INTEGER PRIMARY KEY,
    token  BLOB    NOT NULL CHECK (length(token) = 32),
    amount INTEGER NOT NULL CHECK (amount > 0),
    memo   TEXT    CHECK (memo IS NULL OR length(memo) <= 128),
    at     INTEGER NOT NULL
) STRICT;
CREATE INDEX debits_by_token ON debits (token, id);

-- The answer given to each (token, Idempotency-Key), refusals included, replayed on a retry
-- with the same request and refused (422) for a different one; pruned after
-- DEBIT_IDEMPOTENCY_TTL_SECS. request is a digest of the request's fields. A rowid table, so
-- the table and its age index grow at their end (v4.sql says why).
CREATE TABLE idempotency_keys (
    id         INTEGER PRIMARY KEY,
    token      BLOB    NOT NULL CHECK (length(token) = 32),
    key        TEXT    NOT NULL CHECK (length(key) BETWEEN 1 AND 128),
    request    BLOB    NOT NULL CHECK (length(request) = 32),
    status     INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
-- what a retry is looked up by, and the guard against one key stored twice
CREATE UNIQUE INDEX idempotency_keys_by_key ON idempotency_keys (token, key);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- The webhook outbox (docs/webhooks.md): one row per event, written in the transaction of
-- the change it reports, and only while WEBHOOK_URL is set. id is the webhook-id (random,
-- never reused), body the exact text every attempt sends and signs. status 0: due at
-- next_attempt_at (unix seconds, fractions allowed); 1: delivered, pruned after
-- WEBHOOK_RETENTION_SECS; 2: dead (every attempt failed), kept until replayed.
-- last_result is a fixed word (http_503, timeout, ...), never text from the receiver.
CREATE TABLE webhook_events (
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
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE status = 0;
CREATE INDEX webhook_events_by_status ON webhook_events (status, seq);

-- One row. disabled_url is the SHA-256 of the WEBHOOK_URL that answered 410 Gone (the URL
-- may hold a password): delivery stays off for that URL until `anonticket webhook enable`,
-- and a different URL is not affected.
CREATE TABLE webhook_state (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    disabled_at  INTEGER,
    disabled_url BLOB CHECK (disabled_url IS NULL OR length(disabled_url) = 32)
) STRICT;
INSERT INTO webhook_state (id) VALUES (1);

-- The signing keys anonticket generates and keeps: one row per key (v6.sql says more).
-- key_id names it where it is published (a k4.pid for a credential key); purpose says what it
-- signs ('credential'); secret and public are its raw bytes, never printed or logged.
-- not_before: when it starts signing; retired_at: when the next key took over (NULL while in
-- force); expires_at: when the last thing it signed has expired (housekeeping deletes it then).
CREATE TABLE signing_keys (
    key_id     TEXT    PRIMARY KEY CHECK (length(key_id) BETWEEN 1 AND 128),
    purpose    TEXT    NOT NULL CHECK (length(purpose) BETWEEN 1 AND 64),
    secret     BLOB    NOT NULL CHECK (length(secret) BETWEEN 1 AND 4096),
    public     BLOB    NOT NULL CHECK (length(public) BETWEEN 1 AND 4096),
    created_at INTEGER NOT NULL,
    not_before INTEGER NOT NULL,
    retired_at INTEGER,
    expires_at INTEGER,
    CHECK ((retired_at IS NULL) = (expires_at IS NULL)),
    CHECK (retired_at IS NULL OR (retired_at >= not_before AND expires_at >= retired_at))
) STRICT;

-- The spent-set of Privacy Pass tokens (v7.sql says more): one row per redeemed token, its
-- issuer key (signing_keys.key_id of a 'private_token:<unit>' key) and its nonce; the primary
-- key lets a token be spent once. Nothing here names a buyer. Rows of a removed key are
-- deleted by housekeeping.
CREATE TABLE private_token_spent (
    key_id   TEXT    NOT NULL CHECK (length(key_id) = 64),
    nonce    BLOB    NOT NULL CHECK (length(nonce) = 32),
    spent_at INTEGER NOT NULL,
    PRIMARY KEY (key_id, nonce)
) STRICT, WITHOUT ROWID;

-- Provisional credit (docs/operations.md#provisional-credit): payments credited before
-- MONITOR_MIN_CONFIRMATIONS, kept here (not in transfers) until final.
-- One row per provisionally credited transfer, kept for good. state: 0 provisional (its
-- amount is in payments.amount), 1 withdrawn (taken back out: left the pool unmined, a
-- double spend, reorganised out), 2 final (reached N confirmations: its row is in transfers
-- too). The only moves are 0 → 1, 0 → 2 and 1 → 2 (mined after all: credited again, once),
-- and nothing else of a row ever changes: the trigger below refuses anything else.
-- unrecovered: what a withdrawal could not take back because debits had already spent it
-- (the token's balance never goes below zero; service_tokens.lost sums these).
CREATE TABLE provisional_credits (
    txid         BLOB    NOT NULL PRIMARY KEY CHECK (length(txid) = 32),
    pid          BLOB    NOT NULL CHECK (length(pid) = 32),
    amount       INTEGER NOT NULL CHECK (amount > 0),
    seconds      INTEGER CHECK (seconds IS NULL OR seconds >= 0),   -- bought; NULL: unlimited
    state        INTEGER NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),
    unrecovered  INTEGER NOT NULL DEFAULT 0 CHECK (unrecovered >= 0 AND unrecovered <= amount),
    credited_at  INTEGER NOT NULL,
    withdrawn_at INTEGER,
    final_at     INTEGER,
    CHECK ((state = 1) = (withdrawn_at IS NOT NULL AND final_at IS NULL)),
    CHECK ((state = 2) = (final_at IS NOT NULL)),
    CHECK (state != 0 OR (withdrawn_at IS NULL AND unrecovered = 0))
) STRICT, WITHOUT ROWID;
-- the outstanding ones: a PID's provisional total under its cap, the monitor's watch list
CREATE INDEX provisional_credits_outstanding ON provisional_credits (pid) WHERE state = 0;
CREATE TRIGGER provisional_credits_moves BEFORE UPDATE ON provisional_credits
WHEN NOT (NEW.txid = OLD.txid AND NEW.pid = OLD.pid AND NEW.amount = OLD.amount
          AND NEW.seconds IS OLD.seconds AND NEW.credited_at = OLD.credited_at
          AND ((OLD.state = 0 AND NEW.state IN (1, 2)) OR (OLD.state = 1 AND NEW.state = 2)))
BEGIN
    SELECT RAISE(ABORT, 'provisional_credits: not a legal move');
END;
CREATE TRIGGER provisional_credits_kept BEFORE DELETE ON provisional_credits
BEGIN
    SELECT RAISE(ABORT, 'provisional_credits: rows are kept');
END;

-- One row: the sum of every provisional (state 0) credit, what PROVISIONAL_MAX_OUTSTANDING
-- caps. Every transaction that changes it updates this row first, so they take turns.
CREATE TABLE provisional_outstanding (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    amount INTEGER NOT NULL CHECK (amount >= 0)
) STRICT;
INSERT INTO provisional_outstanding (id, amount) VALUES (1, 0);

-- One row per subaddress the checkout allocated (SUBADDRESS mode, v9.sql): pid is the receipt's
-- PID, the one-way hash the monitor credits a transfer to (account, idx) under; the receipt is
-- never stored. The key proves two instances never record the same index; expires_at only
-- bounds unpaid allocations (a payment after it is still credited).
CREATE TABLE subaddresses (
    account    INTEGER NOT NULL CHECK (account >= 0),
    idx        INTEGER NOT NULL CHECK (idx > 0),
    pid        BLOB    NOT NULL UNIQUE CHECK (length(pid) = 32),
    address    TEXT    NOT NULL CHECK (length(address) BETWEEN 95 AND 106),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (account, idx)
) STRICT, WITHOUT ROWID;
-- what the cap counts: allocations not yet expired
CREATE INDEX subaddresses_by_expiry ON subaddresses (expires_at);

PRAGMA user_version = 9;
COMMIT;
