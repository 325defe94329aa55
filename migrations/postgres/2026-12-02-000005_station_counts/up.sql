-- A station's inventory counts live on its row, moved in the transaction of every change to one of
-- its batteries (domain::transition), so that reading or changing a station costs the same with 20
-- batteries or a million: nothing counts a station's batteries again. Collected and retired
-- batteries are in no count.
ALTER TABLE stations ADD COLUMN available_batteries INTEGER NOT NULL DEFAULT 0 CHECK (available_batteries >= 0);
ALTER TABLE stations ADD COLUMN booked_batteries INTEGER NOT NULL DEFAULT 0 CHECK (booked_batteries >= 0);
ALTER TABLE stations ADD COLUMN charging_batteries INTEGER NOT NULL DEFAULT 0 CHECK (charging_batteries >= 0);
ALTER TABLE stations ADD COLUMN total_batteries INTEGER NOT NULL DEFAULT 0 CHECK (total_batteries >= 0);
UPDATE stations SET
    available_batteries = (SELECT COUNT(*) FROM batteries b WHERE b.station_id = stations.id AND b.status = 'available'),
    booked_batteries = (SELECT COUNT(*) FROM batteries b WHERE b.station_id = stations.id AND b.status = 'booked'),
    charging_batteries = (SELECT COUNT(*) FROM batteries b WHERE b.station_id = stations.id AND b.status = 'charging'),
    total_batteries = (SELECT COUNT(*) FROM batteries b WHERE b.station_id = stations.id AND b.status IN ('available', 'booked', 'charging'));
-- The station list sorts by name and by availability; each sort ends on the id, so cursors are exact.
CREATE INDEX stations_name ON stations (name, id);
CREATE INDEX stations_available ON stations (available_batteries, id);
-- A booking claims the best charged available battery of a station.
CREATE INDEX batteries_claim ON batteries (station_id, status, soc, id);
