-- The claim takes a pool's oldest queued job: ORDER BY queued_at, id LIMIT 1.
-- The index on (state, pool, queued_at) gave the order of queued_at only, so
-- jobs queued in the same millisecond (a burst, a redelivery storm, a
-- restore) were all read and sorted by id for every claim: with thousands
-- queued at once, each claim cost milliseconds and claims per second fell
-- with the queue's length (`berth bench placement` measured it). With id in
-- the index the first entry is the answer.
DROP INDEX jobs_state_pool_queued_at;
CREATE INDEX jobs_state_pool_queued_at_id ON jobs (state, pool, queued_at, id);
