-- One schema for SQLite and PostgreSQL: only types both understand (TEXT, BIGINT), ids made by
-- the application (no SERIAL/AUTOINCREMENT, which differ), times as unix milliseconds.
CREATE TABLE tenants (
    tenant_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);

CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (tenant_id),
    name TEXT NOT NULL,
    -- SHA-256 of the secret part, lowercase hex; the secret itself is never stored.
    secret_sha256 TEXT NOT NULL,
    aic_enabled BIGINT NOT NULL,
    -- Comma-separated hint modes; empty = all.
    allowed_modes TEXT NOT NULL,
    max_level BIGINT NOT NULL,
    max_streams BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- Metered usage per key and hour; flushes add to the row (upsert), never overwrite it.
CREATE TABLE usage_hourly (
    key_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    period_ms BIGINT NOT NULL,
    sessions BIGINT NOT NULL,
    media_ms_encoded BIGINT NOT NULL,
    media_ms_decoded BIGINT NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    bytes_saved BIGINT NOT NULL,
    PRIMARY KEY (key_id, period_ms)
);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    peer TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at_ms);
