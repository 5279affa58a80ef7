-- anonticket schema version 2, from a new database or version 1: applied by anonticket.storage
-- on start inside one transaction together with PRAGMA user_version, like every version (the
-- current schema as one script is schema.sql at the repository's root). Hand-written; every
-- invariant the code relies on is a CHECK or a key here, so a bug elsewhere fails loudly instead
-- of corrupting money (one exception, transfers against payments, is verified by
-- `anonticket db check`: see below).
BEGIN IMMEDIATE;

-- One row per payment ID that has received confirmed credit.
CREATE TABLE IF NOT EXISTS payments (
    pid          BLOB    NOT NULL PRIMARY KEY CHECK (length(pid) = 32),
    -- the transfer the token derives from: the earliest credited (lowest height, then txid)
    txid         BLOB    NOT NULL CHECK (length(txid) = 32),
    amount       INTEGER NOT NULL CHECK (amount >= 0),          -- piconero, sum of transfers
    first_height INTEGER NOT NULL CHECK (first_height >= 0),
    status       INTEGER NOT NULL DEFAULT 0 CHECK (status IN (0, 1)),  -- 0 unclaimed, 1 claimed
    created_at   INTEGER NOT NULL,                              -- unix seconds
    claimed_at   INTEGER,
    CHECK ((status = 1) = (claimed_at IS NOT NULL))
) STRICT, WITHOUT ROWID;

-- Every credited wallet transfer exactly once: the primary key makes re-ingestion harmless.
-- Version 2 dropped two things version 1 had, both paid on every credited transfer and
-- neither read by the service (docs/benchmarks.md): the index on pid, and the foreign key
-- to payments. Transfers are written only next to their payment, in the monitor's one
-- transaction; `anonticket db check` verifies that every transfer has its payment and
-- every payment is the sum of its transfers, which is stronger than the key was. An
-- operator's ad-hoc "transfers of this PID" query scans the table.
-- Written as a rebuild because version 1 to 2 must drop a constraint, which SQLite cannot do
-- in place: the rows are copied into the new definition (a new database has a placeholder
-- with none to copy), and the old table's index goes with it. A later version re-running
-- this script copies the table again: correct, ~3 s per million transfers.
CREATE TABLE IF NOT EXISTS transfers (txid, pid, amount, height, credited_at);
CREATE TABLE transfers_v2 (
    txid        BLOB    NOT NULL PRIMARY KEY CHECK (length(txid) = 32),
    pid         BLOB    NOT NULL CHECK (length(pid) = 32),
    amount      INTEGER NOT NULL CHECK (amount > 0),
    height      INTEGER NOT NULL CHECK (height > 0),
    credited_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO transfers_v2 (txid, pid, amount, height, credited_at)
    SELECT txid, pid, amount, height, credited_at FROM transfers ORDER BY txid;
DROP TABLE transfers;
ALTER TABLE transfers_v2 RENAME TO transfers;

CREATE TABLE IF NOT EXISTS service_tokens (
    token         BLOB    NOT NULL PRIMARY KEY CHECK (length(token) = 32),
    pid           BLOB    NOT NULL UNIQUE REFERENCES payments (pid),
    amount        INTEGER NOT NULL CHECK (amount >= 0),
    issued_at     INTEGER NOT NULL,
    revoked_at    INTEGER,
    revoke_reason TEXT    CHECK (revoke_reason IS NULL OR length(revoke_reason) <= 256),
    abuse_score   INTEGER NOT NULL DEFAULT 0 CHECK (abuse_score >= 0),
    CHECK (revoke_reason IS NULL OR revoked_at IS NOT NULL)
) STRICT, WITHOUT ROWID;

-- The monitor's cursor: the last block height fully scanned (NULL until the first poll).
CREATE TABLE IF NOT EXISTS monitor_state (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    scanned_height INTEGER CHECK (scanned_height IS NULL OR scanned_height >= -1)
) STRICT;
INSERT OR IGNORE INTO monitor_state (id, scanned_height) VALUES (1, NULL);

-- Every revocation request, repeats included.
CREATE TABLE IF NOT EXISTS audit_log (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    action      TEXT    NOT NULL CHECK (action IN ('revoke')),
    token       BLOB    NOT NULL CHECK (length(token) = 32) REFERENCES service_tokens (token),
    reason      TEXT    CHECK (reason IS NULL OR length(reason) <= 256),
    abuse_score INTEGER CHECK (abuse_score IS NULL OR abuse_score >= 0)
) STRICT;
CREATE INDEX IF NOT EXISTS audit_log_by_token ON audit_log (token);

PRAGMA user_version = 2;
COMMIT;
