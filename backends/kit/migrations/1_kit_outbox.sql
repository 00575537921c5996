-- Transactional outbox: a service writes its event here in the same transaction as the
-- state change; the relay publishes pending rows in id (UUIDv7 = creation) order and marks
-- them sent. Rows are never deleted by the relay before they are sent.
CREATE TABLE kit_outbox (
    id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at BIGINT
);
CREATE INDEX kit_outbox_pending ON kit_outbox (id) WHERE sent_at IS NULL;
