-- OCPP central system: charge points, connectors, id tokens, transactions, violations, site limits.
-- A charge point is a `devices` row of kind 'charge_point' (so telemetry, status and the API treat it
-- like any device; its lifecycle is devices.lifecycle) plus the OCPP-specific row here. Its operator is
-- devices -> sites -> tenants.

CREATE TABLE charge_points (
    device_id         integer PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    -- The identity in the websocket URL (/ocpp/{ocpp_id}) and the Basic-auth user name.
    ocpp_id           text NOT NULL UNIQUE CHECK (ocpp_id ~ '^[A-Za-z0-9._:-]{1,48}$'),
    -- 'scrypt$n$r$p$salt$hash' (base64); NULL = no password set (refused unless the server allows it).
    password_hash     text,
    max_power_w       double precision CHECK (max_power_w IS NULL OR max_power_w > 0),
    speed             text NOT NULL DEFAULT 'slow' CHECK (speed IN ('fast', 'slow')),
    ocpp_version      text,
    vendor            text,
    model             text,
    serial_number     text,
    firmware_version  text,
    last_boot_at      timestamptz,
    last_boot_status  text,
    last_connected_at timestamptz,
    node              text,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- 1.6 connector N is (evse_id N, connector_id N); connector 0 (the whole pile) is (0, 0).
CREATE TABLE charge_point_connectors (
    device_id     integer NOT NULL REFERENCES charge_points (device_id) ON DELETE CASCADE,
    evse_id       integer NOT NULL CHECK (evse_id >= 0),
    connector_id  integer NOT NULL CHECK (connector_id >= 0),
    status        text,
    error_code    text,
    status_at     timestamptz,
    max_power_w   double precision,
    PRIMARY KEY (device_id, evse_id, connector_id)
);

CREATE TABLE id_tokens (
    id           serial PRIMARY KEY,
    token        text NOT NULL UNIQUE CHECK (length(token) BETWEEN 1 AND 36),
    token_type   text NOT NULL DEFAULT 'ISO14443',
    -- NULL = valid at every operator's piles.
    tenant_id    integer REFERENCES tenants (id),
    valid_until  timestamptz,
    blocked      boolean NOT NULL DEFAULT false,
    parent       text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE charging_transactions (
    -- Also the OCPP 1.6 transactionId the server hands out.
    id              serial PRIMARY KEY,
    device_id       integer NOT NULL REFERENCES devices (id),
    evse_id         integer,
    connector_id    integer,
    -- 1.6: id::text; 2.0.1: the pile's transactionId string.
    ocpp_tx_id      text NOT NULL,
    -- 1.6 idempotency: 'connector|timestamp|meterStart' of StartTransaction.
    start_key       text,
    id_token        text,
    meter_start_wh  double precision,
    meter_last_wh   double precision,
    meter_stop_wh   double precision,
    energy_wh       double precision,
    started_at      timestamptz,
    stopped_at      timestamptz,
    stop_reason     text,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'ended')),
    last_seq_no     integer,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, ocpp_tx_id),
    UNIQUE (device_id, start_key)
);
CREATE INDEX charging_transactions_active_idx ON charging_transactions (device_id) WHERE status = 'active';
CREATE INDEX charging_transactions_started_idx ON charging_transactions (started_at DESC);

-- 2.0.1 TransactionEvent de-duplication: a replayed (transaction, seqNo) is answered but not applied.
CREATE TABLE charging_transaction_events (
    transaction_id  integer NOT NULL REFERENCES charging_transactions (id) ON DELETE CASCADE,
    seq_no          integer NOT NULL,
    event_type      text NOT NULL,
    trigger_reason  text,
    ts              timestamptz NOT NULL,
    PRIMARY KEY (transaction_id, seq_no)
);

-- "未批先建、未验先投": a pile that connects or operates outside its approved lifecycle. Repeated attempts
-- of one kind within an hour bump `attempts` on one row instead of flooding the table.
CREATE TABLE charging_violations (
    id         bigserial PRIMARY KEY,
    device_id  integer NOT NULL REFERENCES devices (id),
    kind       text NOT NULL,
    lifecycle  text,
    details    jsonb NOT NULL DEFAULT '{}'::jsonb,
    at         timestamptz NOT NULL DEFAULT now(),
    last_at    timestamptz NOT NULL DEFAULT now(),
    attempts   integer NOT NULL DEFAULT 1
);
CREATE INDEX charging_violations_device_idx ON charging_violations (device_id, kind, last_at DESC);

-- The site-level charging limit (the demand-response lever), divided among the site's sessions.
CREATE TABLE site_charging_limits (
    site_id       integer PRIMARY KEY REFERENCES sites (id) ON DELETE CASCADE,
    watts         double precision NOT NULL CHECK (watts >= 0),
    valid_until   timestamptz NOT NULL,
    command_id    text,
    requested_by  text,
    set_at        timestamptz NOT NULL DEFAULT now()
);

-- Charging profiles the server has had accepted by piles (for inspection; the pile is the truth).
CREATE TABLE charging_profiles (
    device_id    integer NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    evse_id      integer NOT NULL,
    profile_id   integer NOT NULL,
    purpose      text NOT NULL,
    stack_level  integer NOT NULL,
    profile      jsonb NOT NULL,
    valid_to     timestamptz,
    source       text,
    set_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, evse_id, profile_id)
);

-- Every node re-divides a site's limit among the sessions it holds when the limit or a session changes.
CREATE FUNCTION notify_charging_allocation() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sid integer;
BEGIN
    IF TG_TABLE_NAME = 'site_charging_limits' THEN
        sid := COALESCE(NEW.site_id, OLD.site_id);
    ELSE
        SELECT site_id INTO sid FROM devices WHERE id = COALESCE(NEW.device_id, OLD.device_id);
    END IF;
    PERFORM pg_notify('lishui_charging_allocation', sid::text);
    RETURN NULL;
END $$;

CREATE TRIGGER site_charging_limits_notify AFTER INSERT OR UPDATE OR DELETE ON site_charging_limits
    FOR EACH ROW EXECUTE FUNCTION notify_charging_allocation();
CREATE TRIGGER charging_transactions_notify AFTER INSERT OR UPDATE OF status ON charging_transactions
    FOR EACH ROW EXECUTE FUNCTION notify_charging_allocation();
