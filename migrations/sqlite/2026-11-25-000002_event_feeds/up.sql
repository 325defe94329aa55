-- Resuming clients read one station's or one user's events after an id.
CREATE INDEX events_station ON events (station_id, id);
CREATE INDEX events_user ON events (user_id, id);
