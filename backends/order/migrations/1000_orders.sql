-- The event store: an order is the fold of its events in `seq` order. The primary key is
-- what makes an append with an expected `seq` safe: of two writers that read the same
-- state, the second's insert of the same (order_id, seq) is refused, and it re-decides.
CREATE TABLE order_events (
    order_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (order_id, seq)
);

-- A projection of the fold, written in the same transaction as the events: who owns the
-- order (for listing), its status (for finding unfinished sagas) and the lease of the saga
-- runner driving it (one runner per order across processes).
CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    status TEXT NOT NULL,
    seq BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    saga_owner TEXT,
    saga_lease_until BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX orders_by_customer ON orders (customer_id, id);
CREATE INDEX orders_by_status ON orders (status, saga_lease_until);
