CREATE INDEX batteries_station_status ON batteries (station_id, status);
CREATE INDEX events_created ON events (created_at);
