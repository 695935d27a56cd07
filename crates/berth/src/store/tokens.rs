//! API bearer tokens, kept as hashes only.

use uuid::Uuid;

use super::clock::{from_millis, to_millis};
use super::{ApiToken, ApiTokenScope, NewApiToken, Result, Store, StoreError};

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
        };
        on_writer!(self, pool => {
            sqlx::query(
                "INSERT INTO api_tokens (id, name, scope, token_hash, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(stored.id.to_string())
            .bind(&stored.name)
            .bind(stored.scope.as_str())
            .bind(&stored.token_hash)
            .bind(to_millis(now))
            .execute(pool)
            .await
            .map(drop)
        })
        .map_err(StoreError::query("api_token_insert"))?;
        Ok(stored)
    }

    /// The token whose hash is `token_hash`, if any.
    pub async fn api_token_find_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        let row: Option<TokenRow> = on_reader!(self, pool => {
            sqlx::query_as(
                "SELECT id, name, scope, token_hash, created_at, last_used_at
                 FROM api_tokens WHERE token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::query("api_token_find_by_hash"))?;
        row.map(TokenRow::into_token).transpose()
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
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    name: String,
    scope: String,
    token_hash: String,
    created_at: i64,
    last_used_at: Option<i64>,
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
        Ok(ApiToken {
            id: Uuid::parse_str(&self.id).map_err(|e| corrupt("id", e.to_string()))?,
            scope: self
                .scope
                .parse::<ApiTokenScope>()
                .map_err(|e| corrupt("scope", e.to_string()))?,
            created_at: time("created_at", self.created_at)?,
            last_used_at: self
                .last_used_at
                .map(|ms| time("last_used_at", ms))
                .transpose()?,
            name: self.name,
            token_hash: self.token_hash,
        })
    }
}
