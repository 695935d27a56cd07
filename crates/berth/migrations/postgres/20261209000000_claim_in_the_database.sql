-- The claim on PostgreSQL runs inside the database (crate::store::Store::job_claim).
--
-- A claim takes the claim lock (an advisory lock that serialises claims, so
-- pool, global and per-host limits hold across replicas), then claims in a
-- statement whose snapshot is taken after the lock is granted. berth used to
-- send the lock and the claim as two statements, with a round trip to the
-- replica in between, and to commit in a third: the lock was held while
-- berth's process was scheduled back in, twice, and every other replica's
-- claim waited meanwhile. berth_claim does both in one call, run on its own
-- (autocommit): the lock is held only while the database works.
--
-- In a PL/pgSQL function each statement sees a fresh snapshot (READ
-- COMMITTED, a volatile function), so the claim sees every claim committed
-- before the lock was granted, as before. The lock is released when the
-- calling transaction ends, after its commit is visible.
--
-- The parameters are job_claim's: $1 pool, $2 lease owner, $3 lease
-- expiry, $4 now, $5 the pool's limit, $6 the global limit, $7 the offered
-- hosts (JSON), $8 pack. The statement is store::jobs::CLAIM with
-- PostgreSQL's parts; a unit test there checks the two agree. The lock key
-- is store::jobs::CLAIM_LOCK_KEY.
CREATE FUNCTION berth_claim(TEXT, TEXT, BIGINT, BIGINT, BIGINT, BIGINT, TEXT, BOOLEAN)
RETURNS SETOF jobs
LANGUAGE plpgsql
AS $berth_claim$
BEGIN
    PERFORM pg_advisory_xact_lock(27696089971294209);
    RETURN QUERY
    WITH candidate AS (
        SELECT id FROM jobs
        WHERE state = 'queued' AND pool = $1 AND NOT cancel_requested
        ORDER BY queued_at, id
        LIMIT 1 FOR UPDATE SKIP LOCKED
    ), offered AS (
        SELECT name, slots, weight, ordinal
        FROM jsonb_to_recordset($7::jsonb)
             AS o(name TEXT, slots BIGINT, weight DOUBLE PRECISION, ordinal BIGINT)
    ), busy AS (
        SELECT host, COUNT(*) AS n FROM jobs
        WHERE state IN ('provisioning', 'starting', 'running') AND exited_at IS NULL
          AND host IS NOT NULL
        GROUP BY host
    ), placed AS (
        SELECT o.name FROM offered o
        JOIN docker_hosts h ON h.name = o.name AND h.health = 'up' AND h.admin = 'active'
        LEFT JOIN busy b ON b.host = o.name
        WHERE COALESCE(b.n, 0) < o.slots
        ORDER BY CASE WHEN $8 THEN o.ordinal ELSE 0 END,
                 (COALESCE(b.n, 0) + 1.0) / (o.slots * o.weight),
                 o.ordinal
        LIMIT 1
    )
    UPDATE jobs
    SET state = 'provisioning',
        host = (SELECT name FROM placed),
        lease_owner = $2,
        lease_expires_at = $3,
        attempts = attempts + 1,
        updated_at = $4
    WHERE id = (SELECT id FROM candidate)
      AND state = 'queued'
      AND EXISTS (SELECT 1 FROM placed)
      AND (SELECT COUNT(*) FROM jobs
           WHERE pool = $1 AND state IN ('provisioning', 'starting', 'running')
             AND exited_at IS NULL) < $5
      AND (SELECT COUNT(*) FROM jobs
           WHERE state IN ('provisioning', 'starting', 'running') AND exited_at IS NULL) < $6
    RETURNING *;
END
$berth_claim$;
