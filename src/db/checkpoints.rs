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
//! next one start the log from the beginning. That alone does not bound the log: on a large
//! database under sustained writes a passive checkpoint can take seconds, and the writer appends
//! meanwhile (an outside attack saw 440 MB). So the writer bounds it too ([`Checkpointer::bound`]):
//! after a batch, a log file past [`WRITER_LIMIT`] bytes makes the writer wait for the thread's
//! checkpoint, then checkpoint all of the log and truncate it, before it takes the next batch — the old stall, but only when the thread beside it
//! falls that far behind. The file is not cut back when the log starts over (SQLite overwrites it
//! in place, cheaper than growing it again), so its size is the log's largest extent since the
//! writer last truncated it: that is what the writer compares with the limit.

use std::path::{Path, PathBuf};
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

/// A log file past this makes the writer checkpoint and truncate it itself (256 MiB).
pub const WRITER_LIMIT: u64 = 256 << 20;

/// How long the writer waits, at most, for its checkpoint of a log that outgrew the limit.
const WRITER_WAIT: Duration = Duration::from_secs(10);

/// What the writer's connection runs: its commits never checkpoint.
pub fn writer_pragmas() -> String {
    "PRAGMA wal_autocheckpoint = 0".to_owned()
}

/// What `PRAGMA wal_checkpoint` reports: pages in the log, and how many of them are now in the
/// database file.
#[derive(diesel::QueryableByName, Debug)]
struct Checkpointed {
    /// 1 when the checkpoint could not complete (another one held the log, or a reader did).
    #[diesel(sql_type = diesel::sql_types::Integer)]
    busy: i32,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    log: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    checkpointed: i64,
}

/// The thread checkpointing beside the writer; it stops when this is dropped (when the writer's
/// thread ends).
pub struct Checkpointer {
    _stop: mpsc::Sender<()>,
    /// The log file, `<database>-wal`.
    wal: PathBuf,
}

/// Starts the checkpointer of the SQLite database at `path`.
pub fn start(manager: &Manager, path: &str) -> anyhow::Result<Checkpointer> {
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
    Ok(Checkpointer {
        _stop: stop,
        wal: PathBuf::from(format!("{path}-wal")),
    })
}

impl Checkpointer {
    /// Called by the writer between batches: if the log file has grown past [`WRITER_LIMIT`],
    /// checkpoints all of it and truncates it, on the writer's connection.
    pub fn bound(&self, conn: &mut DbConn) {
        bound(conn, &self.wal, WRITER_LIMIT);
    }
}

fn bound(conn: &mut DbConn, wal: &Path, limit: u64) {
    // A database without a log file (in memory) has nothing to bound.
    let Ok(size) = std::fs::metadata(wal).map(|m| m.len()) else {
        return;
    };
    if size <= limit {
        return;
    }
    tracing::warn!(
        bytes = size,
        "the WAL outgrew its checkpoints; checkpointing it on the writer"
    );
    // Another checkpoint under way (the thread's, which can take seconds) makes this one fail at
    // once, without the busy handler: wait for it — writing nothing meanwhile, which is the point.
    let deadline = std::time::Instant::now() + WRITER_WAIT;
    loop {
        match diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)").load::<Checkpointed>(conn) {
            Ok(done) if done.first().is_some_and(|c| c.busy == 0) => return,
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "the writer's WAL checkpoint could not run yet"),
        }
        if std::time::Instant::now() > deadline {
            tracing::warn!("the writer's WAL checkpoint did not complete; trying again after the next batch");
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
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

    /// A database whose writer (with the writer's pragmas) committed `pages` pages of rows one
    /// by one; its manager, the writer's connection, and the log file's path.
    fn grown_log(pages: usize) -> (tempfile::TempDir, Manager, DbConn, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db").display().to_string();
        let manager = Manager {
            target: Target::parse(&path),
        };
        let mut writer = manager.connect().unwrap();
        writer.batch_execute(&writer_pragmas()).unwrap();
        writer.batch_execute("CREATE TABLE t (b BLOB)").unwrap();
        for _ in 0..pages {
            writer.batch_execute("INSERT INTO t VALUES (zeroblob(4000))").unwrap();
        }
        (dir, manager, writer, PathBuf::from(format!("{path}-wal")))
    }

    /// The writer's commits leave the log growing past SQLite's 1,000-page default; one pass of
    /// the checkpointer copies all of it back.
    #[test]
    fn the_writer_leaves_checkpoints_to_the_checkpointer() {
        let (_dir, manager, _writer, wal) = grown_log(1_500);
        let wal = std::fs::metadata(wal).unwrap().len();
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

    /// A log that outgrew the checkpoints: the writer checkpoints all of it and truncates the
    /// file; one within the limit is left alone.
    #[test]
    fn the_writer_bounds_a_log_the_checkpointer_let_grow() {
        let (_dir, _manager, mut writer, wal) = grown_log(500);
        let grown = std::fs::metadata(&wal).unwrap().len();
        assert!(grown > 500 * 4_096, "{grown}");
        bound(&mut writer, &wal, grown + 1);
        assert_eq!(
            std::fs::metadata(&wal).unwrap().len(),
            grown,
            "within the limit: left alone"
        );
        bound(&mut writer, &wal, grown - 1);
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0, "past the limit: truncated");
        let rows: Vec<Checkpointed> = diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)")
            .load(&mut writer)
            .unwrap();
        assert_eq!(rows[0].log, 0, "{rows:?}");
    }
}
