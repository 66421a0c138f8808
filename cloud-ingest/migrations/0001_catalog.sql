-- The catalog: one row per clip, keyed by its ULID. The row is written once when the clip is
-- first verified; it changes only from 'rejected' to 'accepted' (a corrected re-upload).
CREATE TABLE clips (
    clip_id       text PRIMARY KEY,
    order_id      text        NOT NULL,
    device        text        NOT NULL,
    station       text        NOT NULL,
    camera        text        NOT NULL,
    kind          text        NOT NULL,
    bucket        text        NOT NULL,
    object_key    text        NOT NULL,
    size          bigint      NOT NULL,
    sha256        text        NOT NULL,
    started_at    timestamptz NOT NULL,
    ended_at      timestamptz NOT NULL,
    status        text        NOT NULL CHECK (status IN ('accepted', 'rejected')),
    reason        text,
    -- The notification exactly as received: the source of every other field.
    notification  text        NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX clips_by_order ON clips (order_id, started_at);
CREATE INDEX clips_by_station ON clips (station, started_at);

-- Transactional outbox: written in the same transaction as the catalog row, published by the
-- relay, marked sent once RabbitMQ confirmed it. event_id is the CloudEvent id.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_id     text        NOT NULL UNIQUE,
    routing_key  text        NOT NULL,
    body         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

-- Notifications that could not be read at all (malformed JSON, wrong schema): kept for
-- inspection, acknowledged so they never block the queue.
CREATE TABLE poison (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text        NOT NULL,
    payload      bytea       NOT NULL,
    error        text        NOT NULL
);
