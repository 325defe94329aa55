-- Bumped by every change to a station row that is not an event (a new station, a new name or
-- address, an import): the all-stations snapshot is shared while neither the log position nor this
-- has moved, so a change that writes no event must still make the next snapshot fresh.
ALTER TABLE event_counter ADD COLUMN stations_revision BIGINT NOT NULL DEFAULT 0;
