-- Signature nonces of signed cloud requests, shared by every node so a
-- request replayed to another node is refused too; `id` is a 16-byte
-- digest of the key id and the nonce. UNLOGGED: written once per request,
-- never worth a WAL flush; a crash of the catalog server empties it
-- (replays within the timestamp window after such a crash are the accepted
-- cost). No index on `expires_ms`: the minute's cleanup scans the table
-- rather than every request paying a second index insert.
CREATE UNLOGGED TABLE nonces (
    id BYTEA PRIMARY KEY,
    expires_ms BIGINT NOT NULL
);
