-- Accounts. `email` is stored normalized (trimmed, lowercased); its unique index is what
-- turns a racing duplicate registration into one 201 and one 409.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_email ON users (email);

CREATE TABLE user_roles (
    user_id TEXT NOT NULL REFERENCES users (id),
    role TEXT NOT NULL,
    PRIMARY KEY (user_id, role)
);

-- A login. Revoking it (logout, reuse of a rotated refresh token, password change) ends
-- every refresh token of the session.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoked_reason TEXT,
    user_agent TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

-- Opaque refresh tokens, stored as SHA-256 hex. `used_at` is set when the token is rotated;
-- presenting a token whose `used_at` is set is reuse.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id),
    created_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Failed logins per (normalized) email, whether or not an account has it, so throttling
-- reveals nothing about which emails exist.
CREATE TABLE login_failures (
    email TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    locked_until BIGINT NOT NULL,
    last_failed_at BIGINT NOT NULL
);

-- Public halves of retired signing keys, published in the JWKS until tokens they signed
-- have expired.
CREATE TABLE retired_keys (
    kid TEXT PRIMARY KEY,
    jwk TEXT NOT NULL,
    publish_until BIGINT NOT NULL
);
