-- anonticket schema version 8: provisional credit (docs/operations.md#provisional-credit).
-- Applied by anonticket.storage after the version before it, inside one transaction
-- together with PRAGMA user_version, like every version.
--
-- A payment the wallet shows in the pool or with fewer than MONITOR_MIN_CONFIRMATIONS is
-- credited at once when the operator allows it (PROVISIONAL_MAX_PER_PID > 0): its amount
-- goes into payments (and the token) as a confirmed transfer's does, but the transfer is
-- kept here instead of in transfers until it is final. Withdrawn, it is taken back out.
BEGIN IMMEDIATE;

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

-- how many provisional credits a payment holds
ALTER TABLE payments ADD COLUMN provisional INTEGER NOT NULL DEFAULT 0 CHECK (provisional >= 0);
-- provisional: how many provisional credits the token holds (its payments' sum); withdrawn:
-- 1 while a withdrawal has left it without any credit (refused as payment_withdrawn), until
-- credit arrives again; lost: the unrecovered piconero of its withdrawn credits, so that
-- amount = its payments' sum + lost (debits already answered are never undone)
ALTER TABLE service_tokens ADD COLUMN provisional INTEGER NOT NULL DEFAULT 0
    CHECK (provisional >= 0);
ALTER TABLE service_tokens ADD COLUMN withdrawn INTEGER NOT NULL DEFAULT 0
    CHECK (withdrawn IN (0, 1));
ALTER TABLE service_tokens ADD COLUMN lost INTEGER NOT NULL DEFAULT 0 CHECK (lost >= 0);

PRAGMA user_version = 8;
COMMIT;
