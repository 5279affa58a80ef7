-- anonticket schema version 4: idempotency_keys becomes a rowid table, so its age index is
-- written at its end instead of all over the current second.
-- Applied by anonticket.storage after v3.sql, inside one transaction together with
-- PRAGMA user_version, like every version.
--
-- Why: as a WITHOUT ROWID table keyed by (token, key), every secondary index entry ends in
-- that key, and the keys of one second are random tokens: each debit's entry in
-- idempotency_keys_by_age (created_at, token, key) landed on a random page among the ~50
-- the current second fills, a quarter of the pages a debit batch dirties (docs/benchmarks.md,
-- "The debit, cut to size"). Keyed by a rowid, the table and the age index both grow at their end;
-- the UNIQUE index on (token, key) is the one random write left, where the primary key was.
-- The rows are only answers kept for replays (pruned after DEBIT_IDEMPOTENCY_TTL_SECS), so
-- the copy is as long as a day of debits at most.
BEGIN IMMEDIATE;

CREATE TABLE idempotency_keys_v4 (
    id         INTEGER PRIMARY KEY,
    token      BLOB    NOT NULL CHECK (length(token) = 32),
    key        TEXT    NOT NULL CHECK (length(key) BETWEEN 1 AND 128),
    request    BLOB    NOT NULL CHECK (length(request) = 32),
    status     INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
-- copied in the old table's (token, key) order and indexed afterwards: building an index
-- from the finished table is one sort, inserting into it row by row is a random write each
-- (4.7 s instead of 15 s for a million answers, docs/operations.md)
INSERT INTO idempotency_keys_v4 (token, key, request, status, body, created_at)
    SELECT token, key, request, status, body, created_at FROM idempotency_keys;
DROP TABLE idempotency_keys;  -- its index idempotency_keys_by_age goes with it
ALTER TABLE idempotency_keys_v4 RENAME TO idempotency_keys;
-- the (token, key) the primary key was: what a retry is looked up by, and the guard
-- against one key stored twice
CREATE UNIQUE INDEX idempotency_keys_by_key ON idempotency_keys (token, key);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

PRAGMA user_version = 4;
COMMIT;
