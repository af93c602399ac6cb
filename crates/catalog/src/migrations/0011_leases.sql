-- Several nodes (issue 13). A node runs a top-level task under a lease:
-- `lease_epoch` counts the leases the task was given (a node's writes carry
-- the epoch it holds and are refused once another node took the task over),
-- `lease_expires_ms` is when the holder must have renewed it (NULL: no
-- holder, e.g. an automated task waiting for its window, or an ended task).
-- A task whose lease expired is taken over by another node as a new attempt.
ALTER TABLE tasks ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN lease_expires_ms BIGINT;
ALTER TABLE tasks ADD COLUMN attempts BIGINT NOT NULL DEFAULT 1;
-- Cancel asked through a node that does not run the task: its holder
-- reads it when it renews the lease.
ALTER TABLE tasks ADD COLUMN cancel_requested BIGINT NOT NULL DEFAULT 0;
CREATE INDEX tasks_lease ON tasks (lease_expires_ms) WHERE lease_expires_ms IS NOT NULL;

-- Roles one node holds at a time (the scheduler), leased like tasks.
CREATE TABLE roles (
    name        TEXT PRIMARY KEY,
    node        TEXT NOT NULL,
    epoch       BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
