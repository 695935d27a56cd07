-- Warm pools: containers created (and maybe started) ahead of demand, with
-- no job and no runner credential yet. The row is what makes a warm
-- container "accounted for": the orphan reconciler never removes a container
-- listed here, a dispatcher takes one by deleting its row in the same
-- transaction that records it on the job, and a restarted berth adopts the
-- rows whose fingerprint still matches its configuration.
CREATE TABLE warm_containers (
    container_id TEXT    NOT NULL PRIMARY KEY,
    pool         TEXT    NOT NULL,
    fingerprint  TEXT    NOT NULL,  -- image ID + the pool's container settings, hashed
    owner        TEXT    NOT NULL,  -- replica that created or adopted it
    started      BIGINT NOT NULL DEFAULT 0,  -- 1: started, its entrypoint waits on stdin
    created_at   BIGINT NOT NULL      -- ms since the Unix epoch
);
CREATE INDEX warm_containers_pool ON warm_containers (pool, fingerprint, created_at);
