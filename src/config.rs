//! Settings from environment variables and the same CLI flags (CONTRACT §7).
//!
//! Every limit is a named default here, documented where it is declared, and read once at start.
//! Tests build [`Settings::default`] and override fields; the binary parses them with clap.

use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};

use crate::domain::bookings::BookingRules;

/// How logs are written: for people (the default) or one JSON object per line, for collectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `cargo run --release` with no setup: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://swapcast.db";
pub const DEFAULT_BIND: &str = "127.0.0.1:8000";
/// Access tokens are short-lived; refresh tokens (rotated on every use) carry the session.
pub const DEFAULT_ACCESS_TTL_SECS: u64 = 15 * 60;
pub const DEFAULT_REFRESH_TTL_SECS: u64 = 30 * 24 * 3600;
/// A booking not collected within this many seconds expires and frees its battery.
pub const DEFAULT_BOOKING_HOLD_SECS: u64 = 900;
/// Live bookings one driver may hold at once: two, as a two-battery scooter needs (0 = no limit).
pub const DEFAULT_MAX_ACTIVE_BOOKINGS: u32 = 2;
/// A charging battery whose state of charge reaches this percentage becomes available.
pub const DEFAULT_CHARGED_SOC: i32 = 95;
/// Events stay in the log at least this long, so reconnecting clients can resume.
pub const DEFAULT_EVENT_RETENTION_SECS: u64 = 24 * 3600;
pub const DEFAULT_HEARTBEAT_SECS: u64 = 15;
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
pub const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 20;
pub const DEFAULT_SEND_QUEUE: usize = 1024;
/// Seconds a closed WebSocket waits for its client to read the Close and hang up.
pub const DEFAULT_CLOSE_LINGER_SECS: u64 = 2;
/// Failed sign-ins for one account within 15 minutes before its sign-ins are refused (429).
pub const DEFAULT_LOGIN_ATTEMPTS: u32 = 10;

#[derive(Args, Clone, Debug)]
pub struct Settings {
    /// `sqlite://path/to/file.db` (default) or `postgres://user@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    pub database_url: String,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long = "bind", env = "SWAPCAST_BIND", default_value = DEFAULT_BIND, global = true)]
    pub bind: String,

    /// HS256 signing secret. Without it one is generated on first start and kept in the database.
    #[arg(
        long = "jwt-secret",
        env = "SWAPCAST_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<String>,

    /// Enables the cluster backplane.
    #[arg(long = "nats-url", env = "SWAPCAST_NATS_URL", global = true)]
    pub nats_url: Option<String>,

    /// Whether anonymous clients may read stations and station feeds.
    #[arg(long = "public-feeds", env = "SWAPCAST_PUBLIC_FEEDS", default_value_t = true,
          action = ArgAction::Set, global = true)]
    pub public_feeds: bool,

    /// Extra origins (comma-separated) allowed to open cookie-authenticated WebSockets.
    #[arg(
        long = "allowed-origins",
        env = "SWAPCAST_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub allowed_origins: Vec<String>,

    /// Seconds.
    #[arg(long = "access-ttl", env = "SWAPCAST_ACCESS_TTL", default_value_t = DEFAULT_ACCESS_TTL_SECS, global = true)]
    pub access_ttl: u64,

    /// Seconds.
    #[arg(long = "refresh-ttl", env = "SWAPCAST_REFRESH_TTL", default_value_t = DEFAULT_REFRESH_TTL_SECS, global = true)]
    pub refresh_ttl: u64,

    /// Seconds.
    #[arg(long = "booking-hold", env = "SWAPCAST_BOOKING_HOLD", default_value_t = DEFAULT_BOOKING_HOLD_SECS, global = true)]
    pub booking_hold: u64,

    /// Live (confirmed or ready) bookings per driver; 0 = no limit.
    #[arg(long = "max-active-bookings", env = "SWAPCAST_MAX_ACTIVE_BOOKINGS",
          default_value_t = DEFAULT_MAX_ACTIVE_BOOKINGS, global = true)]
    pub max_active_bookings: u32,

    /// Percent.
    #[arg(long = "charged-soc", env = "SWAPCAST_CHARGED_SOC", default_value_t = DEFAULT_CHARGED_SOC,
          value_parser = clap::value_parser!(i32).range(0..=100), global = true)]
    pub charged_soc: i32,

    /// Seconds.
    #[arg(long = "event-retention", env = "SWAPCAST_EVENT_RETENTION", default_value_t = DEFAULT_EVENT_RETENTION_SECS, global = true)]
    pub event_retention: u64,

    /// Seconds.
    #[arg(long = "heartbeat", env = "SWAPCAST_HEARTBEAT", default_value_t = DEFAULT_HEARTBEAT_SECS, global = true)]
    pub heartbeat: u64,

    /// Bytes.
    #[arg(long = "max-frame", env = "SWAPCAST_MAX_FRAME", default_value_t = DEFAULT_MAX_FRAME_BYTES, global = true)]
    pub max_frame: usize,

    /// Client messages per second.
    #[arg(long = "rate-limit", env = "SWAPCAST_RATE_LIMIT", default_value_t = DEFAULT_RATE_LIMIT_PER_SEC, global = true)]
    pub rate_limit: u32,

    /// Failed sign-ins per account per 15 minutes; 0 = no throttle.
    #[arg(long = "login-attempts", env = "SWAPCAST_LOGIN_ATTEMPTS", default_value_t = DEFAULT_LOGIN_ATTEMPTS, global = true)]
    pub login_attempts: u32,

    /// WebSocket connections one peer address may hold; 0 = no limit.
    #[arg(
        long = "max-connections-per-ip",
        env = "SWAPCAST_MAX_CONNECTIONS_PER_IP",
        default_value_t = 0,
        global = true
    )]
    pub max_connections_per_ip: usize,

    /// Seconds.
    #[arg(long = "close-linger", env = "SWAPCAST_CLOSE_LINGER", default_value_t = DEFAULT_CLOSE_LINGER_SECS, global = true)]
    pub close_linger: u64,

    /// Messages.
    #[arg(long = "send-queue", env = "SWAPCAST_SEND_QUEUE", default_value_t = DEFAULT_SEND_QUEUE, global = true)]
    pub send_queue: usize,

    /// `human` or `json`.
    #[arg(long = "log-format", env = "SWAPCAST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,

    /// This node's name in metrics and stats (default: host name and process id).
    #[arg(long = "node-id", env = "SWAPCAST_NODE_ID", global = true)]
    pub node_id: Option<String>,

    /// Database connections in the pool (default: 8 for SQLite, 16 for PostgreSQL).
    #[arg(long = "db-pool-size", env = "SWAPCAST_DB_POOL_SIZE", global = true)]
    pub db_pool_size: Option<u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            bind: DEFAULT_BIND.to_owned(),
            jwt_secret: None,
            nats_url: None,
            public_feeds: true,
            allowed_origins: Vec::new(),
            access_ttl: DEFAULT_ACCESS_TTL_SECS,
            refresh_ttl: DEFAULT_REFRESH_TTL_SECS,
            booking_hold: DEFAULT_BOOKING_HOLD_SECS,
            max_active_bookings: DEFAULT_MAX_ACTIVE_BOOKINGS,
            charged_soc: DEFAULT_CHARGED_SOC,
            event_retention: DEFAULT_EVENT_RETENTION_SECS,
            heartbeat: DEFAULT_HEARTBEAT_SECS,
            max_frame: DEFAULT_MAX_FRAME_BYTES,
            rate_limit: DEFAULT_RATE_LIMIT_PER_SEC,
            send_queue: DEFAULT_SEND_QUEUE,
            login_attempts: DEFAULT_LOGIN_ATTEMPTS,
            close_linger: DEFAULT_CLOSE_LINGER_SECS,
            max_connections_per_ip: 0,
            db_pool_size: None,
            node_id: None,
            log_format: LogFormat::Human,
        }
    }
}

impl Settings {
    /// What a booking request is held to.
    pub fn booking_rules(&self) -> BookingRules {
        BookingRules {
            hold: Duration::from_secs(self.booking_hold),
            max_active: self.max_active_bookings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    #[test]
    fn flags_override_defaults() {
        let cli = Cli::parse_from(["swapcast", "--booking-hold", "5", "--public-feeds", "false"]);
        assert_eq!(cli.settings.booking_hold, 5);
        assert!(!cli.settings.public_feeds);
    }

    #[test]
    fn drivers_hold_two_bookings_unless_told_otherwise() {
        assert_eq!(Cli::parse_from(["swapcast"]).settings.booking_rules().max_active, 2);
        let unlimited = Cli::parse_from(["swapcast", "--max-active-bookings", "0"]);
        assert_eq!(unlimited.settings.booking_rules().max_active, 0);
        assert!(Cli::try_parse_from(["swapcast", "--max-active-bookings", "-1"]).is_err());
    }

    #[test]
    fn charged_soc_is_a_percentage() {
        assert!(Cli::try_parse_from(["swapcast", "--charged-soc", "101"]).is_err());
    }
}
