-- A job takes `slots` of its host's slots: the pool's `host_slots` when it
-- was claimed (1 unless the pool says more, e.g. a container-jobs pool whose
-- jobs run a job container and services next to the worker). The claim sums
-- them per host: berth_claim takes the pool's `host_slots` as $9 and is
-- replaced (store::jobs::CLAIM; a unit test keeps the two equal).
ALTER TABLE jobs ADD COLUMN slots BIGINT NOT NULL DEFAULT 1;

DROP FUNCTION berth_claim(TEXT, TEXT, BIGINT, BIGINT, BIGINT, BIGINT, TEXT, BOOLEAN);

CREATE FUNCTION berth_claim(TEXT, TEXT, BIGINT, BIGINT, BIGINT, BIGINT, TEXT, BOOLEAN, BIGINT)
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
        SELECT host, SUM(slots) AS n FROM jobs
        WHERE state IN ('provisioning', 'starting', 'running') AND exited_at IS NULL
          AND host IS NOT NULL
        GROUP BY host
    ), placed AS (
        SELECT o.name FROM offered o
        JOIN docker_hosts h ON h.name = o.name AND h.health = 'up' AND h.admin = 'active'
        LEFT JOIN busy b ON b.host = o.name
        WHERE COALESCE(b.n, 0) + $9 <= o.slots
        ORDER BY CASE WHEN $8 THEN o.ordinal ELSE 0 END,
                 (COALESCE(b.n, 0) + $9 * 1.0) / (o.slots * o.weight),
                 o.ordinal
        LIMIT 1
    )
    UPDATE jobs
    SET state = 'provisioning',
        host = (SELECT name FROM placed),
        slots = $9,
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
