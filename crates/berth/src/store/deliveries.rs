//! Webhook delivery ids, so that a redelivered webhook changes nothing, and
//! so that the delivery catch-up (crate::reconcile::delivery_catchup) can
//! tell which of GitHub's deliveries berth never applied.

use time::OffsetDateTime;

use super::{Result, Store, StoreError};

impl Store {
    /// Remembers a `X-GitHub-Delivery` id; `true` the first time it is seen,
    /// `false` for a redelivery.
    ///
    /// On SQLite it is committed together with other intake writes waiting
    /// at the same moment (see [`Store::intake_commit`]).
    pub async fn delivery_record(&self, delivery_id: &str, now: OffsetDateTime) -> Result<bool> {
        let written = self
            .intake_commit_at(
                super::IntakeWrite {
                    job: None,
                    delivery_id: Some(delivery_id.to_owned()),
                },
                now,
            )
            .await?;
        written.delivery_new.ok_or(StoreError::Query {
            op: "delivery_record",
            source: sqlx::Error::RowNotFound,
        })
    }

    /// Whether the delivery `delivery_id` was applied (and its id not yet
    /// pruned by `retention.deliveries`, which keeps at least GitHub's 3 days).
    pub async fn delivery_known(&self, delivery_id: &str) -> Result<bool> {
        let found: Option<i64> = on_reader!(self, pool => {
            // `CAST(… AS BIGINT)`: PostgreSQL types a bare `1` as INT4.
            sqlx::query_scalar(
                "SELECT CAST(1 AS BIGINT) FROM webhook_deliveries WHERE delivery_id = $1",
            )
                .bind(delivery_id)
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::query("delivery_known"))?;
        Ok(found.is_some())
    }

    /// Forgets at most `limit` delivery ids received before `older_than`;
    /// returns how many. (GitHub redelivers only on request, within 3 days;
    /// the job itself stays deduplicated by its GitHub job id regardless.)
    pub async fn deliveries_prune(&self, older_than: OffsetDateTime, limit: u32) -> Result<u64> {
        self.delete_batch(
            "deliveries_prune",
            "DELETE FROM webhook_deliveries WHERE delivery_id IN (
                 SELECT delivery_id FROM webhook_deliveries
                 WHERE received_at < $1
                 LIMIT $2)",
            older_than,
            limit,
        )
        .await
    }
}
