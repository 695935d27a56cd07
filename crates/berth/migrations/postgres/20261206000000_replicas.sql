-- Replica heartbeats (PostgreSQL: several `berth serve` on one database).
-- Each replica records that it is alive every few seconds; the leases held
-- by a replica whose heartbeat stopped are released within seconds instead
-- of when each lease runs out. SQLite has one process by design and needs no
-- heartbeat: at start-up every lease of another owner is released.
CREATE TABLE replicas (
    id           TEXT   NOT NULL PRIMARY KEY,  -- the lease owner name
    started_at   BIGINT NOT NULL,              -- ms since the Unix epoch
    heartbeat_at BIGINT NOT NULL               -- ms since the Unix epoch; 0 after a clean stop
);
CREATE INDEX replicas_heartbeat ON replicas (heartbeat_at);
