-- Backup policies and the scheduler (issue 4).

-- An automated task is created ahead of its window with the window's start
-- as scheduled_ms and no active slot (active NULL): it does not block manual
-- backups until the scheduler claims it. One task per instance and window.
ALTER TABLE backup_tasks ADD COLUMN scheduled_ms BIGINT;
CREATE UNIQUE INDEX backup_tasks_one_per_window ON backup_tasks (instance_id, scheduled_ms)
    WHERE scheduled_ms IS NOT NULL;
CREATE INDEX backup_tasks_due ON backup_tasks (scheduled_ms)
    WHERE state = 'pending' AND active IS NULL;

-- 1 when the set's expiry was set explicitly: a policy change leaves it alone.
ALTER TABLE backup_sets ADD COLUMN expiry_pinned INTEGER NOT NULL DEFAULT 0;
CREATE INDEX backup_sets_expires ON backup_sets (expires_ms) WHERE expires_ms IS NOT NULL;

-- Instances without a row follow the default policy.
CREATE TABLE backup_policies (
    instance_id    TEXT PRIMARY KEY REFERENCES instances(id),
    account_id     TEXT NOT NULL,
    enabled        INTEGER NOT NULL,
    window         TEXT NOT NULL,
    weekdays       TEXT NOT NULL,
    retention_days INTEGER NOT NULL,
    -- product fields Stowage stores and returns but does not act on
    extra          TEXT NOT NULL DEFAULT '{}',
    updated_ms     BIGINT NOT NULL
);
