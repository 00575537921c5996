-- The W3C traceparent of the request that last started the order's saga (placement, a
-- cancel, a refund): a runner resumed after a restart, or on another replica, continues that
-- trace. NULL for an order placed outside any trace.
ALTER TABLE orders ADD COLUMN traceparent TEXT;
