//! SQLite's one writer: a thread of its own with a connection of its own, running the changes
//! sent to it one after another.
//!
//! SQLite lets one transaction write at a time. With writes spread over the pool, every waiting
//! writer is a parked thread to wake (a context switch per hand-over), and every commit empties
//! the page cache of the pool's other connections, which then read pages back from the file. One
//! writer thread takes its queue back to back and keeps its cache warm. Reads still use the pool.
//! PostgreSQL has no such limit; there, changes run on the pool as before.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use diesel::r2d2::ManageConnection;
use tokio::sync::oneshot;

use super::{DbConn, Manager, Target};
use crate::error::{Error, Result};

/// Changes waiting for the writer beyond this are refused (503) rather than queued without end.
const QUEUE: usize = 4096;

type Job = Box<dyn FnOnce(&mut DbConn) + Send>;

#[derive(Clone, Debug)]
pub struct Writer {
    jobs: mpsc::SyncSender<Job>,
}

impl Writer {
    /// The writer of a SQLite database, or `None` for PostgreSQL.
    pub fn start(database_url: &str) -> anyhow::Result<Option<Writer>> {
        let target = Target::parse(database_url);
        if !matches!(target, Target::Sqlite(_)) {
            return Ok(None);
        }
        let manager = Manager { target };
        let mut conn = manager.connect()?;
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                // Ends when every `Writer` handle is gone.
                for job in queue {
                    if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_err() {
                        conn = recover(&manager, conn);
                    }
                }
            })?;
        Ok(Some(Writer { jobs }))
    }

    /// Runs `f` on the writer's connection and waits for its result without blocking the caller's
    /// thread. A panic in `f` is an internal error, and the writer goes on with a clean connection.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut DbConn) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let span = tracing::Span::current();
        let job: Job = Box::new(move |conn| {
            let _entered = span.enter();
            // A panic in `f` drops `done`: the caller hears of it as a dropped change.
            let outcome = f(conn);
            // The caller may have gone (its request was abandoned); the change stands regardless.
            let _ = done.send(outcome);
        });
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => Error::Unavailable("too many changes waiting for the database".into()),
            mpsc::TrySendError::Disconnected(_) => Error::Internal(anyhow::anyhow!("the database writer stopped")),
        })?;
        result
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("the database writer dropped a change")))?
    }
}

/// After a change panicked mid-transaction: roll it back, or start over with a new connection.
fn recover(manager: &Manager, mut conn: DbConn) -> DbConn {
    use diesel::connection::TransactionManager;
    tracing::error!("a database change panicked; rolling it back");
    let clean =
        match <DbConn as TransactionManager<DbConn>>::transaction_manager_status_mut(&mut conn).transaction_depth() {
            Ok(None) => true,
            _ => <DbConn as TransactionManager<DbConn>>::rollback_transaction(&mut conn).is_ok(),
        };
    if clean {
        return conn;
    }
    match manager.connect() {
        Ok(fresh) => fresh,
        Err(e) => {
            tracing::error!(error = %e, "cannot reopen the database for writing; keeping the old connection");
            conn
        }
    }
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;

    use super::*;

    #[tokio::test]
    async fn a_panicking_change_is_an_error_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let writer = Writer::start(&url).unwrap().expect("SQLite has a writer");
        writer
            .run(|conn| Ok(conn.batch_execute("CREATE TABLE t (x INTEGER)")?))
            .await
            .unwrap();
        let panicked = writer
            .run(|conn| -> Result<()> {
                crate::db::write(conn, |conn| {
                    conn.batch_execute("INSERT INTO t VALUES (1)")?;
                    panic!("mid-transaction")
                })
            })
            .await;
        assert!(matches!(panicked, Err(Error::Internal(_))), "{panicked:?}");
        // The half-done transaction was rolled back, and the next change commits.
        let count = writer
            .run(|conn| {
                crate::db::write(conn, |conn| Ok(conn.batch_execute("INSERT INTO t VALUES (2)")?))?;
                use diesel::RunQueryDsl;
                #[derive(diesel::QueryableByName)]
                struct Count {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                }
                let rows: Vec<Count> = diesel::sql_query("SELECT COUNT(*) AS n FROM t").load(conn)?;
                Ok(rows[0].n)
            })
            .await
            .unwrap();
        assert_eq!(count, 1);
    }

    #[test]
    fn postgres_has_no_writer() {
        assert!(Writer::start("postgres://nowhere/db").unwrap().is_none());
    }
}
