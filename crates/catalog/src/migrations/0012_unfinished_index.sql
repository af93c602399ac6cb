-- The tasks not yet ended, by instance: DescribeBackupTasks' default
-- listing reads only these, whatever the planner knows of the table
-- (PostgreSQL without statistics, after a bulk load, walked an instance's
-- whole history instead).
CREATE INDEX tasks_unfinished ON tasks (account_id, instance_id, id)
    WHERE state IN ('pending', 'checking', 'preparing', 'running', 'finishing', 'retrying');
