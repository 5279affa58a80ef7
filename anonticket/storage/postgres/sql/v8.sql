-- anonticket schema for PostgreSQL, version 8: provisional credit, as SQLite's version 8
-- (storage/sql/v8.sql, which says what each column means). Applied by
-- anonticket.storage.postgres.schema in the transaction that records version 8 in
-- schema_versions, under the advisory lock.

CREATE TABLE provisional_credits (
    txid         bytea    NOT NULL PRIMARY KEY CHECK (length(txid) = 32),
    pid          bytea    NOT NULL CHECK (length(pid) = 32),
    amount       bigint   NOT NULL CHECK (amount > 0),
    seconds      bigint   CHECK (seconds IS NULL OR seconds >= 0),
    state        smallint NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),
    unrecovered  bigint   NOT NULL DEFAULT 0 CHECK (unrecovered >= 0 AND unrecovered <= amount),
    credited_at  bigint   NOT NULL,
    withdrawn_at bigint,
    final_at     bigint,
    CHECK ((state = 1) = (withdrawn_at IS NOT NULL AND final_at IS NULL)),
    CHECK ((state = 2) = (final_at IS NOT NULL)),
    CHECK (state != 0 OR (withdrawn_at IS NULL AND unrecovered = 0))
);
CREATE INDEX provisional_credits_outstanding ON provisional_credits (pid) WHERE state = 0;

-- the only moves are 0 → 1, 0 → 2 and 1 → 2, and nothing else of a row changes or goes
CREATE FUNCTION provisional_credits_moves() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'provisional_credits: rows are kept';
    END IF;
    IF NOT (NEW.txid = OLD.txid AND NEW.pid = OLD.pid AND NEW.amount = OLD.amount
            AND NEW.seconds IS NOT DISTINCT FROM OLD.seconds
            AND NEW.credited_at = OLD.credited_at
            AND ((OLD.state = 0 AND NEW.state IN (1, 2)) OR (OLD.state = 1 AND NEW.state = 2)))
    THEN
        RAISE EXCEPTION 'provisional_credits: not a legal move';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER provisional_credits_moves BEFORE UPDATE OR DELETE ON provisional_credits
    FOR EACH ROW EXECUTE FUNCTION provisional_credits_moves();

-- One row, locked (FOR UPDATE) by every transaction that changes it: caps are checked in turn
CREATE TABLE provisional_outstanding (
    id     smallint PRIMARY KEY CHECK (id = 1),
    amount bigint   NOT NULL CHECK (amount >= 0)
);
INSERT INTO provisional_outstanding (id, amount) VALUES (1, 0);

ALTER TABLE payments ADD COLUMN provisional integer NOT NULL DEFAULT 0 CHECK (provisional >= 0);
ALTER TABLE service_tokens ADD COLUMN provisional integer NOT NULL DEFAULT 0
    CHECK (provisional >= 0);
ALTER TABLE service_tokens ADD COLUMN withdrawn smallint NOT NULL DEFAULT 0
    CHECK (withdrawn IN (0, 1));
ALTER TABLE service_tokens ADD COLUMN lost bigint NOT NULL DEFAULT 0 CHECK (lost >= 0);
