DROP INDEX events_user;
DROP INDEX events_station;
