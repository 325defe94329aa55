//! The pool's readers: as many threads as the pool has connections, taking the queued reads in
//! turn. A read waits in the queue, not on a thread of its own.
//!
//! Why not a blocking-pool task per read: with more reads in flight than connections, every
//! waiting read parked its own thread on the pool's lock, and each handed-back connection woke
//! them to race for it. Measured with 50 dashboards opening station feeds at once, half the
//! server's CPU went to those threads' futex waits, yields and context switches. Here a busy
//! reader takes the next read without sleeping, and checking out a connection never waits.

use std::panic::AssertUnwindSafe;

use diesel::r2d2;
use tokio::sync::oneshot;

use super::{DbConn, Manager};
use crate::error::{Error, Result};

/// Reads waiting beyond this are refused (503) rather than queued without end.
const QUEUE: usize = 4096;

/// A read, given the connection it runs on (or why there is none).
type Read = Box<dyn FnOnce(Result<&mut DbConn>) + Send>;

#[derive(Clone)]
pub struct Readers {
    reads: crossbeam_channel::Sender<Read>,
}

impl Readers {
    /// One thread per connection of `pool`; they end when the last `Readers` is dropped.
    pub fn start(pool: &r2d2::Pool<Manager>) -> std::io::Result<Readers> {
        let (reads, queue) = crossbeam_channel::bounded::<Read>(QUEUE);
        for n in 0..pool.max_size() {
            let (pool, queue) = (pool.clone(), queue.clone());
            std::thread::Builder::new()
                .name(format!("db-reader-{n}"))
                .spawn(move || {
                    while let Ok(read) = queue.recv() {
                        // A read that panics drops its answer (its caller hears of an internal
                        // error) and takes nothing else down: the connection goes back through
                        // the pool's check for a broken transaction.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| match pool.get() {
                            Ok(mut conn) => read(Ok(&mut conn)),
                            Err(e) => read(Err(e.into())),
                        }));
                    }
                })?;
        }
        Ok(Readers { reads })
    }

    /// Runs `f` on a reader, keeping the caller's tracing span so its logs stay attached to the
    /// request.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut DbConn) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let span = tracing::Span::current();
        let read: Read = Box::new(move |conn| {
            let _entered = span.enter();
            let _ = answer.send(conn.and_then(f));
        });
        self.reads.try_send(read).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => Error::Unavailable("too many database reads waiting".into()),
            crossbeam_channel::TrySendError::Disconnected(_) => {
                Error::Internal(anyhow::anyhow!("the database readers have stopped"))
            }
        })?;
        answered
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("a database read failed without an answer")))?
    }
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;

    use crate::db;
    use crate::error::Error;

    /// Many more reads than connections are all answered; one that panics is answered with an
    /// internal error, and the readers go on with the rest.
    #[test]
    fn reads_queue_for_the_readers_and_a_panic_answers_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::connect(&dir.path().join("r.db").display().to_string(), Some(2)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let answers = runtime.block_on(futures_util::future::join_all((0..200).map(|i| {
            let pool = pool.clone();
            async move {
                db::run(&pool, move |conn| {
                    assert_ne!(i, 77, "a read that panics");
                    conn.batch_execute("SELECT 1")?;
                    Ok(i)
                })
                .await
            }
        })));
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(n) => assert_eq!(n, i),
                Err(Error::Internal(_)) if i == 77 => {}
                other => panic!("read {i}: {other:?}"),
            }
        }
    }
}
