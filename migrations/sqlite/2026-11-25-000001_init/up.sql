-- Times are unix milliseconds (BIGINT) so both backends share one schema.rs.
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'user')),
    password_hash TEXT NOT NULL,
    active BOOLEAN NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL
);

CREATE TABLE stations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    address TEXT,
    status TEXT NOT NULL CHECK (status IN ('online', 'offline', 'maintenance')),
    operator_id BIGINT REFERENCES users (id),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE batteries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    station_id BIGINT NOT NULL REFERENCES stations (id),
    serial TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('available', 'booked', 'collected', 'charging', 'retired')),
    soc INTEGER NOT NULL CHECK (soc BETWEEN 0 AND 100),
    soh INTEGER NOT NULL CHECK (soh BETWEEN 0 AND 100),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX batteries_station_status ON batteries (station_id, status);

CREATE TABLE bookings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id),
    station_id BIGINT NOT NULL REFERENCES stations (id),
    battery_id BIGINT NOT NULL REFERENCES batteries (id),
    status TEXT NOT NULL CHECK (status IN ('confirmed', 'ready', 'collected', 'cancelled', 'expired')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ready_at BIGINT,
    collected_at BIGINT,
    cancelled_at BIGINT
);
-- The last line of defence against double booking: one live booking per battery.
CREATE UNIQUE INDEX bookings_one_live_per_battery ON bookings (battery_id) WHERE status IN ('confirmed', 'ready');
CREATE INDEX bookings_user ON bookings (user_id, id);
CREATE INDEX bookings_due ON bookings (status, expires_at);

CREATE TABLE notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id),
    title TEXT NOT NULL,
    message TEXT NOT NULL,
    level TEXT NOT NULL CHECK (level IN ('info', 'success', 'warning', 'error')),
    created_at BIGINT NOT NULL,
    read_at BIGINT
);
CREATE INDEX notifications_user ON notifications (user_id, id);

-- The event log. `id` is the event_id, taken from event_counter inside the writing transaction.
CREATE TABLE events (
    id BIGINT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    station_id BIGINT,
    user_id BIGINT,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX events_created ON events (created_at);

CREATE TABLE event_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_id BIGINT NOT NULL
);
INSERT INTO event_counter (id, last_id) VALUES (1, 0);

CREATE TABLE refresh_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id),
    token_hash TEXT NOT NULL UNIQUE,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE idempotency_keys (
    user_id BIGINT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, idem_key)
);
CREATE INDEX idempotency_created ON idempotency_keys (created_at);

CREATE TABLE settings (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
