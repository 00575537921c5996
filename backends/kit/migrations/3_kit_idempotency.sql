-- Idempotency keys (Stripe semantics), scoped to the caller. `status` is NULL while the
-- first request is in flight; `locked_until` lets a key whose request died be taken again,
-- and `lock_token` names the request holding it, so one whose lease was taken over cannot
-- overwrite or release the key any more. `body` is the response body as text, or as hex
-- when `body_encoding` is 'hex' (bytes that are not UTF-8 or contain NUL, which
-- PostgreSQL's TEXT refuses). `headers` is a JSON array of [name, value] pairs.
CREATE TABLE kit_idempotency (
    scope TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    lock_token TEXT,
    status INTEGER,
    headers TEXT,
    body TEXT,
    body_encoding TEXT,
    created_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    PRIMARY KEY (scope, idem_key)
);
CREATE INDEX kit_idempotency_created ON kit_idempotency (created_at);
