-- The WAL position each mart row reflects: an upsert never replaces a newer row with an older one
-- (e.g. a worker that lost its partitions in a rebalance and writes late).
ALTER TABLE city_marts ADD COLUMN source_lsn bigint NOT NULL DEFAULT 0;
ALTER TABLE sight_marts ADD COLUMN source_lsn bigint NOT NULL DEFAULT 0;
