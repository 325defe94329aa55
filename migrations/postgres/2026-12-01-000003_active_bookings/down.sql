ALTER TABLE users DROP COLUMN active_bookings;
