-- Raw events: every accepted event, client-sent (track) or a domain fact from the bus.
-- The rollups are a function of these rows alone (`rebuild` recomputes them from here).
-- No IP address or user agent is ever stored: `visitor` is a keyed hash with a daily salt.
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    name TEXT NOT NULL,
    -- when it happened (Unix ms), the client's clock corrected by sent_at vs received_at
    occurred_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    user_id TEXT,
    anonymous_id TEXT,
    visitor TEXT,
    properties TEXT NOT NULL
);
CREATE INDEX events_occurred ON events (occurred_at);

-- The dedup window: message ids seen per source, with a digest of what they carried (the
-- same id with another body is a conflict: the first one wins). Pruned after DEDUP_WINDOW.
CREATE TABLE seen (
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (source, message_id)
);
CREATE INDEX seen_age ON seen (seen_at);

-- Rollups: per metric, currency ('' when not money), dimension ('' = the total) and value,
-- granularity and bucket start (Unix ms, UTC): count, sum, min, max of the measured values.
CREATE TABLE rollups (
    metric TEXT NOT NULL,
    currency TEXT NOT NULL,
    dim TEXT NOT NULL,
    dim_value TEXT NOT NULL,
    granularity TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    count BIGINT NOT NULL,
    sum BIGINT NOT NULL,
    min BIGINT NOT NULL,
    max BIGINT NOT NULL,
    PRIMARY KEY (metric, granularity, dim, bucket, currency, dim_value)
);

-- The event-time watermark: the latest occurred_at accepted (to the second). Client events
-- older than watermark - LATENESS are dropped as late.
CREATE TABLE watermark (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL
);
INSERT INTO watermark (id, at) VALUES (1, 0);

-- What ingest did, per minute received: accepted, duplicate, conflict, late, bot, invalid.
CREATE TABLE ingest_counts (
    minute BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (minute, outcome)
);

-- Daily salts of the visitor hash (day = days since 1970-01-01 UTC); kept for today and
-- yesterday only, so no visitor id can be recomputed after 48 hours.
CREATE TABLE salts (
    day BIGINT PRIMARY KEY,
    salt TEXT NOT NULL
);

-- Visitors seen lately, so a visit that crosses midnight keeps yesterday's id.
CREATE TABLE sessions (
    visitor TEXT PRIMARY KEY,
    last_seen BIGINT NOT NULL
);

-- Write keys of server-side and browser sources (only their SHA-256 is kept).
CREATE TABLE sources (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
