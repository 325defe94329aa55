//! The database's one writer per process: a thread of its own with a connection of its own, which
//! takes the changes queued for it in batches — whatever is waiting when it is free — and hands
//! each batch to the group commit ([`crate::domain::commit`]).
//!
//! One commit, one fsync, for a batch instead of one per change, and on SQLite (which lets one
//! transaction write at a time) no parked writer threads to wake and a page cache kept warm. On
//! PostgreSQL every event-producing transaction of the deployment takes the event counter's row
//! first, so writers are serial there too; batching is what makes that cheap. Reads use the pool's readers ([`super::readers`]).

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use diesel::r2d2::ManageConnection;

use diesel::connection::SimpleConnection;

use super::{checkpoints, DbConn, Manager, Target};
use crate::error::{Error, Result};

/// Changes waiting for the writer beyond this are refused (503) rather than queued without end.
const QUEUE: usize = 4096;

/// At most this many changes share one transaction: a batch stays short, and a change that came
/// in behind a full one waits for one more commit at most.
pub const MAX_BATCH: usize = 256;

/// What the writer queues: a change that can be refused without running.
pub trait Job: Send + 'static {
    /// The database cannot be reached: answer without running.
    fn refuse(self, error: Error);
}

pub struct Writer<J> {
    jobs: mpsc::SyncSender<J>,
}

impl<J> Clone for Writer<J> {
    fn clone(&self) -> Self {
        Writer {
            jobs: self.jobs.clone(),
        }
    }
}

impl<J: Job> Writer<J> {
    /// Starts the writer of this database; `batch` runs each batch on the writer's connection and
    /// says whether the database failed it as a whole (then the connection is checked, and opened
    /// again when it was lost). A panic in `batch` drops its jobs (their callers hear of an
    /// internal error) and the writer goes on with a clean connection.
    ///
    /// `batch` gets the jobs waiting when the batch began, and a source of those queued since (up
    /// to [`MAX_BATCH`] in all) to take once it holds the turn to write: on PostgreSQL the wait
    /// for another node's batch then fills this one instead of the next.
    pub fn start(
        database_url: &str,
        mut batch: impl FnMut(&mut DbConn, Vec<J>, &mut dyn FnMut() -> Option<J>) -> Result<()> + Send + 'static,
    ) -> anyhow::Result<Writer<J>> {
        let manager = Manager {
            target: Target::parse(database_url),
        };
        let mut conn = Some(open(&manager)?);
        // On SQLite, checkpoints run beside the writer, not in its commits.
        let checkpointer = match &manager.target {
            Target::Sqlite(path) => Some(checkpoints::start(&manager, path)?),
            Target::Postgres(_) => None,
        };
        let (jobs, queue) = mpsc::sync_channel::<J>(QUEUE);
        std::thread::Builder::new().name("db-writer".into()).spawn(move || {
            // Ends when every `Writer` handle is gone.
            while let Ok(first) = queue.recv() {
                let mut jobs = vec![first];
                while jobs.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                if conn.is_none() {
                    conn = reconnect(&manager);
                }
                let Some(open) = conn.as_mut() else {
                    for job in jobs {
                        job.refuse(Error::Unavailable("the database is unreachable".into()));
                    }
                    continue;
                };
                let mut taken = jobs.len();
                let mut more = || {
                    if taken >= MAX_BATCH {
                        return None;
                    }
                    let job = queue.try_recv().ok()?;
                    taken += 1;
                    Some(job)
                };
                match std::panic::catch_unwind(AssertUnwindSafe(|| batch(open, jobs, &mut more))) {
                    Ok(Ok(())) => {
                        if let Some(checkpointer) = &checkpointer {
                            checkpointer.bound(open);
                        }
                    }
                    Ok(Err(_)) => {
                        if manager.is_valid(open).is_err() || manager.has_broken(open) {
                            conn = reconnect(&manager);
                        }
                    }
                    Err(_) => conn = conn.take().and_then(|taken| recover(&manager, taken)),
                }
            }
        })?;
        Ok(Writer { jobs })
    }

    /// Queues a job; refused at once (503) when too many are waiting.
    pub fn submit(&self, job: J) -> Result<()> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => Error::Unavailable("too many changes waiting for the database".into()),
            mpsc::TrySendError::Disconnected(_) => Error::Internal(anyhow::anyhow!("the database writer stopped")),
        })
    }
}

/// The writer's connection: on SQLite, one whose commits never checkpoint ([`checkpoints`]).
fn open(manager: &Manager) -> anyhow::Result<DbConn> {
    let mut conn = manager.connect()?;
    if let DbConn::Sqlite(_) = conn {
        conn.batch_execute(&checkpoints::writer_pragmas())?;
    }
    Ok(conn)
}

fn reconnect(manager: &Manager) -> Option<DbConn> {
    match open(manager) {
        Ok(fresh) => Some(fresh),
        Err(e) => {
            tracing::error!(error = %e, "cannot open the database for writing");
            None
        }
    }
}

/// After a batch panicked mid-transaction: roll it back, or start over with a new connection.
fn recover(manager: &Manager, mut conn: DbConn) -> Option<DbConn> {
    use diesel::connection::TransactionManager;
    tracing::error!("a database change panicked; rolling it back");
    let clean =
        match <DbConn as TransactionManager<DbConn>>::transaction_manager_status_mut(&mut conn).transaction_depth() {
            Ok(None) => true,
            _ => <DbConn as TransactionManager<DbConn>>::rollback_transaction(&mut conn).is_ok(),
        };
    if clean && !manager.has_broken(&mut conn) {
        return Some(conn);
    }
    reconnect(manager).or(Some(conn))
}
