-- How many live (confirmed or ready) bookings each driver holds, kept in the transaction of every
-- booking transition. The booking limit is a conditional update of this count, so concurrent
-- bookings by one driver serialize on their own row instead of all reading the same old count.
ALTER TABLE users ADD COLUMN active_bookings INTEGER NOT NULL DEFAULT 0 CHECK (active_bookings >= 0);
UPDATE users SET active_bookings = (
    SELECT COUNT(*) FROM bookings
    WHERE bookings.user_id = users.id AND bookings.status IN ('confirmed', 'ready')
);
