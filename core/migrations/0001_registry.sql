-- Registry: who owns what, where it is, what state of its life it is in.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE tenants (
    id          serial PRIMARY KEY,
    key         text NOT NULL UNIQUE,
    name        text NOT NULL,
    -- operator: charging operator; grid: the grid company; park: an industrial-park enterprise;
    -- county: the county's supervisors, who see everything and command nothing.
    kind        text NOT NULL CHECK (kind IN ('operator', 'grid', 'park', 'county')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The county's 19 towns and subdistricts (镇街), the unit the county plans and reports by.
CREATE TABLE towns (
    id       smallint PRIMARY KEY,
    key      text NOT NULL UNIQUE,
    name_zh  text NOT NULL,
    name_en  text NOT NULL
);

CREATE TABLE sites (
    id          serial PRIMARY KEY,
    key         text NOT NULL UNIQUE CHECK (key ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    name        text NOT NULL,
    tenant_id   integer REFERENCES tenants (id),
    town_id     smallint REFERENCES towns (id),
    kind        text NOT NULL DEFAULT 'park',
    feeder      text,
    -- Orderly power use (有序用电): 0 = protected (hospital, water, communications), never curtailed;
    -- higher tiers are limited first.
    tier        smallint NOT NULL DEFAULT 3 CHECK (tier BETWEEN 0 AND 9),
    latitude    double precision,
    longitude   double precision,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id             serial PRIMARY KEY,
    key            text NOT NULL UNIQUE CHECK (key ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    site_id        integer NOT NULL REFERENCES sites (id),
    kind           text NOT NULL CHECK (kind IN ('pv_inverter', 'battery', 'meter', 'hydro', 'load',
                                                 'charge_point', 'other')),
    vendor         text,
    model          text,
    rated_power_w  double precision CHECK (rated_power_w IS NULL OR rated_power_w >= 0),
    profile        text,
    -- Whole-life supervision: proposed -> approved -> built -> accepted -> operating; suspended, retired.
    -- 'discovered': telemetry arrived for a device nobody registered (kept, never dropped).
    lifecycle      text NOT NULL DEFAULT 'operating'
                   CHECK (lifecycle IN ('discovered', 'proposed', 'approved', 'built', 'accepted',
                                        'operating', 'suspended', 'retired')),
    -- Overrides the site's tier where one device of a site has another priority.
    tier           smallint CHECK (tier IS NULL OR tier BETWEEN 0 AND 9),
    attributes     jsonb NOT NULL DEFAULT '{}'::jsonb,
    status         text,
    status_reason  text,
    status_at      timestamptz,
    last_seen      timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_site_idx ON devices (site_id);

CREATE TABLE metrics (
    id           smallint PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    unit         text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('gauge', 'counter', 'state')),
    description  text NOT NULL
);
