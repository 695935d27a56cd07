-- Runtime security: Falco's alerts and berth's response.
--
-- security_events: Falco alerts about a job's containers (POST
--   /v1/security/events, docs/runtime-security.md), kept with the job and
--   deleted with it. dedupe_key tells a redelivered event from a new one
--   (falcosidekick's uuid, or a hash of Falco's own fields), so an event
--   delivered twice acts once. output and output_fields are stored with
--   anything secret-looking redacted. action is what the policy decided
--   (kill, alert); outcome what berth did (killed, recorded).
-- jobs.stop_reason: why berth stopped a job on its own (`security: <rule>`).
--   Set with cancel_requested; the job then ends failed with this reason
--   rather than cancelled.
-- api_tokens.scope: the new `security` scope may only post security events.
ALTER TABLE jobs ADD COLUMN stop_reason TEXT;

CREATE TABLE security_events (
    id            TEXT   NOT NULL PRIMARY KEY,       -- UUID v7
    dedupe_key    TEXT   NOT NULL UNIQUE,
    job_id        TEXT   NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    container_id  TEXT   NOT NULL,
    rule          TEXT   NOT NULL,
    priority      TEXT   NOT NULL,
    action        TEXT   NOT NULL CHECK (action IN ('kill', 'alert')),
    outcome       TEXT   NOT NULL CHECK (outcome IN ('killed', 'recorded')),
    event_time    BIGINT NOT NULL,
    received_at   BIGINT NOT NULL,
    hostname      TEXT,
    output        TEXT   NOT NULL,
    output_fields TEXT   NOT NULL                    -- JSON object
);
CREATE INDEX security_events_job ON security_events (job_id);

-- SQLite cannot change a CHECK constraint: the table is rebuilt.
CREATE TABLE api_tokens_new (
    id           TEXT   NOT NULL PRIMARY KEY,            -- UUID v7
    name         TEXT   NOT NULL,
    scope        TEXT   NOT NULL CHECK (scope IN ('delegate', 'read', 'admin', 'security')),
    token_hash   TEXT   NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    session_of   TEXT
);
INSERT INTO api_tokens_new (id, name, scope, token_hash, created_at, last_used_at,
                            expires_at, revoked_at, session_of)
    SELECT id, name, scope, token_hash, created_at, last_used_at,
           expires_at, revoked_at, session_of
    FROM api_tokens;
DROP TABLE api_tokens;
ALTER TABLE api_tokens_new RENAME TO api_tokens;
CREATE INDEX api_tokens_session_of ON api_tokens (session_of) WHERE session_of IS NOT NULL;
