-- Change-data-capture: what Debezium (pgoutput) reads.

-- Deletes and updates carry the whole old row, so consumers know e.g. which city a deleted image belonged to.
ALTER TABLE cities REPLICA IDENTITY FULL;
ALTER TABLE sights REPLICA IDENTITY FULL;
ALTER TABLE images REPLICA IDENTITY FULL;
ALTER TABLE labels REPLICA IDENTITY FULL;
ALTER TABLE models REPLICA IDENTITY FULL;

-- Debezium writes here on every heartbeat, so the replication slot advances even when no watched table changes.
CREATE TABLE debezium_heartbeat (
    id  integer PRIMARY KEY,
    ts  timestamptz NOT NULL
);

CREATE PUBLICATION sightscan_publication
    FOR TABLE cities, sights, images, labels, models, debezium_heartbeat;
