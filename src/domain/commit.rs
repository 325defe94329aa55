//! Group commit: the changes queued for the writer ([`crate::db::writer`]) run in one
//! transaction, each in a savepoint of its own — a change that fails rolls back itself alone and
//! is refused; the others go on. The event counter is taken once, first, and bumped once for the
//! whole batch; the batch commits once; only then is each change's caller answered and its events
//! published, change after change in the order of their ids.
//!
//! A change therefore sees the changes before it in its batch as a later transaction would see
//! them committed: the exclusive transitions, the booking limit and idempotency keys hold within a
//! batch as across batches.
//!
//! The savepoint is one name, kept by hand rather than by diesel's nesting: releasing one
//! change's and taking the next one's is a single round trip (`RELEASE …; SAVEPOINT …`), and a
//! change rolled back leaves the savepoint where the next one needs it. On PostgreSQL, where every
//! statement is a round trip, that is one of the five or six an addition costs.

use std::panic::AssertUnwindSafe;

use diesel::connection::SimpleConnection;

use super::Change;
use crate::clock::now_ms;
use crate::db::{self, DbConn};
use crate::error::{Error, Result};
use crate::events::{self, Audience, Event, EventBody};

/// One change waiting for its batch. The writer stages it, then either commits it (with its
/// events, ids assigned) or refuses it.
pub trait Queued: Send + 'static {
    /// Runs the change inside the batch's transaction; what it returns is kept for
    /// [`committed`](Self::committed).
    fn stage(&mut self, ch: &mut Change) -> Result<()>;
    /// The batch holding the change committed: publish its events and answer.
    fn committed(self: Box<Self>, events: Vec<Event>);
    /// The change did not commit: answer with why.
    fn refused(self: Box<Self>, error: Error);
}

impl crate::db::writer::Job for Box<dyn Queued> {
    fn refuse(self, error: Error) {
        self.refused(error)
    }
}

/// The savepoint each change runs in.
const TAKE: &str = "SAVEPOINT change";
/// After a change that stands: keep it, and open the next one's savepoint — one round trip.
const KEEP_AND_TAKE: &str = "RELEASE SAVEPOINT change; SAVEPOINT change";
/// After a change refused: undo it; the savepoint stays, where the next change starts.
const UNDO: &str = "ROLLBACK TO SAVEPOINT change";

/// A change staged in the open transaction, with the events it will commit.
struct Staged {
    change: Box<dyn Queued>,
    pending: Vec<(Audience, EventBody)>,
}

/// Runs one batch: everything in one transaction, a savepoint per change. `Err` when the
/// database failed the batch as a whole (every change is then refused with that error).
pub fn batch(conn: &mut DbConn, changes: Vec<Box<dyn Queued>>) -> Result<()> {
    let now = now_ms();
    let mut staged: Vec<Staged> = Vec::with_capacity(changes.len());
    let mut queue = changes.into_iter();
    // The change under way: taken out of the queue, not yet staged or refused. Whatever fails
    // while it is here (its savepoint's statements) fails the batch, and it hears why with the rest.
    let mut current: Option<Box<dyn Queued>> = None;
    let outcome = db::write(conn, |conn| {
        events::log::take_turn(conn)?;
        // What opens the next change's savepoint: the savepoint itself, after the last change's
        // release, or nothing after an undo (the savepoint is still there).
        let mut opening = Some(TAKE);
        for change in queue.by_ref() {
            let change = current.insert(change);
            if let Some(sql) = opening {
                conn.batch_execute(sql)?;
            }
            let mut ch = Change::new(conn, now);
            let ran = std::panic::catch_unwind(AssertUnwindSafe(|| change.stage(&mut ch)));
            let pending = ch.take_pending();
            match ran {
                Ok(Ok(())) => {
                    // Released with the next change's savepoint, or by the commit.
                    opening = Some(KEEP_AND_TAKE);
                    let change = current.take().expect("the change under way");
                    staged.push(Staged { change, pending });
                }
                Ok(Err(error)) => {
                    conn.batch_execute(UNDO)?;
                    opening = None;
                    current.take().expect("the change under way").refused(error);
                }
                Err(_) => {
                    tracing::error!("a database change panicked; rolling it back");
                    conn.batch_execute(UNDO)?;
                    opening = None;
                    let error = Error::Internal(anyhow::anyhow!("the change failed"));
                    current.take().expect("the change under way").refused(error);
                }
            }
        }
        if opening == Some(KEEP_AND_TAKE) {
            // The last change's savepoint, released before the events are written: if its change
            // ended the transaction under it, this fails and nothing is written outside one.
            conn.batch_execute("RELEASE SAVEPOINT change")?;
        }
        let counts: Vec<usize> = staged.iter().map(|s| s.pending.len()).collect();
        let pending = staged.iter_mut().flat_map(|s| std::mem::take(&mut s.pending)).collect();
        let events = events::log::append(conn, now, pending)?;
        Ok((counts, events))
    });
    match outcome {
        Ok((counts, events)) => {
            let mut events = events.into_iter();
            for (staged, n) in staged.into_iter().zip(counts) {
                staged.change.committed(events.by_ref().take(n).collect());
            }
            Ok(())
        }
        Err(error) => {
            tracing::error!(error = %error, "a batch of changes failed");
            // Nothing of the batch committed: every change staged, the one under way, and every
            // one not reached yet hears why.
            let unanswered = staged.into_iter().map(|s| s.change).chain(current).chain(queue);
            for change in unanswered {
                change.refused(error.for_each_change());
            }
            Err(error)
        }
    }
}

/// Runs `f` as one transaction of its own (outside the writer: the command line's changes),
/// its events written to the log inside it. If `f` fails, nothing is written — no rows and no
/// events.
pub fn commit<T>(conn: &mut DbConn, f: impl FnOnce(&mut Change) -> Result<T>) -> Result<super::Committed<T>> {
    db::write(conn, |conn| {
        events::log::take_turn(conn)?;
        let mut change = Change::new(conn, now_ms());
        let value = f(&mut change)?;
        let (now, pending) = (change.now, change.take_pending());
        let events = events::log::append(change.conn, now, pending)?;
        Ok(super::Committed { value, events })
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use diesel::connection::SimpleConnection;
    use diesel::RunQueryDsl;

    use super::*;
    use crate::domain::ids::StationId;
    use crate::domain::values::StationStatus;

    /// A change that writes a row with `x` and emits one event per `events`, or fails (or panics)
    /// after writing; it reports how it ended.
    struct Probe {
        x: i64,
        events: usize,
        ends: &'static str,
        report: mpsc::Sender<(i64, std::result::Result<Vec<i64>, String>)>,
    }

    impl Queued for Probe {
        fn stage(&mut self, ch: &mut Change) -> Result<()> {
            ch.conn.batch_execute(&format!("INSERT INTO t VALUES ({})", self.x))?;
            for _ in 0..self.events {
                ch.emit(
                    Audience::Station(StationId(self.x)),
                    EventBody::StationStatus {
                        station_id: StationId(self.x),
                        station_name: "probe".into(),
                        status: StationStatus::Online,
                        message: String::new(),
                    },
                );
            }
            match self.ends {
                "fails" => Err(Error::conflict("probe", "refused")),
                "panics" => panic!("mid-change"),
                // Ends the batch's transaction under it, as a lost connection would: its
                // savepoint can no longer be released.
                "breaks" => {
                    ch.conn.batch_execute("ROLLBACK")?;
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        fn committed(self: Box<Self>, events: Vec<Event>) {
            let ids = events.iter().map(|e| e.id.0).collect();
            self.report.send((self.x, Ok(ids))).unwrap();
        }
        fn refused(self: Box<Self>, error: Error) {
            self.report.send((self.x, Err(error.to_string()))).unwrap();
        }
    }

    #[derive(diesel::QueryableByName)]
    struct X {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        x: i64,
    }

    /// One failure and one panic in a batch roll back themselves alone: the rest commit once, with
    /// consecutive event ids in the order of the batch, and nothing of the refused ones remains.
    #[test]
    fn a_failing_change_rolls_back_alone_and_the_rest_commit_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::connect(&dir.path().join("c.db").display().to_string(), Some(1)).unwrap();
        let mut conn = pool.get().unwrap();
        db::migrate(&mut conn).unwrap();
        conn.batch_execute("CREATE TABLE t (x BIGINT)").unwrap();
        let (report, reports) = mpsc::channel();
        let plan = [
            (1, 2, "commits"),
            (2, 1, "fails"),
            (3, 1, "commits"),
            (4, 3, "panics"),
            (5, 1, "commits"),
        ];
        let changes: Vec<Box<dyn Queued>> = plan
            .iter()
            .map(|&(x, events, ends)| {
                Box::new(Probe {
                    x,
                    events,
                    ends,
                    report: report.clone(),
                }) as Box<dyn Queued>
            })
            .collect();
        batch(&mut conn, changes).unwrap();
        drop(report);
        let mut outcomes: Vec<_> = reports.iter().collect();
        outcomes.sort_by_key(|(x, _)| *x);
        let committed: Vec<_> = outcomes
            .iter()
            .filter_map(|(x, r)| r.as_ref().ok().map(|ids| (*x, ids.clone())))
            .collect();
        assert_eq!(committed, vec![(1, vec![1, 2]), (3, vec![3]), (5, vec![4])]);
        assert!(outcomes[1].1.as_ref().is_err_and(|e| e == "refused"), "{outcomes:?}");
        assert!(outcomes[3].1.is_err(), "{outcomes:?}");
        let rows: Vec<X> = diesel::sql_query("SELECT x FROM t ORDER BY x").load(&mut conn).unwrap();
        assert_eq!(rows.iter().map(|r| r.x).collect::<Vec<_>>(), vec![1, 3, 5]);
        let logged = events::log::after(&mut conn, 0, 100).unwrap();
        assert_eq!(logged.iter().map(|e| e.id.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    }

    /// A batch whose transaction breaks under one of its changes (the savepoint cannot be
    /// released): nothing commits and every change hears so — those staged, the one under way and
    /// those not reached yet — as unavailable (503), never left unanswered. Also when the change
    /// that breaks it is the last: nothing is written outside a transaction, not even the events
    /// of the changes before it.
    #[test]
    fn a_batch_that_breaks_answers_every_change_and_commits_nothing() {
        let plans: [&[(i64, &'static str)]; 2] = [
            &[(1, "commits"), (2, "breaks"), (3, "commits")],
            &[(1, "commits"), (2, "breaks")],
        ];
        for plan in plans {
            let dir = tempfile::tempdir().unwrap();
            let pool = db::connect(&dir.path().join("b.db").display().to_string(), Some(2)).unwrap();
            let mut conn = pool.get().unwrap();
            db::migrate(&mut conn).unwrap();
            conn.batch_execute("CREATE TABLE t (x BIGINT)").unwrap();
            let (report, reports) = mpsc::channel();
            let changes: Vec<Box<dyn Queued>> = plan
                .iter()
                .map(|&(x, ends)| {
                    Box::new(Probe {
                        x,
                        events: 1,
                        ends,
                        report: report.clone(),
                    }) as Box<dyn Queued>
                })
                .collect();
            assert!(batch(&mut conn, changes).is_err());
            drop(report);
            let mut outcomes: Vec<_> = reports.iter().collect();
            outcomes.sort_by_key(|(x, _)| *x);
            assert_eq!(
                outcomes.iter().map(|(x, _)| *x).collect::<Vec<_>>(),
                plan.iter().map(|(x, _)| *x).collect::<Vec<_>>(),
                "every change answered"
            );
            for (x, outcome) in &outcomes {
                let error = outcome.as_ref().expect_err("nothing committed");
                assert!(error.starts_with("Database unavailable"), "change {x}: {error}");
            }
            let mut fresh = pool.get().unwrap();
            let rows: Vec<X> = diesel::sql_query("SELECT x FROM t").load(&mut fresh).unwrap();
            assert!(rows.is_empty(), "{plan:?}");
            assert!(events::log::after(&mut fresh, 0, 100).unwrap().is_empty(), "{plan:?}");
        }
    }
}
