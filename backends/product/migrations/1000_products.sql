-- The catalogue. `sku` is unique for ever (a deleted product keeps its sku, since
-- reservations and events name it); the unique index is what turns two racing creations
-- into one 201 and one 409. `search_text` is lower(name || ' ' || description), lowered in
-- Rust so case-insensitive search behaves the same on SQLite and PostgreSQL.
CREATE TABLE products (
    id TEXT PRIMARY KEY,
    sku TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    category TEXT NOT NULL,
    price_amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    low_stock_threshold BIGINT NOT NULL,
    search_text TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE UNIQUE INDEX products_sku ON products (sku);
CREATE INDEX products_listing ON products (created_at, id);
CREATE INDEX products_category ON products (category, created_at, id);

-- Stock per sku. The CHECK is a backstop: every write is a conditional UPDATE that keeps
-- it, so a violation means a bug, never a client's doing.
CREATE TABLE inventory (
    sku TEXT PRIMARY KEY REFERENCES products (sku),
    on_hand BIGINT NOT NULL,
    reserved BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CHECK (reserved >= 0 AND on_hand >= reserved)
);

-- One reservation per order (the primary key makes reserving idempotent per order_id).
-- status: reserved | committed | released | expired; only `reserved` holds stock.
CREATE TABLE reservations (
    order_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX reservations_due ON reservations (status, expires_at);

CREATE TABLE reservation_items (
    order_id TEXT NOT NULL REFERENCES reservations (order_id),
    sku TEXT NOT NULL,
    qty BIGINT NOT NULL,
    PRIMARY KEY (order_id, sku)
);
