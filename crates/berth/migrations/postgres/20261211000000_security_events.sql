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

ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_scope_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_scope_check
    CHECK (scope IN ('delegate', 'read', 'admin', 'security'));
