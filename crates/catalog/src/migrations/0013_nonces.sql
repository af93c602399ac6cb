-- Signature nonces of signed cloud requests (see the PostgreSQL migration:
-- there the table is shared by every node; one SQLite node keeps its
-- nonces in memory and this table only keeps the contract alike).
CREATE TABLE nonces (
    id BLOB PRIMARY KEY,
    expires_ms BIGINT NOT NULL
);
