-- Who a user id is, for email: kept from `user.registered` (the only event that carries an
-- address). A user registered before this service first subscribed has no row: in-app
-- notifications still reach them, email does not.
CREATE TABLE recipients (
    user_id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT,
    updated_at BIGINT NOT NULL
);

-- The in-app inbox: one row per (event, user). The unique pair is what makes a replayed
-- event a no-op even past the consumer's inbox.
CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    category TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT
);
CREATE UNIQUE INDEX notifications_once ON notifications (event_id, user_id);
CREATE INDEX notifications_inbox ON notifications (user_id, id);

-- The outgoing queue: one row per (event, channel, recipient), unique, so a replayed event
-- cannot enqueue twice. `data` is the template context; the message is rendered at send
-- time. States: queued → sending (leased until lease_until) → sent | failed (retried at
-- next_attempt_at) → dead after max attempts; dropped when the recipient opted out.
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    user_id TEXT,
    category TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE UNIQUE INDEX deliveries_once ON deliveries (event_id, channel, recipient);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);

-- Opt-outs (and opt-ins back) per user, category and channel; no row = the default (on).
CREATE TABLE preferences (
    user_id TEXT NOT NULL,
    category TEXT NOT NULL,
    channel TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, category, channel)
);
