-- When the job's worker container exited. A job whose worker exited no
-- longer holds a worker slot (the claim's limits do not count it), although
-- its end (logs kept, GitHub asked, registration deleted, container removed)
-- is still being recorded: the slot is free the moment the exit is known.
ALTER TABLE jobs ADD COLUMN exited_at BIGINT;
