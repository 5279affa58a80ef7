-- anonticket schema version 5: receipts. A payment credited from now on is claimed with its
-- customer's receipt (the PID is a hash of it); a bare PID claims only what this marks.
-- Applied by anonticket.storage after v4.sql, inside one transaction together with
-- PRAGMA user_version, like every version.
--
-- plain_pid_ok = 1: the payment may be redeemed or topped up with its bare PID whatever
-- REDEEM_PLAIN_PIDS says. Every payment that exists when this runs was made by a customer
-- who holds only the PID (receipts did not exist), so they are all marked: upgrading strands
-- no credited, unclaimed payment. Every later credit inserts 0 (the column's default), so a
-- receipt payment is never claimable by its PID, which the payer's exchange and wallet see
-- inside the integrated address, unless the operator sets REDEEM_PLAIN_PIDS=allow.
-- Nothing writes the column after this script: the marked set is fixed, and the service
-- keeps its PIDs' prefixes in memory (docs/operations.md#receipts).
BEGIN IMMEDIATE;

ALTER TABLE payments ADD COLUMN plain_pid_ok INTEGER NOT NULL DEFAULT 0
    CHECK (plain_pid_ok IN (0, 1));
UPDATE payments SET plain_pid_ok = 1;

PRAGMA user_version = 5;
COMMIT;
