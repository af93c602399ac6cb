-- One task model (issue 9): backups, restores, verifies and gc runs are
-- rows of one table, told apart by `kind`; a task may have parts (one per
-- shard, replica set …) that point to it through `parent_id`.
--
-- `active` is 1 while a top-level task that holds an instance's slot is not
-- terminal, NULL otherwise: the unique index allows one such task per
-- instance. Parts never take the slot.
CREATE TABLE tasks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id    TEXT NOT NULL,
    kind          TEXT NOT NULL,
    parent_id     INTEGER REFERENCES tasks(id),
    -- the part's name (shard, replica set …); NULL for a top-level task
    part          TEXT,
    -- backup: the instance backed up; restore into a server: the target
    instance_id   TEXT,
    -- backup: the set it produced (= its id); restore/verify: the set read
    set_id        INTEGER,
    mode          TEXT NOT NULL DEFAULT 'manual',
    method        TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL,
    active        INTEGER,
    created_ms    BIGINT NOT NULL,
    started_ms    BIGINT,
    finished_ms   BIGINT,
    updated_ms    BIGINT NOT NULL,
    bytes_done    BIGINT NOT NULL DEFAULT 0,
    bytes_total   BIGINT NOT NULL DEFAULT 0,
    bytes_stored  BIGINT NOT NULL DEFAULT 0,
    consistent_point TEXT,
    error         TEXT,
    result        TEXT,
    params        TEXT NOT NULL DEFAULT '{}',
    node          TEXT,
    client_token  TEXT,
    scheduled_ms  BIGINT,
    retention_days INTEGER,
    comment       TEXT
);

-- Backup tasks keep their ids (a set's id is its task's id). Ids continue
-- after the highest task or set id ever used.
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'tasks', COALESCE(MAX(seq), 0) FROM sqlite_sequence
    WHERE name IN ('backup_tasks', 'backup_sets');
INSERT INTO tasks (id, account_id, kind, instance_id, set_id, mode, method, state, active,
        created_ms, started_ms, finished_ms, updated_ms, bytes_done, bytes_total, bytes_stored,
        consistent_point, error, node, client_token, scheduled_ms, retention_days, comment)
    SELECT id, account_id, 'backup', instance_id, set_id, mode, method, state, active,
        created_ms, started_ms, finished_ms, updated_ms, bytes_done, bytes_total, bytes_stored,
        consistent_point, error, node, client_token, scheduled_ms, retention_days, comment
    FROM backup_tasks ORDER BY id;
-- Jobs (restore, verify, gc) get new ids after the backups', in their order.
INSERT INTO tasks (account_id, kind, set_id, state, created_ms, started_ms, finished_ms,
        updated_ms, bytes_done, bytes_total, error, result, params, node)
    SELECT account_id, kind, set_id, state, created_ms, started_ms, finished_ms,
        updated_ms, bytes_done, bytes_total, error, result, params, node
    FROM jobs ORDER BY id;
DROP TABLE backup_tasks;
DROP TABLE jobs;

CREATE UNIQUE INDEX tasks_one_active ON tasks (instance_id, active);
CREATE UNIQUE INDEX tasks_one_per_window ON tasks (instance_id, scheduled_ms)
    WHERE scheduled_ms IS NOT NULL;
CREATE INDEX tasks_due ON tasks (scheduled_ms)
    WHERE state = 'pending' AND active IS NULL;
CREATE INDEX tasks_account_instance ON tasks (account_id, instance_id, id);
-- DescribeBackupTasks' default listing (the unfinished tasks of one instance).
CREATE INDEX tasks_instance_state ON tasks (account_id, instance_id, state, id);
CREATE INDEX tasks_account_kind ON tasks (account_id, kind, id);
CREATE INDEX tasks_parent ON tasks (parent_id, id) WHERE parent_id IS NOT NULL;
CREATE INDEX tasks_state ON tasks (state);
