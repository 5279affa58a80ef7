-- anonticket schema for PostgreSQL, version 7: the spent-set of Privacy Pass tokens (as
-- SQLite's version 7, storage/sql/v7.sql, which says what each column means).
-- Applied by anonticket.storage.postgres.schema in the transaction that records version 7
-- in schema_versions, under the advisory lock.
CREATE TABLE private_token_spent (
    key_id   text   NOT NULL CHECK (length(key_id) = 64),
    nonce    bytea  NOT NULL CHECK (length(nonce) = 32),
    spent_at bigint NOT NULL,
    PRIMARY KEY (key_id, nonce)
);
