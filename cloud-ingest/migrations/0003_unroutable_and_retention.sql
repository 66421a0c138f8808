-- Unroutable events stay in the outbox: RabbitMQ returned the message (published mandatory,
-- no queue bound for its routing key), so it was not delivered to anyone. `returns` counts
-- those returns, `retry_at` is when the relay may try the row again (exponential backoff).
ALTER TABLE outbox
    ADD COLUMN returns   integer NOT NULL DEFAULT 0,
    ADD COLUMN retry_at  timestamptz;

-- Retention: sent events and poison rows are deleted after a configurable age
-- (`[retention]`); these indexes keep the periodic deletes from scanning the tables.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX poison_received ON poison (received_at);

-- Poison payloads are stored truncated to `retention.poison_payload_max` bytes; the size of
-- the payload as received is kept beside it. NULL for rows stored before this migration.
ALTER TABLE poison ADD COLUMN payload_size bigint;
