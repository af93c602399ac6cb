-- Deployment-wide values every node checks at start (e.g. the check value
-- of the server key the catalog's secrets are sealed with).
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
