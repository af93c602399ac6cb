CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_ms  BIGINT NOT NULL
);

CREATE TABLE access_keys (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    -- secret sealed with the server's catalog key; never stored in clear
    secret_enc  BLOB NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active',
    description TEXT NOT NULL DEFAULT '',
    created_ms  BIGINT NOT NULL
);

CREATE TABLE instances (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    name        TEXT NOT NULL,
    engine      TEXT NOT NULL,
    topology    TEXT NOT NULL,
    host        TEXT NOT NULL,
    port        INTEGER NOT NULL,
    username    TEXT NOT NULL,
    -- sealed with the catalog key, NULL for no password
    password_enc BLOB,
    dbname      TEXT,
    options     TEXT NOT NULL DEFAULT '{}',
    created_ms  BIGINT NOT NULL,
    UNIQUE (account_id, name)
);

CREATE TABLE backup_tasks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id    TEXT NOT NULL,
    instance_id   TEXT NOT NULL,
    mode          TEXT NOT NULL,
    method        TEXT NOT NULL,
    state         TEXT NOT NULL,
    -- 1 while the task is not terminal, NULL after: the unique index below
    -- allows at most one active task per instance (NULLs are distinct).
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
    set_id        INTEGER,
    node          TEXT,
    client_token  TEXT
);
CREATE UNIQUE INDEX backup_tasks_one_active ON backup_tasks (instance_id, active);
CREATE INDEX backup_tasks_account_instance ON backup_tasks (account_id, instance_id, id);
CREATE INDEX backup_tasks_state ON backup_tasks (state);

CREATE TABLE backup_sets (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id    TEXT NOT NULL,
    instance_id   TEXT NOT NULL,
    task_id       INTEGER NOT NULL,
    snapshot_id   TEXT NOT NULL,
    engine        TEXT NOT NULL,
    method        TEXT NOT NULL,
    mode          TEXT NOT NULL,
    started_ms    BIGINT NOT NULL,
    finished_ms   BIGINT NOT NULL,
    bytes_logical BIGINT NOT NULL,
    bytes_stored  BIGINT NOT NULL,
    consistent_point TEXT,
    meta          TEXT NOT NULL DEFAULT '{}',
    expires_ms    BIGINT
);
CREATE INDEX backup_sets_account_instance ON backup_sets (account_id, instance_id, id);

CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id    TEXT NOT NULL,
    kind          TEXT NOT NULL,
    state         TEXT NOT NULL,
    set_id        INTEGER,
    params        TEXT NOT NULL DEFAULT '{}',
    created_ms    BIGINT NOT NULL,
    started_ms    BIGINT,
    finished_ms   BIGINT,
    updated_ms    BIGINT NOT NULL,
    bytes_done    BIGINT NOT NULL DEFAULT 0,
    bytes_total   BIGINT NOT NULL DEFAULT 0,
    error         TEXT,
    result        TEXT,
    node          TEXT
);
