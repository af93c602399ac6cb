-- Download tasks name the instance of the set they package (without taking
-- its slot), so listings per instance find them by index. Existing ones:
-- from their parameters.
UPDATE tasks SET instance_id = json_extract(params, '$.instance')
    WHERE kind = 'download' AND instance_id IS NULL AND json_valid(params)
      AND json_type(params, '$.instance') = 'text';
-- An instance's top-level tasks of one kind (its downloads, its backups),
-- newest first, counted from the index alone: the planner otherwise may
-- walk every task of the kind, or read each row to check parent_id.
CREATE INDEX tasks_instance_kind ON tasks (account_id, instance_id, kind, parent_id, id);
