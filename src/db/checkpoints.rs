//! SQLite's WAL checkpoints, off the writer's commit path.
//!
//! By default the connection whose commit takes the WAL past 1,000 pages copies them back into the
//! database file and syncs it before its commit returns: on the writer, a stall of every change
//! queued behind that batch — and on a large network (bookings spread over a 200 MB file, each
//! checkpoint writing a thousand distinct pages) most of the tail of the booking latency. So the
//! writer's connection never checkpoints; a thread of its own does, every [`EVERY`], in `PASSIVE`
//! mode: it copies what no reader still needs and never blocks the writer.
//!
//! Under writes that never pause, a passive checkpoint never catches up with the end of the log,
//! and SQLite starts the log over only once one has: past [`RESTART_FRAMES`] the checkpointer
//! does a `RESTART` checkpoint, which waits for the writer's current transaction and lets the
//! next one start the log from the beginning, so the WAL file stays bounded.

use std::sync::mpsc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::ManageConnection;
use diesel::RunQueryDsl;

use super::{DbConn, Manager};

/// How often the checkpointer looks at the log.
const EVERY: Duration = Duration::from_millis(100);

/// Log pages past which the checkpointer starts the log over (about 40 MB of 4 KiB pages).
const RESTART_FRAMES: i64 = 10_000;

/// What the writer's connection runs so that its commits never checkpoint.
pub const WRITER_PRAGMA: &str = "PRAGMA wal_autocheckpoint = 0";

/// What `PRAGMA wal_checkpoint` reports: pages in the log, and how many of them are now in the
/// database file.
#[derive(diesel::QueryableByName, Debug)]
struct Checkpointed {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    log: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    checkpointed: i64,
}

/// Starts the checkpointer of an SQLite database; it stops when the returned sender is dropped
/// (when the writer's thread ends).
pub fn start(manager: &Manager) -> anyhow::Result<mpsc::Sender<()>> {
    let mut conn = manager.connect()?;
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("db-checkpoint".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
                if let Err(e) = checkpoint(&mut conn) {
                    tracing::warn!(error = %e, "a WAL checkpoint failed; trying again later");
                }
            }
        })?;
    Ok(stop)
}

fn checkpoint(conn: &mut DbConn) -> diesel::QueryResult<()> {
    let passive: Vec<Checkpointed> = diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").load(conn)?;
    if let Some(now) = passive.first().filter(|c| c.log > RESTART_FRAMES) {
        tracing::debug!(log = now.log, checkpointed = now.checkpointed, "starting the WAL over");
        conn.batch_execute("PRAGMA wal_checkpoint(RESTART)")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Target;

    /// The writer's commits leave the log growing past SQLite's 1,000-page default; one pass of
    /// the checkpointer copies all of it back.
    #[test]
    fn the_writer_leaves_checkpoints_to_the_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db").display().to_string();
        let manager = Manager {
            target: Target::parse(&path),
        };
        let mut writer = manager.connect().unwrap();
        writer.batch_execute(WRITER_PRAGMA).unwrap();
        writer.batch_execute("CREATE TABLE t (b BLOB)").unwrap();
        for _ in 0..1_500 {
            writer.batch_execute("INSERT INTO t VALUES (zeroblob(4000))").unwrap();
        }
        let wal = std::fs::metadata(format!("{path}-wal")).unwrap().len();
        assert!(wal > 1_500 * 4_096, "the writer checkpointed: the log is {wal} bytes");
        let mut checkpointer = manager.connect().unwrap();
        checkpoint(&mut checkpointer).unwrap();
        let after: Vec<Checkpointed> = diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)")
            .load(&mut checkpointer)
            .unwrap();
        assert!(
            after[0].log >= 1_500 && after[0].checkpointed == after[0].log,
            "{after:?}"
        );
    }
}
