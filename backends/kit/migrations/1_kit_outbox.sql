-- Transactional outbox: a service writes its event here in the same transaction as the
-- state change; the relay publishes pending rows in id (UUIDv7 = creation) order and marks
-- them sent. Rows are never deleted by the relay; `outbox::purge_sent` trims sent ones.
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
-- The relay lease: with several processes on one database, the relay holding this row
-- (until `expires_at`, Unix ms) is the only one publishing, which keeps publication in id
-- order and avoids every replica publishing every row. Taken and renewed by a conditional
-- upsert; released on shutdown; taken over when it expires.
CREATE TABLE kit_outbox_lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
