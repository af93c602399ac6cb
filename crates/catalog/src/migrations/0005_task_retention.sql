-- Retention asked for one backup (CreateBackup's BackupRetentionPeriod):
-- its set's expiry is pinned to finish + this many days.
ALTER TABLE backup_tasks ADD COLUMN retention_days INTEGER;
