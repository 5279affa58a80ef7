-- anonticket schema version 9: subaddresses (issue 26). Applied by anonticket.storage after the
-- versions before it, inside one transaction together with PRAGMA user_version.
--
-- One row per subaddress the checkout allocated (the wallet's create_address) for one payment.
-- pid is the receipt's PID (a one-way hash of the receipt, which is never stored): the monitor
-- credits a transfer to (account, idx) under it, exactly as a transfer carrying that PID, so
-- the database alone claims nothing. The primary key is the proof that two instances (a
-- PostgreSQL takeover) never hand out the same index. expires_at only bounds how many unpaid
-- allocations may exist at once (SUBADDRESS_MAX_UNPAID): a payment after it is still credited.
-- address is the subaddress itself, kept so a status page can show it again (underpaid) and the
-- wallet can be asked whether it still knows it (get_address_index after a restore).
BEGIN IMMEDIATE;

CREATE TABLE subaddresses (
    account    INTEGER NOT NULL CHECK (account >= 0),
    idx        INTEGER NOT NULL CHECK (idx > 0),
    pid        BLOB    NOT NULL UNIQUE CHECK (length(pid) = 32),
    address    TEXT    NOT NULL CHECK (length(address) BETWEEN 95 AND 106),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (account, idx)
) STRICT, WITHOUT ROWID;
-- what the cap counts: allocations not yet expired
CREATE INDEX subaddresses_by_expiry ON subaddresses (expires_at);

PRAGMA user_version = 9;
COMMIT;
