-- A fleet of Docker hosts (`[[docker_host]]`).
--
-- `jobs.host` is where a job was placed: the claim picks the host in the
-- same statement that claims the job (crate::store::Store::job_claim), so
-- per-host slots hold across replicas. A requeue clears it, so the next
-- claim places the job afresh (its old host may be down).
ALTER TABLE jobs ADD COLUMN host TEXT;
CREATE INDEX jobs_host_active ON jobs (host)
    WHERE state IN ('provisioning', 'starting', 'running');

-- Warm containers live on one host each.
ALTER TABLE warm_containers ADD COLUMN host TEXT;

-- What berth knows of each host. Configuration (URL, labels, slots) stays
-- in the configuration file; this is the state replicas share:
--   health: 'unknown' until probed, then 'up' or 'down' (no answer for
--           fleet.down_after). Only 'up' hosts get jobs.
--   admin:  'active', 'cordoned' (no new jobs) or 'draining' (no new jobs,
--           warm containers removed, empty when its jobs end).
--   lease:  the replica that watches the host's events, captures its
--           workers' output, probes it and reconciles it; renewed while
--           that replica lives, taken over when it expires.
CREATE TABLE docker_hosts (
    name             TEXT   NOT NULL PRIMARY KEY,
    health           TEXT   NOT NULL DEFAULT 'unknown',
    admin            TEXT   NOT NULL DEFAULT 'active',
    lease_owner      TEXT,
    lease_expires_at BIGINT,             -- ms since the Unix epoch
    last_probe_at    BIGINT,
    last_up_at       BIGINT,
    failing_since    BIGINT,             -- first failed probe since the last good one
    down_since       BIGINT,
    engine_version   TEXT,
    free_disk_bytes  BIGINT,
    probe_error      TEXT,
    updated_at       BIGINT NOT NULL
);
