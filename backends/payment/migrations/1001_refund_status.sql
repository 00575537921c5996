-- A refund is recorded `pending` (its amount already counted in the intent's
-- amount_refunded, so concurrent refunds cannot exceed the capture) before the processor
-- is called outside any transaction; a second transaction makes it `succeeded` (ledger and
-- event) or `failed` (the amount released). Recovery settles what a crash left pending.
ALTER TABLE refunds ADD COLUMN status TEXT NOT NULL DEFAULT 'succeeded';
CREATE INDEX refunds_pending ON refunds (status, created_at);
