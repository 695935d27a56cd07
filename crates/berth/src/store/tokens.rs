//! API bearer tokens, kept as hashes only.
//!
//! A token may expire (`expires_at`) and may be revoked (`revoked_at`); a
//! revoked token's row stays, so a listing shows what was revoked and when.
//! A dashboard session is a token like any other, with `session_of` naming
//! the token it was made from: revoking that token revokes its sessions in
//! the same statement, and a session also counts as revoked when its parent
//! is, so a session created while its parent was being revoked cannot
//! outlive it. Expired sessions are deleted by the retention component
//! ([`Store::api_tokens_prune_sessions`]); other tokens are never deleted.

use time::OffsetDateTime;
use uuid::Uuid;

use super::clock::{from_millis, to_millis};
use super::{ApiToken, ApiTokenScope, NewApiToken, Result, Store, StoreError};

/// The columns of a [`TokenRow`], as a literal for `concat!`.
macro_rules! token_columns {
    () => {
        "id, name, scope, token_hash, created_at, last_used_at, expires_at, revoked_at, session_of"
    };
}

impl Store {
    /// Stores a new token's hash under a fresh id.
    pub async fn api_token_insert(&self, token: NewApiToken) -> Result<ApiToken> {
        let now = self.now();
        let stored = ApiToken {
            id: Uuid::now_v7(),
            name: token.name,
            scope: token.scope,
            token_hash: token.token_hash,
            created_at: now,
            last_used_at: None,
            expires_at: token.expires_at.map(super::truncate_to_millis),
            revoked_at: None,
            session_of: token.session_of,
        };
        on_writer!(self, pool => {
            sqlx::query(
                "INSERT INTO api_tokens
                     (id, name, scope, token_hash, created_at, expires_at, session_of)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(stored.id.to_string())
            .bind(&stored.name)
            .bind(stored.scope.as_str())
            .bind(&stored.token_hash)
            .bind(to_millis(now))
            .bind(stored.expires_at.map(to_millis))
            .bind(stored.session_of.map(|id| id.to_string()))
            .execute(pool)
            .await
            .map(drop)
        })
        .map_err(StoreError::query("api_token_insert"))?;
        Ok(stored)
    }

    /// The token whose hash is `token_hash`, if any. A dashboard session
    /// whose parent token was revoked is returned as revoked (with the
    /// parent's `revoked_at`), whatever its own row says.
    pub async fn api_token_find_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        let row: Option<TokenRow> = on_reader!(self, pool => {
            sqlx::query_as(
                "SELECT t.id, t.name, t.scope, t.token_hash, t.created_at, t.last_used_at,
                        t.expires_at, COALESCE(t.revoked_at, parent.revoked_at) AS revoked_at,
                        t.session_of
                 FROM api_tokens t
                 LEFT JOIN api_tokens parent ON parent.id = t.session_of
                 WHERE t.token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::query("api_token_find_by_hash"))?;
        row.map(TokenRow::into_token).transpose()
    }

    /// The token with this id, if any.
    pub async fn api_token_get(&self, id: Uuid) -> Result<Option<ApiToken>> {
        let row: Option<TokenRow> = on_reader!(self, pool => {
            sqlx::query_as(concat!(
                "SELECT ", token_columns!(), " FROM api_tokens WHERE id = $1"
            ))
            .bind(id.to_string())
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::query("api_token_get"))?;
        row.map(TokenRow::into_token).transpose()
    }

    /// Every token, oldest first, revoked and expired ones included;
    /// dashboard sessions only with `include_sessions`.
    pub async fn api_token_list(&self, include_sessions: bool) -> Result<Vec<ApiToken>> {
        let rows: Vec<TokenRow> = on_reader!(self, pool => {
            if include_sessions {
                sqlx::query_as(concat!(
                    "SELECT ", token_columns!(), " FROM api_tokens ORDER BY created_at, id"
                ))
                .fetch_all(pool)
                .await
            } else {
                sqlx::query_as(concat!(
                    "SELECT ", token_columns!(),
                    " FROM api_tokens WHERE session_of IS NULL ORDER BY created_at, id"
                ))
                .fetch_all(pool)
                .await
            }
        })
        .map_err(StoreError::query("api_token_list"))?;
        rows.into_iter().map(TokenRow::into_token).collect()
    }

    /// Revokes the token `id` and the dashboard sessions made from it, in
    /// one statement, as of `now`; returns the token as it now is, or `None`
    /// for an unknown id. Idempotent: what was revoked keeps its first
    /// `revoked_at`.
    pub async fn api_token_revoke(
        &self,
        id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<ApiToken>> {
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE api_tokens SET revoked_at = $2
                 WHERE (id = $1 OR session_of = $1) AND revoked_at IS NULL",
            )
            .bind(id.to_string())
            .bind(to_millis(now))
            .execute(pool)
            .await
            .map(drop)
        })
        .map_err(StoreError::query("api_token_revoke"))?;
        self.api_token_get(id).await
    }

    /// Records that the token was just used; `false` for an unknown id.
    pub async fn api_token_touch(&self, id: Uuid) -> Result<bool> {
        let now = to_millis(self.now());
        on_writer!(self, pool => {
            sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
                .bind(id.to_string())
                .bind(now)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("api_token_touch"))
    }

    /// Deletes up to `limit` dashboard sessions that expired before
    /// `before`; returns how many. Other tokens are never deleted.
    pub async fn api_tokens_prune_sessions(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<u64> {
        self.delete_batch(
            "api_tokens_prune_sessions",
            "DELETE FROM api_tokens WHERE id IN (
                 SELECT id FROM api_tokens
                 WHERE session_of IS NOT NULL AND expires_at < $1
                 LIMIT $2)",
            before,
            limit,
        )
        .await
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    name: String,
    scope: String,
    token_hash: String,
    created_at: i64,
    last_used_at: Option<i64>,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    session_of: Option<String>,
}

impl TokenRow {
    fn into_token(self) -> Result<ApiToken> {
        let corrupt = |column: &'static str, detail: String| StoreError::Corrupt {
            table: "api_tokens",
            key: self.id.clone(),
            column,
            detail,
        };
        let time = |column, ms| {
            from_millis(ms).ok_or_else(|| corrupt(column, format!("timestamp {ms} out of range")))
        };
        let optional_time = |column, ms: Option<i64>| ms.map(|ms| time(column, ms)).transpose();
        Ok(ApiToken {
            id: Uuid::parse_str(&self.id).map_err(|e| corrupt("id", e.to_string()))?,
            scope: self
                .scope
                .parse::<ApiTokenScope>()
                .map_err(|e| corrupt("scope", e.to_string()))?,
            created_at: time("created_at", self.created_at)?,
            last_used_at: optional_time("last_used_at", self.last_used_at)?,
            expires_at: optional_time("expires_at", self.expires_at)?,
            revoked_at: optional_time("revoked_at", self.revoked_at)?,
            session_of: self
                .session_of
                .as_deref()
                .map(Uuid::parse_str)
                .transpose()
                .map_err(|e| corrupt("session_of", e.to_string()))?,
            name: self.name,
            token_hash: self.token_hash,
        })
    }
}
