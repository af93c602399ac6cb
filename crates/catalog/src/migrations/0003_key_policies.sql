-- Optional RAM-style policy of an access key (JSON document); NULL = the
-- key may do everything its account may.
ALTER TABLE access_keys ADD COLUMN policy TEXT;
