-- Stock given back after a committed reservation: the lines of a refunded or cancelled
-- order. One row per sku of a return; the key makes a return idempotent per
-- (order_id, return_id), and the sum per (order_id, sku) never exceeds what was committed.
CREATE TABLE stock_returns (
    order_id TEXT NOT NULL,
    return_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    qty BIGINT NOT NULL,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (order_id, return_id, sku)
);
CREATE INDEX stock_returns_by_sku ON stock_returns (order_id, sku);
