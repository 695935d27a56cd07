-- API token lifecycle: tokens can expire, be revoked, and stand in for the
-- token a person signed in to the dashboard with.
--
-- expires_at: when the token stops working (ms since the Unix epoch); NULL
--   for a token that does not expire.
-- revoked_at: when it was revoked (ms since the Unix epoch); NULL while it
--   is valid. Revoked rows stay, so a listing shows what was revoked when.
-- session_of: for a dashboard session (a short-lived `read` token made by
--   `POST /login`, so the cookie never holds the token typed in), the id of
--   the token it was made from: revoking that token revokes its sessions.
--   NULL for every other token.
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE api_tokens ADD COLUMN revoked_at BIGINT;
ALTER TABLE api_tokens ADD COLUMN session_of TEXT;
-- Revoking a token finds its sessions; retention finds the expired ones.
CREATE INDEX api_tokens_session_of ON api_tokens (session_of) WHERE session_of IS NOT NULL;
