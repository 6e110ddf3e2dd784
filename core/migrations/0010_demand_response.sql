-- Demand response: events the grid company (or an OpenADR VTN) asks for, and an audit of every change.
-- An event is peak shaving (a reduction target, or a cap on the scope's aggregate load) or valley
-- filling (an increase target, or a floor under the aggregate load), over whole 15-minute intervals.
CREATE TABLE dr_events (
    id            serial PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('peak_shaving', 'valley_filling')),
    target_kw     double precision CHECK (target_kw > 0),
    cap_kw        double precision CHECK (cap_kw >= 0),
    floor_kw      double precision CHECK (floor_kw >= 0),
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL,
    notice        text NOT NULL CHECK (notice IN ('day_ahead', 'intraday')),
    scope         text NOT NULL CHECK (scope IN ('county', 'town', 'feeder', 'sites')),
    town_id       smallint REFERENCES towns (id),
    feeder        text,
    site_ids      integer[],
    -- A name from dr_controller.baselines.PROGRAM_BASELINES.
    baseline      text NOT NULL DEFAULT 'high_5_of_10_adjusted',
    state         text NOT NULL DEFAULT 'scheduled'
                  CHECK (state IN ('scheduled', 'active', 'completed', 'cancelled')),
    reason        text,
    -- Where the event came from: 'api', or 'openadr:{vtn}' with the VTN's event id in external_id.
    source        text NOT NULL DEFAULT 'api',
    external_id   text,
    version       integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, external_id),
    CONSTRAINT dr_events_one_amount CHECK (num_nonnulls(target_kw, cap_kw, floor_kw) = 1),
    CONSTRAINT dr_events_cap_is_peak CHECK (cap_kw IS NULL OR kind = 'peak_shaving'),
    CONSTRAINT dr_events_floor_is_valley CHECK (floor_kw IS NULL OR kind = 'valley_filling'),
    CONSTRAINT dr_events_window CHECK (ends_at > starts_at),
    CONSTRAINT dr_events_whole_intervals CHECK (extract(epoch FROM starts_at)::bigint % 900 = 0 AND extract(epoch FROM ends_at)::bigint % 900 = 0),
    CONSTRAINT dr_events_scope CHECK (CASE scope WHEN 'county' THEN num_nonnulls(town_id, feeder, site_ids) = 0
                      WHEN 'town' THEN town_id IS NOT NULL AND feeder IS NULL AND site_ids IS NULL
                      WHEN 'feeder' THEN feeder IS NOT NULL AND town_id IS NULL AND site_ids IS NULL
                      ELSE site_ids IS NOT NULL AND cardinality(site_ids) > 0
                           AND town_id IS NULL AND feeder IS NULL END)
);
CREATE INDEX dr_events_window_idx ON dr_events (starts_at) WHERE state IN ('scheduled', 'active');

CREATE TABLE dr_event_audit (
    id        bigserial PRIMARY KEY,
    event_id  integer NOT NULL REFERENCES dr_events (id),
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Who: set per transaction with SET LOCAL lishui.actor = '...'; the database role otherwise.
    actor     text NOT NULL,
    action    text NOT NULL CHECK (action IN ('created', 'amended', 'activated', 'completed', 'cancelled')),
    before    jsonb,
    after     jsonb NOT NULL
);
CREATE INDEX dr_event_audit_event_idx ON dr_event_audit (event_id, id);

-- The lifecycle is enforced here, not only in the service, so no client can skip a state:
-- scheduled -> active | cancelled; active -> completed | cancelled; completed and cancelled are final.
-- Only a scheduled event may be amended (an active one is cancelled and replaced).
CREATE FUNCTION dr_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state <> 'scheduled' THEN
            RAISE EXCEPTION 'a demand-response event starts scheduled, not %', NEW.state;
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.state = OLD.state THEN
        IF OLD.state <> 'scheduled' THEN
            RAISE EXCEPTION 'event % is %: only a scheduled event can be amended', OLD.id, OLD.state;
        END IF;
    ELSIF (OLD.state, NEW.state) NOT IN (('scheduled', 'active'), ('active', 'completed'),
                                         ('scheduled', 'cancelled'), ('active', 'cancelled')) THEN
        RAISE EXCEPTION 'event % cannot go from % to %', OLD.id, OLD.state, NEW.state;
    END IF;
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;
CREATE TRIGGER dr_events_guard BEFORE INSERT OR UPDATE ON dr_events
    FOR EACH ROW EXECUTE FUNCTION dr_events_guard();

-- AFTER, so the row exists for the audit's foreign key; still in the change's own transaction.
CREATE FUNCTION dr_events_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dr_event_audit (event_id, actor, action, before, after)
    VALUES (NEW.id, coalesce(nullif(current_setting('lishui.actor', true), ''), current_user),
            CASE WHEN TG_OP = 'INSERT' THEN 'created'
                 WHEN NEW.state = OLD.state THEN 'amended'
                 WHEN NEW.state = 'active' THEN 'activated'
                 ELSE NEW.state END,
            CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) END, to_jsonb(NEW));
    RETURN NULL;
END;
$$;
CREATE TRIGGER dr_events_audit AFTER INSERT OR UPDATE ON dr_events
    FOR EACH ROW EXECUTE FUNCTION dr_events_audit();

CREATE FUNCTION dr_events_no_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'demand-response events are cancelled, never deleted';
END;
$$;
CREATE TRIGGER dr_events_no_delete BEFORE DELETE ON dr_events
    FOR EACH ROW EXECUTE FUNCTION dr_events_no_delete();
