-- A caller's note on a manual backup (polardb CreateBackup's Comment),
-- carried into the set's metadata.
ALTER TABLE backup_tasks ADD COLUMN comment TEXT;
