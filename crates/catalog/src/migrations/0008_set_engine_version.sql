-- The server version a set was taken from, as a typed field (the dialects
-- no longer read engine metadata). Existing sets: from their metadata.
ALTER TABLE backup_sets ADD COLUMN engine_version TEXT;
UPDATE backup_sets SET engine_version = json_extract(meta, '$.server_version')
    WHERE json_valid(meta) AND json_type(meta, '$.server_version') = 'text';
