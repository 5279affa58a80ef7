-- anonticket schema for PostgreSQL, version 6: the signing keys (as SQLite's version 6,
-- storage/sql/v6.sql, which says what each column means) and the index of revoked tokens.
-- Applied by anonticket.storage.postgres.schema in the transaction that records version 6
-- in schema_versions, under the advisory lock.
CREATE TABLE signing_keys (
    key_id     text   PRIMARY KEY CHECK (length(key_id) BETWEEN 1 AND 128),
    purpose    text   NOT NULL CHECK (length(purpose) BETWEEN 1 AND 64),
    secret     bytea  NOT NULL CHECK (length(secret) BETWEEN 1 AND 4096),
    public     bytea  NOT NULL CHECK (length(public) BETWEEN 1 AND 4096),
    created_at bigint NOT NULL,
    not_before bigint NOT NULL,
    retired_at bigint,
    expires_at bigint,
    CHECK ((retired_at IS NULL) = (expires_at IS NULL)),
    CHECK (retired_at IS NULL OR (retired_at >= not_before AND expires_at >= retired_at))
);

CREATE INDEX service_tokens_by_revoked_at ON service_tokens (revoked_at)
    WHERE revoked_at IS NOT NULL;
