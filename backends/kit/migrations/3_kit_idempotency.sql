-- Idempotency keys (Stripe semantics), scoped to the caller. `status` is NULL while the
-- first request is in flight; `locked_until` lets a key whose request died be taken again.
CREATE TABLE kit_idempotency (
    scope TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER,
    headers TEXT,
    body TEXT,
    created_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    PRIMARY KEY (scope, idem_key)
);
CREATE INDEX kit_idempotency_created ON kit_idempotency (created_at);
