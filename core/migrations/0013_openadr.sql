-- OpenADR 2.0b: what Lishui's VEN answered to each version of each VTN event, and why.
-- The events it accepted are dr_events rows with source 'openadr:{vtn_id}' and external_id
-- '{vtn event id}#{part}' (one row per run of intervals asking the same; '#{part}@{modification}' when a
-- part had to be replaced because it was already active). This table keeps the rest: the opt-outs and
-- their reasons (which have no dr_events row), the modification number answered (so a restarted VEN
-- answers a re-sent event the same way and ignores stale versions), and the event as received.
CREATE TABLE openadr_responses (
    vtn_id               text NOT NULL,
    event_id             text NOT NULL,
    modification_number  integer NOT NULL CHECK (modification_number >= 0),
    -- The VTN's status of the event when received: far, near, active, completed, cancelled, none.
    event_status         text NOT NULL,
    opt                  text NOT NULL CHECK (opt IN ('optIn', 'optOut')),
    -- The OpenADR optReason sent with an opt-out, and the reason in words.
    opt_reason           text,
    reason               text,
    dr_event_ids         integer[] NOT NULL DEFAULT '{}',
    received             jsonb NOT NULL,
    answered_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vtn_id, event_id, modification_number),
    CONSTRAINT openadr_responses_opt_out_says_why CHECK (opt = 'optIn' OR reason IS NOT NULL)
);
