//! Written by hand (not by `diesel print-schema`): it must describe both the SQLite and the
//! PostgreSQL migrations, so it only uses column types the two share.

diesel::table! {
    users (id) {
        id -> BigInt,
        email -> Text,
        display_name -> Text,
        role -> Text,
        password_hash -> Text,
        active -> Bool,
        created_at -> BigInt,
        active_bookings -> Integer,
    }
}

diesel::table! {
    stations (id) {
        id -> BigInt,
        name -> Text,
        address -> Nullable<Text>,
        status -> Text,
        operator_id -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
        available_batteries -> Integer,
        booked_batteries -> Integer,
        charging_batteries -> Integer,
        total_batteries -> Integer,
    }
}

diesel::table! {
    batteries (id) {
        id -> BigInt,
        station_id -> BigInt,
        serial -> Text,
        model -> Text,
        status -> Text,
        soc -> Integer,
        soh -> Integer,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    bookings (id) {
        id -> BigInt,
        user_id -> BigInt,
        station_id -> BigInt,
        battery_id -> BigInt,
        status -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        expires_at -> BigInt,
        ready_at -> Nullable<BigInt>,
        collected_at -> Nullable<BigInt>,
        cancelled_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    notifications (id) {
        id -> BigInt,
        user_id -> BigInt,
        title -> Text,
        message -> Text,
        level -> Text,
        created_at -> BigInt,
        read_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    events (id) {
        id -> BigInt,
        kind -> Text,
        station_id -> Nullable<BigInt>,
        user_id -> Nullable<BigInt>,
        payload -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    event_counter (id) {
        id -> Integer,
        last_id -> BigInt,
        stations_revision -> BigInt,
    }
}

diesel::table! {
    refresh_tokens (id) {
        id -> BigInt,
        user_id -> BigInt,
        token_hash -> Text,
        expires_at -> BigInt,
        created_at -> BigInt,
        session_id -> Nullable<BigInt>,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    sign_in_sessions (id) {
        id -> BigInt,
        user_id -> BigInt,
        created_at -> BigInt,
        ended_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    idempotency_keys (user_id, idem_key) {
        user_id -> BigInt,
        idem_key -> Text,
        request_hash -> Text,
        status -> Integer,
        body -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    settings (name) {
        name -> Text,
        value -> Text,
    }
}

diesel::joinable!(batteries -> stations (station_id));
diesel::joinable!(bookings -> users (user_id));
diesel::joinable!(notifications -> users (user_id));
diesel::joinable!(refresh_tokens -> users (user_id));
diesel::joinable!(refresh_tokens -> sign_in_sessions (session_id));
diesel::joinable!(sign_in_sessions -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    stations,
    batteries,
    bookings,
    notifications,
    events,
    event_counter,
    sign_in_sessions,
    refresh_tokens,
    idempotency_keys,
    settings,
);
