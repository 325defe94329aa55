ALTER TABLE event_counter DROP COLUMN stations_revision;
