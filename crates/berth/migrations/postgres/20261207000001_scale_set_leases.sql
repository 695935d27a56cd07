-- Which replica runs each scale set's listener (PostgreSQL: several
-- `berth serve` on one database). GitHub allows one message session per
-- scale set, so exactly one replica may listen: the one holding the lease,
-- which it renews every few seconds. It records its session id, so that a
-- replica taking over from a dead holder deletes that session at once
-- instead of waiting for GitHub to expire it.
CREATE TABLE scale_set_leases (
    scale_set  TEXT   NOT NULL PRIMARY KEY,  -- the [[scale_set]] name
    holder     TEXT   NOT NULL,              -- the replica id holding it
    session_id TEXT,                         -- the holder's message session, once open
    expires_at BIGINT NOT NULL               -- ms since the Unix epoch
);
