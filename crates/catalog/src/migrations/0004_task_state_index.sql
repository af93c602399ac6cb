-- DescribeBackupTasks' default listing (the unfinished tasks of one
-- instance) reads only those rows, however long the instance's history.
CREATE INDEX backup_tasks_instance_state ON backup_tasks (account_id, instance_id, state, id);
