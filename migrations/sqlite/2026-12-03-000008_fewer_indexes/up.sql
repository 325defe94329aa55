-- Two indexes every write paid for and no read needs: batteries_claim (station_id, status, soc,
-- id) serves every lookup by (station_id, status), and the event log is pruned by id
-- (events::log::prune), not by created_at.
DROP INDEX batteries_station_status;
DROP INDEX events_created;
