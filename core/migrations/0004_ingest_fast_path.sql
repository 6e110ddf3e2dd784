-- Ingest fast path and a cheaper rollup refresh (see ingest/writer.py and docs/architecture.md).

-- Every telemetry message ingest has committed, by identity: the device, the publisher's seq and a
-- 64-bit digest of the payload bytes (so a publisher that reuses a seq for new data is never mistaken
-- for a redelivery). A writer inserts its messages' identities first (ON CONFLICT DO NOTHING RETURNING,
-- in key order): the ones returned are new and their readings are COPied straight into telemetry; the
-- others were committed before (or by a concurrent writer, whose commit this insert waits for) and are
-- skipped whole. This insert is the serialization point between ingest processes.
-- Partitioned by the message's oldest reading, so retention drops the identities with the readings.
CREATE TABLE ingest_batches (
    device_id  integer     NOT NULL,
    seq        bigint      NOT NULL,
    digest     bigint      NOT NULL,
    ts         timestamptz NOT NULL,
    PRIMARY KEY (device_id, seq, digest, ts)
);
SELECT create_hypertable('ingest_batches', 'ts', chunk_time_interval => interval '1 day',
                         create_default_indexes => false);

-- When a marker was last dirtied, so the refresh can leave a bucket alone while it is still being
-- written (every message re-dirties the open minute; recomputing it 12 times a minute was as costly
-- as the writes themselves and made writers wait on the markers' row locks).
ALTER TABLE rollup_dirty_1m ADD COLUMN dirtied_at timestamptz NOT NULL DEFAULT now();

-- As in 0003 (a row lock on each marker, held to the writer's commit), and stamps dirtied_at.
CREATE OR REPLACE FUNCTION mark_rollups_dirty(buckets timestamptz[], device_ids integer[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO rollup_dirty_1m (bucket, device_id, dirtied_at)
    SELECT DISTINCT time_bucket('1 minute', b), d, now() FROM unnest(buckets, device_ids) AS u(b, d)
    ORDER BY 1, 2
    ON CONFLICT (bucket, device_id) DO UPDATE SET dirtied_at = EXCLUDED.dirtied_at;
$$;

-- Recompute dirty buckets, at most `batch` of each level per call; returns the 1-minute buckets done.
-- With `grace` > 0 a 1-minute marker is taken only once its minute closed `grace` ago and nobody
-- dirtied it for `grace` (so a live minute is recomputed about once, and a backfill's buckets once
-- they are quiet); late data re-dirty older buckets as before. `grace` 0 takes every marker.
-- Markers are claimed (locked, deleted) in one statement and the buckets recomputed in the next: in
-- READ COMMITTED that statement's snapshot includes every writer that dirtied a claimed marker (a
-- writer that committed between a single statement's snapshot and its row lock would otherwise be
-- missed). A marker locked by an uncommitted writer is skipped, never lost.
DROP FUNCTION refresh_rollups(integer);
CREATE FUNCTION refresh_rollups(batch integer DEFAULT 50000, grace interval DEFAULT '0 s')
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    bs timestamptz[];
    ds integer[];
    done integer;
BEGIN
    WITH claimed AS (
        DELETE FROM rollup_dirty_1m d
        USING (SELECT bucket, device_id FROM rollup_dirty_1m
               WHERE grace <= interval '0 s'
                  OR (bucket + interval '1 minute' + grace <= now() AND dirtied_at <= now() - grace)
               ORDER BY bucket, device_id LIMIT batch FOR UPDATE SKIP LOCKED) s
        WHERE d.bucket = s.bucket AND d.device_id = s.device_id
        RETURNING d.bucket, d.device_id
    )
    SELECT coalesce(array_agg(bucket), '{}'), coalesce(array_agg(device_id), '{}'), count(*)
    INTO bs, ds, done FROM claimed;

    IF done > 0 THEN
        WITH claimed AS (
            SELECT * FROM unnest(bs, ds) AS u(bucket, device_id)
        ), agg AS (
            SELECT c.bucket, t.device_id, t.metric_id, count(*)::integer AS n, sum(t.value) AS sum,
                   min(t.value) AS min, max(t.value) AS max, last(t.value, t.ts) AS last, max(t.ts) AS last_ts
            FROM claimed c
            JOIN telemetry t ON t.device_id = c.device_id
                            AND t.ts >= c.bucket AND t.ts < c.bucket + interval '1 minute'
            GROUP BY c.bucket, t.device_id, t.metric_id
        ), upserted AS (
            INSERT INTO telemetry_1m AS r SELECT * FROM agg
            ON CONFLICT (device_id, metric_id, bucket) DO UPDATE
            SET n = EXCLUDED.n, sum = EXCLUDED.sum, min = EXCLUDED.min, max = EXCLUDED.max,
                last = EXCLUDED.last, last_ts = EXCLUDED.last_ts
            RETURNING 1
        )
        INSERT INTO rollup_dirty_15m (bucket, device_id)
        SELECT DISTINCT time_bucket('15 minutes', bucket), device_id FROM claimed ORDER BY 1, 2
        ON CONFLICT (bucket, device_id) DO UPDATE SET bucket = EXCLUDED.bucket;
    END IF;

    -- Then the 15-minute level from the 1-minute rows, claimed and recomputed the same way.
    WITH claimed AS (
        DELETE FROM rollup_dirty_15m d
        USING (SELECT bucket, device_id FROM rollup_dirty_15m ORDER BY bucket, device_id
               LIMIT batch FOR UPDATE SKIP LOCKED) s
        WHERE d.bucket = s.bucket AND d.device_id = s.device_id
        RETURNING d.bucket, d.device_id
    )
    SELECT coalesce(array_agg(bucket), '{}'), coalesce(array_agg(device_id), '{}') INTO bs, ds FROM claimed;

    IF cardinality(bs) > 0 THEN
        WITH claimed AS (
            SELECT * FROM unnest(bs, ds) AS u(bucket, device_id)
        ), agg AS (
            SELECT c.bucket, r.device_id, r.metric_id, sum(r.n)::integer AS n, sum(r.sum) AS sum,
                   min(r.min) AS min, max(r.max) AS max, last(r.last, r.last_ts) AS last,
                   max(r.last_ts) AS last_ts
            FROM claimed c
            JOIN telemetry_1m r ON r.device_id = c.device_id
                               AND r.bucket >= c.bucket AND r.bucket < c.bucket + interval '15 minutes'
            GROUP BY c.bucket, r.device_id, r.metric_id
        )
        INSERT INTO telemetry_15m SELECT * FROM agg
        ON CONFLICT (device_id, metric_id, bucket) DO UPDATE
        SET n = EXCLUDED.n, sum = EXCLUDED.sum, min = EXCLUDED.min, max = EXCLUDED.max,
            last = EXCLUDED.last, last_ts = EXCLUDED.last_ts;
    END IF;

    RETURN done;
END;
$$;
