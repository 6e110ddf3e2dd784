-- Telemetry: one narrow row per reading. The primary key makes a redelivered reading a no-op, and
-- its order (device, time, metric) serves both the rollup refresh (one device's minute, all metrics)
-- and a device's recent history. It is the only index: the default time index would cost every
-- write and serve no query (cross-device questions are answered from the rollups).
CREATE TABLE telemetry (
    ts         timestamptz      NOT NULL,
    device_id  integer          NOT NULL,
    metric_id  smallint         NOT NULL,
    value      double precision NOT NULL,
    PRIMARY KEY (device_id, ts, metric_id)
);
SELECT create_hypertable('telemetry', 'ts', chunk_time_interval => interval '1 day',
                         create_default_indexes => false);

-- Rollups. The Apache build of TimescaleDB has no continuous aggregates, so these are plain
-- hypertables kept by refresh_rollups(): whoever writes telemetry marks the (bucket, device) pairs it
-- touched as dirty in the same transaction, and the refresh recomputes exactly those buckets from
-- the raw rows. Late and out-of-order data therefore re-dirty their bucket and the rollup stays right.
CREATE TABLE telemetry_1m (
    bucket     timestamptz      NOT NULL,
    device_id  integer          NOT NULL,
    metric_id  smallint         NOT NULL,
    n          integer          NOT NULL,
    sum        double precision NOT NULL,
    min        double precision NOT NULL,
    max        double precision NOT NULL,
    last       double precision NOT NULL,
    last_ts    timestamptz      NOT NULL,
    PRIMARY KEY (device_id, metric_id, bucket)
);
SELECT create_hypertable('telemetry_1m', 'bucket', chunk_time_interval => interval '7 days');

CREATE TABLE telemetry_15m (LIKE telemetry_1m INCLUDING ALL);
SELECT create_hypertable('telemetry_15m', 'bucket', chunk_time_interval => interval '30 days');

CREATE TABLE rollup_dirty_1m (
    bucket     timestamptz NOT NULL,
    device_id  integer     NOT NULL,
    PRIMARY KEY (bucket, device_id)
);
CREATE TABLE rollup_dirty_15m (LIKE rollup_dirty_1m INCLUDING ALL);

-- Writers call this after inserting telemetry, in the same transaction. It takes a row lock on each
-- marker (DO UPDATE, not DO NOTHING), so a refresh running concurrently either waits for this
-- transaction or skips the marker and sees it next time: no late row can slip past a refresh.
CREATE FUNCTION mark_rollups_dirty(buckets timestamptz[], device_ids integer[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO rollup_dirty_1m (bucket, device_id)
    SELECT DISTINCT time_bucket('1 minute', b), d FROM unnest(buckets, device_ids) AS u(b, d) ORDER BY 1, 2
    ON CONFLICT (bucket, device_id) DO UPDATE SET bucket = EXCLUDED.bucket;
$$;

-- Recompute dirty buckets, at most `batch` of each level per call; returns the 1-minute buckets done.
CREATE FUNCTION refresh_rollups(batch integer DEFAULT 50000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    done integer;
BEGIN
    WITH claimed AS (
        DELETE FROM rollup_dirty_1m d
        USING (SELECT bucket, device_id FROM rollup_dirty_1m ORDER BY bucket, device_id
               LIMIT batch FOR UPDATE SKIP LOCKED) s
        WHERE d.bucket = s.bucket AND d.device_id = s.device_id
        RETURNING d.bucket, d.device_id
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
    ), marked AS (
        INSERT INTO rollup_dirty_15m (bucket, device_id)
        SELECT DISTINCT time_bucket('15 minutes', bucket), device_id FROM claimed ORDER BY 1, 2
        ON CONFLICT (bucket, device_id) DO UPDATE SET bucket = EXCLUDED.bucket
        RETURNING 1
    )
    SELECT count(*) INTO done FROM claimed;

    -- A new statement sees the 1-minute rows just written.
    WITH claimed AS (
        DELETE FROM rollup_dirty_15m d
        USING (SELECT bucket, device_id FROM rollup_dirty_15m ORDER BY bucket, device_id
               LIMIT batch FOR UPDATE SKIP LOCKED) s
        WHERE d.bucket = s.bucket AND d.device_id = s.device_id
        RETURNING d.bucket, d.device_id
    ), agg AS (
        SELECT c.bucket, r.device_id, r.metric_id, sum(r.n)::integer AS n, sum(r.sum) AS sum,
               min(r.min) AS min, max(r.max) AS max, last(r.last, r.last_ts) AS last, max(r.last_ts) AS last_ts
        FROM claimed c
        JOIN telemetry_1m r ON r.device_id = c.device_id
                           AND r.bucket >= c.bucket AND r.bucket < c.bucket + interval '15 minutes'
        GROUP BY c.bucket, r.device_id, r.metric_id
    )
    INSERT INTO telemetry_15m SELECT * FROM agg
    ON CONFLICT (device_id, metric_id, bucket) DO UPDATE
    SET n = EXCLUDED.n, sum = EXCLUDED.sum, min = EXCLUDED.min, max = EXCLUDED.max,
        last = EXCLUDED.last, last_ts = EXCLUDED.last_ts;

    RETURN done;
END;
$$;
