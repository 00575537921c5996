-- Account administration: a disabled account cannot log in or refresh; its sessions were
-- ended when it was disabled. NULL = active.
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
ALTER TABLE users ADD COLUMN disabled_reason TEXT;
