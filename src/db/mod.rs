//! Storage: one connection type over SQLite and PostgreSQL, the pool, migrations, and the two
//! helpers every database call goes through ([`run`] moves work off the async threads, [`write`]
//! opens the one transaction of a change).

mod checkpoints;
pub mod models;
mod readers;
pub mod schema;
pub mod writer;

use std::time::Duration;

use anyhow::Context;
use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::r2d2::{self, ManageConnection};
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error::{Error, Result};

diesel::define_sql_function! {
    /// Lower case by Unicode's rules on both backends, for case-insensitive search: PostgreSQL's
    /// `lower` (migration 7), and on SQLite — whose `lower` knows ASCII only — Rust's, registered
    /// on every connection.
    #[sql_name = "swapcast_lower"]
    fn unicode_lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// The same domain code runs on both backends; only migrations and a few statements differ.
#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Sqlite(SqliteConnection),
    Pg(PgConnection),
}

/// The connections, and the threads reads run on ([`readers`]).
#[derive(Clone)]
pub struct Pool {
    connections: r2d2::Pool<Manager>,
    readers: readers::Readers,
}

impl Pool {
    /// A connection for work already off the async threads (startup, the CLI).
    pub fn get(&self) -> std::result::Result<r2d2::PooledConnection<Manager>, r2d2::PoolError> {
        self.connections.get()
    }

    /// How many connections are open and idle, for the metrics.
    pub fn state(&self) -> r2d2::State {
        self.connections.state()
    }
}

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// How long a SQLite writer waits for the file lock before giving up (then: 503, retry).
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;
/// How long a request waits for a free pooled connection before answering 503.
const POOL_CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Any fixed number: the PostgreSQL advisory lock that keeps two starting nodes from migrating at once.
const MIGRATION_LOCK_KEY: i64 = 0x5357_4150_4341_5354;

/// Where the data lives, parsed from `DATABASE_URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Sqlite(String),
    Postgres(String),
}

impl Target {
    pub fn parse(url: &str) -> Target {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Target::Postgres(url.to_owned())
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            Target::Sqlite(path.to_owned())
        }
    }
}

/// An r2d2 manager that picks the backend from the URL itself. diesel's generic manager would try
/// each backend in turn and hide why PostgreSQL was unreachable behind "Invalid connection url".
#[derive(Debug)]
pub struct Manager {
    target: Target,
}

impl ManageConnection for Manager {
    type Connection = DbConn;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConn, r2d2::Error> {
        match &self.target {
            Target::Postgres(url) => PgConnection::establish(url)
                .map(DbConn::Pg)
                .map_err(r2d2::Error::ConnectionError),
            Target::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(path).map_err(r2d2::Error::ConnectionError)?;
                // busy_timeout must come before the switch to WAL, or a second pool sees "database is locked".
                // synchronous = FULL: a commit is on disk before it is answered (in WAL mode NORMAL
                // may lose the last commits on power loss — and a 201 promises the change stands).
                // temp_store = MEMORY: the group commit's savepoints journal the pages each change
                // touches; in a temporary file that was most of the writer's system calls.
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;"
                ))
                .map_err(r2d2::Error::QueryError)?;
                unicode_lower_utils::register_impl(&mut conn, |text: String| text.to_lowercase())
                    .map_err(r2d2::Error::QueryError)?;
                Ok(DbConn::Sqlite(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), r2d2::Error> {
        conn.batch_execute("SELECT 1").map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        // A connection handed back mid-transaction (a panic inside a closure) must not be reused.
        <DbConn as TransactionManager<DbConn>>::is_broken_transaction_manager(conn)
    }
}

/// Builds the pool, failing with the backend's own message when the database cannot be reached.
pub fn connect(database_url: &str, size: Option<u32>) -> anyhow::Result<Pool> {
    let target = Target::parse(database_url);
    let default_size = match target {
        Target::Sqlite(_) => 8,
        Target::Postgres(_) => 16,
    };
    let manager = Manager { target: target.clone() };
    // Connect once directly so an unreachable server is reported as what it is.
    manager
        .connect()
        .with_context(|| format!("cannot open the database ({})", redact(database_url)))?;
    let connections = r2d2::Pool::builder()
        .max_size(size.unwrap_or(default_size))
        .connection_timeout(POOL_CHECKOUT_TIMEOUT)
        .build(manager)
        .context("cannot build the database pool")?;
    let readers = readers::Readers::start(&connections).context("cannot start the database readers")?;
    Ok(Pool { connections, readers })
}

/// The URL without its credentials, for messages and logs (database and NATS URLs alike): a
/// password goes; a user part without one may itself be the secret (a NATS token), so it goes too.
pub fn redact(url: &str) -> String {
    // Several servers in one NATS URL: each on its own.
    if url.contains(',') {
        return url.split(',').map(redact).collect::<Vec<_>>().join(",");
    }
    // Credentials in the query string (`?password=…`, `sslpassword`, `token`) go too.
    if let Some((base, query)) = url.split_once('?') {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _))
                    if ["pass", "token", "secret", "key"]
                        .iter()
                        .any(|s| key.to_ascii_lowercase().contains(s)) =>
                {
                    format!("{key}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        return format!("{}?{}", redact(base), masked.join("&"));
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = match userinfo.split_once(':') {
                Some((user, _password)) => user,
                None => "***",
            };
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Applies the embedded migrations of the connection's backend.
pub fn migrate(conn: &mut DbConn) -> anyhow::Result<()> {
    let result = match conn {
        DbConn::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|_| ()),
        DbConn::Pg(c) => {
            c.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))?;
            let applied = c.run_pending_migrations(PG_MIGRATIONS).map(|_| ());
            c.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))?;
            applied
        }
    };
    result.map_err(|e| anyhow::anyhow!("migration failed: {e}"))
}

/// Runs blocking database work on one of the pool's readers, never on the async threads.
pub async fn run<T, F>(pool: &Pool, f: F) -> Result<T>
where
    F: FnOnce(&mut DbConn) -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    pool.readers.run(f).await
}

/// Runs `f` in one write transaction. On SQLite it begins `IMMEDIATE`, taking the write lock up
/// front: a deferred transaction that reads first and writes later fails with SQLITE_BUSY (without
/// waiting) when another writer committed in between, which would turn ordinary contention into
/// errors.
///
/// SQLite writers of this process also queue on [`SQLITE_WRITER`] first: SQLite has one writer
/// at a time anyway, and a writer that finds the file locked polls with growing sleeps (its busy
/// handler), which under contention wastes most of the time the lock is free. A mutex hands it
/// over at once. (Other processes on the same file still meet the busy handler.)
pub fn write<T>(conn: &mut DbConn, f: impl FnOnce(&mut DbConn) -> Result<T>) -> Result<T> {
    match conn {
        DbConn::Sqlite(_) => {
            // A writer that panicked left nothing half-done here: its transaction rolled back.
            let _turn = SQLITE_WRITER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            transaction(conn, "BEGIN IMMEDIATE", "BEGIN", f)
        }
        DbConn::Pg(_) => transaction(conn, "BEGIN IMMEDIATE", "BEGIN", f),
    }
}

/// The turn to write to SQLite, for every database file this process has open (one, but for
/// tests; serializing their writes together costs them nothing noticeable).
static SQLITE_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` in one read-only transaction that sees a single snapshot of the database, so related
/// reads (the newest event id and the inventory it produced) agree with each other.
pub fn read_consistent<T>(conn: &mut DbConn, f: impl FnOnce(&mut DbConn) -> Result<T>) -> Result<T> {
    transaction(conn, "BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", f)
}

fn transaction<T>(
    conn: &mut DbConn,
    sqlite_begin: &str,
    pg_begin: &str,
    f: impl FnOnce(&mut DbConn) -> Result<T>,
) -> Result<T> {
    match conn {
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, sqlite_begin)?,
        DbConn::Pg(c) => AnsiTransactionManager::begin_transaction_sql(c, pg_begin)?,
    }
    match f(conn) {
        Ok(value) => {
            <DbConn as TransactionManager<DbConn>>::commit_transaction(conn)?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = <DbConn as TransactionManager<DbConn>>::rollback_transaction(conn) {
                // The pool discards the connection (`has_broken`); the caller's error is the one to report.
                tracing::warn!(error = %rollback, "rollback failed");
            }
            Err(e)
        }
    }
}

/// Maps a unique-constraint failure on an insert to the contract's 409 with a specific code.
pub fn on_unique_violation(code: &'static str, message: &'static str) -> impl Fn(diesel::result::Error) -> Error {
    move |e| match e {
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _) => {
            Error::conflict(code, message)
        }
        other => other.into(),
    }
}

/// A value kept in the `settings` table, created by `fresh` on first use. Two nodes starting
/// together both try to insert; the loser reads the winner's.
pub fn stored_setting(conn: &mut DbConn, name: &str, fresh: impl FnOnce() -> String) -> Result<String> {
    use diesel::prelude::*;
    use schema::settings;
    let existing = settings::table
        .find(name)
        .select(settings::value)
        .first::<String>(conn)
        .optional()?;
    if let Some(value) = existing {
        return Ok(value);
    }
    let fresh = fresh();
    let inserted = diesel::insert_into(settings::table)
        .values((settings::name.eq(name), settings::value.eq(&fresh)))
        .execute(conn);
    match inserted {
        Ok(_) => Ok(fresh),
        Err(_) => Ok(settings::table.find(name).select(settings::value).first(conn)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_backend() {
        assert_eq!(Target::parse("sqlite://a/b.db"), Target::Sqlite("a/b.db".into()));
        assert_eq!(Target::parse("sqlite:b.db"), Target::Sqlite("b.db".into()));
        assert_eq!(Target::parse("plain.db"), Target::Sqlite("plain.db".into()));
        assert!(matches!(Target::parse("postgres://u@h/d"), Target::Postgres(_)));
        assert!(matches!(Target::parse("postgresql://u@h/d"), Target::Postgres(_)));
    }

    #[test]
    fn sqlite_commits_are_durable_before_they_are_answered() {
        use diesel::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Synchronous {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            synchronous: i32,
        }
        let dir = tempfile::tempdir().unwrap();
        let manager = Manager {
            target: Target::Sqlite(dir.path().join("d.db").display().to_string()),
        };
        let mut conn = manager.connect().unwrap();
        let rows: Vec<Synchronous> = diesel::sql_query("PRAGMA synchronous").load(&mut conn).unwrap();
        // 2 = FULL: the WAL is synced at every commit.
        assert_eq!(rows[0].synchronous, 2);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://bob:hunter2@db:5432/x"), "postgres://bob@db:5432/x");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(redact("nats://svc:s3cret@nats:4222"), "nats://svc@nats:4222");
        // A token as the whole user part is a credential too.
        assert_eq!(redact("nats://s3cr3t-token@nats:4222"), "nats://***@nats:4222");
        assert_eq!(
            redact("postgresql://db/x?user=u&password=s3cret&sslmode=require"),
            "postgresql://db/x?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            redact("nats://a:pw@n1:4222,nats://b:pw2@n2:4222"),
            "nats://a@n1:4222,nats://b@n2:4222"
        );
    }
}
