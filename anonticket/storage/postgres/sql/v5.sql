-- anonticket schema for PostgreSQL, version 5: receipts (SQLite's version 5, storage/sql/v5.sql,
-- says what the column means). Applied by anonticket.storage.postgres.schema in the
-- transaction that records version 5 in schema_versions, under the advisory lock.
--
-- plain_pid_ok = 1: the payment may be redeemed or topped up with its bare PID whatever
-- REDEEM_PLAIN_PIDS says. Added with the default 1, which marks every payment that exists now
-- without rewriting the table (PostgreSQL keeps a constant default in the catalogue), then the
-- default becomes 0 for every later credit, so a receipt payment is never claimable by its PID
-- unless the operator sets REDEEM_PLAIN_PIDS=allow. Nothing writes the column afterwards.
ALTER TABLE payments ADD COLUMN plain_pid_ok smallint NOT NULL DEFAULT 1
    CHECK (plain_pid_ok IN (0, 1));
ALTER TABLE payments ALTER COLUMN plain_pid_ok SET DEFAULT 0;
