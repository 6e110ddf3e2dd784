-- Demand-response control loop state: what the controller measured, decided and sent, per event.
-- Times in these tables are on the controller's event clock (the wall clock in production; a
-- simulation's clock in scenario tests), so they line up with dr_events.starts_at/ends_at.

-- The runtime of one event, one row, updated each cycle by the leader: how it is being measured
-- (which baseline is really in use and why) and the closed loop's integrator, so a standby taking
-- over resumes where the leader stopped instead of starting the ramp again.
CREATE TABLE dr_event_runtime (
    event_id        integer PRIMARY KEY REFERENCES dr_events (id),
    baseline_used   text NOT NULL,
    baseline_note   text,
    -- The controller instance (its name) that last ran a cycle of this event.
    controller      text NOT NULL,
    activated_at    timestamptz NOT NULL,
    last_cycle_at   timestamptz,
    cycles          integer NOT NULL DEFAULT 0,
    allocated_kw    double precision,
    restored_at     timestamptz
);

-- Each resource's reference at activation (before any dispatch of ours): the operating point of
-- generators and storage, the load of flexible loads, and, per kind, the baseline the load
-- aggregate is measured against when the program's baseline cannot be computed from history.
CREATE TABLE dr_references (
    event_id      integer NOT NULL REFERENCES dr_events (id),
    resource_id   text NOT NULL,
    device_id     integer REFERENCES devices (id),
    kind          text NOT NULL,
    produces      boolean NOT NULL,
    reference_kw  double precision NOT NULL,
    PRIMARY KEY (event_id, resource_id)
);

-- Every command the controller sent, and what became of it (cmd/result).
CREATE TABLE dr_dispatches (
    id           bigserial PRIMARY KEY,
    event_id     integer NOT NULL REFERENCES dr_events (id),
    cycle        integer NOT NULL,
    at           timestamptz NOT NULL,
    resource_id  text NOT NULL,
    device_id    integer REFERENCES devices (id),
    site         text NOT NULL,
    target       text NOT NULL,  -- the device key, or _site for a site-level command
    op           text NOT NULL,
    args         jsonb NOT NULL,
    dispatch_kw  double precision NOT NULL,
    restore      boolean NOT NULL DEFAULT false,
    command_id   text NOT NULL UNIQUE,
    controller   text NOT NULL,
    status       text NOT NULL DEFAULT 'sent'
                 CHECK (status IN ('sent', 'accepted', 'rejected', 'failed', 'expired')),
    detail       text,
    answered_at  timestamptz
);
CREATE INDEX dr_dispatches_event_idx ON dr_dispatches (event_id, cycle);

-- One row per control cycle of an event: the aggregate picture.
CREATE TABLE dr_measurements (
    event_id      integer NOT NULL REFERENCES dr_events (id),
    ts            timestamptz NOT NULL,
    cycle         integer NOT NULL,
    target_kw     double precision NOT NULL,
    delivered_kw  double precision NOT NULL,
    allocated_kw  double precision NOT NULL,
    baseline_kw   double precision,
    controller    text NOT NULL,
    PRIMARY KEY (event_id, ts)
);

-- Per resource and cycle: the measurement and what it was dispatched to give (settlement input).
CREATE TABLE dr_resource_measurements (
    event_id      integer NOT NULL REFERENCES dr_events (id),
    ts            timestamptz NOT NULL,
    resource_id   text NOT NULL,
    measured_kw   double precision NOT NULL,
    dispatch_kw   double precision NOT NULL,
    PRIMARY KEY (event_id, resource_id, ts)
);
