-- Saved cards. Never the number or the CVC: `fingerprint` is an HMAC of the number under
-- the service's fingerprint key (same card → same fingerprint, for velocity rules), and
-- `processor_token` is what the processor gave back for it.
CREATE TABLE payment_methods (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    brand TEXT NOT NULL,
    last4 TEXT NOT NULL,
    exp_month BIGINT NOT NULL,
    exp_year BIGINT NOT NULL,
    country TEXT NOT NULL,
    billing_country TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    processor_token TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX payment_methods_customer ON payment_methods (customer_id, id);

-- Payment intents. `status` only moves through conditional UPDATEs (`… WHERE status = $old`)
-- whose rows-affected count says which request won, so no transition happens twice.
CREATE TABLE payment_intents (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    payment_method_id TEXT NOT NULL REFERENCES payment_methods (id),
    card_fingerprint TEXT NOT NULL,
    order_id TEXT,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    capture_method TEXT NOT NULL,
    status TEXT NOT NULL,
    amount_authorized BIGINT NOT NULL,
    amount_captured BIGINT NOT NULL,
    amount_refunded BIGINT NOT NULL,
    fraud_decision TEXT,
    fraud_rule TEXT,
    failure_reason TEXT,
    auth_code TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX payment_intents_customer ON payment_intents (customer_id, created_at);
CREATE INDEX payment_intents_card ON payment_intents (card_fingerprint, created_at);
CREATE INDEX payment_intents_order ON payment_intents (order_id);

CREATE TABLE refunds (
    id TEXT PRIMARY KEY,
    payment_intent_id TEXT NOT NULL REFERENCES payment_intents (id),
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    reason TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX refunds_intent ON refunds (payment_intent_id);

-- The double-entry ledger, append-only (the service only ever INSERTs). The entries of
-- one `txn_id` sum to zero; a positive amount is a debit, a negative one a credit.
CREATE TABLE ledger_entries (
    id TEXT PRIMARY KEY,
    txn_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payment_intent_id TEXT NOT NULL,
    account TEXT NOT NULL,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ledger_entries_txn ON ledger_entries (txn_id);
CREATE INDEX ledger_entries_intent ON ledger_entries (payment_intent_id);
