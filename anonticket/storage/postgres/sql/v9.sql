-- anonticket schema for PostgreSQL, version 9: subaddresses (SQLite's version 9, storage/sql/v9.sql,
-- says what each column means). Applied by anonticket.storage.postgres.schema in the
-- transaction that records version 9 in schema_versions, under the advisory lock.
-- The primary key (account, idx) is what proves two instances never record the same index.
CREATE TABLE subaddresses (
    account    bigint NOT NULL CHECK (account >= 0),
    idx        bigint NOT NULL CHECK (idx > 0),
    pid        bytea  NOT NULL UNIQUE CHECK (length(pid) = 32),
    address    text   NOT NULL CHECK (length(address) BETWEEN 95 AND 106),
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (account, idx)
);
CREATE INDEX subaddresses_by_expiry ON subaddresses (expires_at);
