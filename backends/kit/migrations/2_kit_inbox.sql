-- Inbox: one row per (consumer, event) applied, written in the consumer's own transaction,
-- so a redelivered event is recognised and applied once.
CREATE TABLE kit_inbox (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
