-- Day-ahead forecasts as issued (dr_controller.forecast_store), kept so that their error can be
-- reported once the day is over. One row per series: a site's (or the county's) load or PV for one
-- local (Asia/Shanghai) day, kw[i] the mean kW of the 15-minute interval i (1-based: kw[1] is
-- 00:00-00:15). Issuing again adds rows; readers take the latest issued_at per series.
CREATE TABLE forecasts (
    id          bigserial PRIMARY KEY,
    issued_at   timestamptz NOT NULL,
    target_day  date NOT NULL,
    -- NULL: the county, the sum of the site series issued with it (detail.sites).
    site_id     integer REFERENCES sites (id),
    kind        text NOT NULL CHECK (kind IN ('load', 'pv')),
    method      text NOT NULL,
    kw          double precision[] NOT NULL
                CHECK (array_ndims(kw) = 1 AND cardinality(kw) = 96 AND array_position(kw, NULL) IS NULL
                       AND NOT ('NaN'::double precision = ANY (kw))),
    -- How it was made: the devices it covers, similar days and level factor, PV calibration and the
    -- cloud input, so the error report compares it with the same devices' telemetry.
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    UNIQUE NULLS NOT DISTINCT (target_day, kind, site_id, issued_at)
);
CREATE INDEX forecasts_day_idx ON forecasts (target_day, kind, site_id, issued_at DESC);
