-- anonticket schema version 7: the spent-set of Privacy Pass tokens (docs/operations.md,
-- "Private tokens"). Their issuer keys are signing_keys rows of purpose
-- 'private_token:<unit>' (version 6), key_id the hex of the token key id.
-- Applied by anonticket.storage after the versions before it, inside one transaction
-- together with PRAGMA user_version, like every version.
--
-- One row per redeemed token: the key that signed it (key_id as in signing_keys) and its
-- nonce, the 32 random bytes the customer chose. The primary key is what makes a token
-- spendable once: of two redemptions, concurrent or on two instances, the insert of exactly
-- one lands. Nothing here says who bought the token or when; spent_at is the minute of the
-- redemption (rounded down), kept for the operator's counts. Rows of a key that was removed
-- (its grace ended) are deleted by housekeeping: that key verifies nothing any more.
BEGIN IMMEDIATE;

CREATE TABLE private_token_spent (
    key_id   TEXT    NOT NULL CHECK (length(key_id) = 64),
    nonce    BLOB    NOT NULL CHECK (length(nonce) = 32),
    spent_at INTEGER NOT NULL,
    PRIMARY KEY (key_id, nonce)
) STRICT, WITHOUT ROWID;

PRAGMA user_version = 7;
COMMIT;
