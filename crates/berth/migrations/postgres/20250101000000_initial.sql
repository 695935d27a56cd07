-- berth's store schema (PostgreSQL). The SQLite schema in ../sqlite/ is
-- the same table for table and column for column.
--
-- Ids and labels are TEXT rather than UUID and JSONB so that both backends
-- bind and read the same Rust types.
--
-- Timestamps are integer milliseconds since the Unix epoch (UTC) on both
-- backends. Enumerations are lowercase text checked against their names.

-- One table is both the queue and the job state machine: a queued row is a
-- queue entry, a claim is a conditional UPDATE of its state (see
-- src/store/mod.rs for why).
CREATE TABLE jobs (
    id                 TEXT    NOT NULL PRIMARY KEY,     -- berth job id, UUID v7
    github_job_id      BIGINT  NOT NULL UNIQUE,          -- idempotency key of intake
    run_id             BIGINT  NOT NULL,
    repository         TEXT    NOT NULL,                 -- owner/name
    workflow           TEXT,
    job_name           TEXT,
    labels             TEXT    NOT NULL DEFAULT '[]',    -- JSON array of strings
    pool               TEXT    NOT NULL,
    source             TEXT    NOT NULL
                       CHECK (source IN ('webhook', 'delegate', 'scale_set')),
    scale_set          TEXT,
    state              TEXT    NOT NULL DEFAULT 'queued'
                       CHECK (state IN ('queued', 'provisioning', 'starting', 'running',
                                        'completed', 'failed', 'cancelled', 'expired')),
    cancel_requested   BOOLEAN NOT NULL DEFAULT FALSE,
    attempts           BIGINT  NOT NULL DEFAULT 0,       -- times claimed
    lease_owner        TEXT,                             -- dispatcher holding the claim
    lease_expires_at   BIGINT,
    runner_name        TEXT,                             -- JIT runner berth registered
    runner_id          BIGINT,
    container_id       TEXT,
    github_status      TEXT
                       CHECK (github_status IN ('queued', 'waiting', 'in_progress', 'completed')),
    -- The order GitHub statuses come in, so that a late event can be told
    -- from a new one (the same ranks as GithubStatus::rank in the code).
    github_status_rank BIGINT  NOT NULL GENERATED ALWAYS AS (
                           CASE github_status WHEN 'queued' THEN 1 WHEN 'waiting' THEN 2
                                WHEN 'in_progress' THEN 3 WHEN 'completed' THEN 4 ELSE 0 END
                       ) STORED,
    github_conclusion  TEXT,
    github_runner_name TEXT,                             -- runner GitHub says took the job
    github_runner_id   BIGINT,
    exit_code          BIGINT,
    error              TEXT,
    timeout_secs       BIGINT,
    created_at         BIGINT  NOT NULL,
    updated_at         BIGINT  NOT NULL,
    queued_at          BIGINT  NOT NULL,                 -- when it last became queued
    started_at         BIGINT,                           -- container running
    finished_at        BIGINT
);

-- The claim: state = 'queued' AND pool = ? ORDER BY queued_at; and the
-- active counts per pool and overall (state IN (...) [AND pool = ?]).
CREATE INDEX jobs_state_pool_queued_at ON jobs (state, pool, queued_at);
-- job_list, newest first.
CREATE INDEX jobs_created_at ON jobs (created_at);
-- Lookups from Docker events, GitHub events and reconcilers.
CREATE INDEX jobs_runner_name ON jobs (runner_name) WHERE runner_name IS NOT NULL;
CREATE INDEX jobs_github_runner_name ON jobs (github_runner_name)
    WHERE github_runner_name IS NOT NULL;
CREATE INDEX jobs_container_id ON jobs (container_id) WHERE container_id IS NOT NULL;
CREATE INDEX jobs_lease_expires_at ON jobs (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;

-- X-GitHub-Delivery ids already accepted, so a redelivery changes nothing.
CREATE TABLE webhook_deliveries (
    delivery_id TEXT   NOT NULL PRIMARY KEY,
    received_at BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_received_at ON webhook_deliveries (received_at);

-- Each job's output: its first `cap` bytes (see Store::job_logs_append).
CREATE TABLE job_logs (
    job_id    TEXT    NOT NULL PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    content   BYTEA   NOT NULL,
    size      BIGINT  NOT NULL,
    truncated BOOLEAN NOT NULL DEFAULT FALSE
);

-- API bearer tokens: only a hash of each token is kept.
CREATE TABLE api_tokens (
    id           TEXT   NOT NULL PRIMARY KEY,            -- UUID v7
    name         TEXT   NOT NULL,
    scope        TEXT   NOT NULL CHECK (scope IN ('delegate', 'read', 'admin')),
    token_hash   TEXT   NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT
);
