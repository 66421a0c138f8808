-- Expected clips: every clip the catalog knows of, from the first message about it (a
-- station's event, or the catalog's own decision for a clip no event announced), with the
-- state it has reached. States only move forward (expected_rank): an event arriving late or
-- twice never moves a clip back, and `accepted` (decided by the catalog) is final.
CREATE FUNCTION expected_rank(state text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE state
        WHEN 'recording' THEN 1
        WHEN 'recorded'  THEN 2
        WHEN 'uploaded'  THEN 3
        WHEN 'rejected'  THEN 4
        WHEN 'failed'    THEN 4
        WHEN 'aborted'   THEN 4
        WHEN 'accepted'  THEN 5
        ELSE 0
    END
$$;

CREATE TABLE expected_clips (
    clip_id        text        PRIMARY KEY,
    order_id       text        NOT NULL,
    station        text        NOT NULL,
    camera         text        NOT NULL,
    state          text        NOT NULL CHECK (state IN ('recording', 'recorded', 'uploaded',
                                   'accepted', 'rejected', 'failed', 'aborted')),
    -- Why, for `failed` and `rejected`.
    reason         text,
    -- When the ingest received the message that put the clip into its state.
    since          timestamptz NOT NULL DEFAULT now(),
    -- The station's (or, for accepted/rejected, the catalog's) time of that message.
    state_at       timestamptz,
    -- When the clip was first known to be recorded (the overdue clock); NULL while recording.
    pending_since  timestamptz,
    first_seen     timestamptz NOT NULL DEFAULT now(),
    last_seen      timestamptz NOT NULL DEFAULT now(),
    -- When a sweep first found the clip overdue and put its clip.overdue event into the
    -- outbox; never reset, so that the event is emitted once.
    overdue_at     timestamptz
);
CREATE INDEX expected_clips_by_order ON expected_clips (order_id);
CREATE INDEX expected_clips_open ON expected_clips (station)
    WHERE state IN ('recording', 'recorded', 'uploaded');

-- Every state a clip entered, once: a QoS 1 duplicate of an event is recorded once.
CREATE TABLE clip_transitions (
    clip_id      text        NOT NULL,
    state        text        NOT NULL,
    -- The station's time of the event (the catalog's for accepted/rejected).
    at           timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clip_id, state)
);

-- `start` commands the line sent to a station, and whether the station answered.
CREATE TABLE station_commands (
    station      text        NOT NULL,
    command_id   text        NOT NULL,
    order_id     text,
    sent_at      timestamptz,
    seen_at      timestamptz NOT NULL DEFAULT now(),
    answered_at  timestamptz,
    ok           boolean,
    error_code   text,
    -- When a sweep found the command unanswered (logged and counted once).
    reported_at  timestamptz,
    PRIMARY KEY (station, command_id)
);
CREATE INDEX station_commands_unanswered ON station_commands (seen_at) WHERE answered_at IS NULL;
CREATE INDEX station_commands_by_order ON station_commands (order_id);
