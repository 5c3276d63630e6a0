-- Media written out by egress (recordings, re-streams) per key and hour, for billing.
-- Valid on both SQLite and PostgreSQL; existing rows read 0.
ALTER TABLE usage_hourly ADD COLUMN media_ms_egress BIGINT NOT NULL DEFAULT 0;
