DROP INDEX batteries_claim;
DROP INDEX stations_available;
DROP INDEX stations_name;
ALTER TABLE stations DROP COLUMN total_batteries;
ALTER TABLE stations DROP COLUMN charging_batteries;
ALTER TABLE stations DROP COLUMN booked_batteries;
ALTER TABLE stations DROP COLUMN available_batteries;
