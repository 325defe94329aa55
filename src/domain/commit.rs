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
//! statement is a round trip, that matters to every change; battery additions next to each other
//! go further and share their statements and their savepoint ([`additions`]).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;

use diesel::connection::SimpleConnection;

use super::additions::{self, Addition};
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
    /// A battery addition, which the batch may stage together with the additions next to it
    /// ([`additions`]) instead of through [`stage`](Self::stage).
    fn addition(&mut self) -> Option<&mut Addition> {
        None
    }
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

/// Runs one batch: everything in one transaction, a savepoint per change — or per run of
/// additions staged together. `changes` are those waiting when the batch began; once it holds the
/// turn to write, those from `more` (queued meanwhile) join them. `Err` when the database failed
/// the batch as a whole (every change is then refused with that error).
pub fn batch(
    conn: &mut DbConn,
    changes: Vec<Box<dyn Queued>>,
    more: &mut dyn FnMut() -> Option<Box<dyn Queued>>,
) -> Result<()> {
    let now = now_ms();
    let mut staged: Vec<Staged> = Vec::with_capacity(changes.len());
    let mut queue: VecDeque<Box<dyn Queued>> = changes.into();
    // The changes under way: taken out of the queue, not yet staged or refused (one change, or a
    // run of additions). Whatever fails while they are here (their savepoint's statements) fails
    // the batch, and they hear why with the rest.
    let mut current: Vec<Box<dyn Queued>> = Vec::new();
    let outcome = db::write(conn, |conn| {
        events::log::take_turn(conn)?;
        // Changes queued while this writer waited for the turn (on PostgreSQL, for another node's
        // batch to commit) go in this batch rather than wait for the next.
        queue.extend(std::iter::from_fn(&mut *more));
        // What opens the next savepoint: the savepoint itself, after the last one's release, or
        // nothing after an undo (the savepoint is still there).
        let mut opening = Some(TAKE);
        // The changes at the front of the queue to stage one by one: a run of additions whose
        // statements failed together, staged again alone to learn whose change it was.
        let mut alone: usize = 0;
        while let Some(mut change) = queue.pop_front() {
            let together = alone == 0 && change.addition().is_some();
            current.push(change);
            if together {
                while queue.front_mut().is_some_and(|c| c.addition().is_some()) {
                    current.extend(queue.pop_front());
                }
            }
            alone = alone.saturating_sub(1);
            if let Some(sql) = opening {
                conn.batch_execute(sql)?;
            }
            if together {
                let mut run: Vec<&mut Addition> = current.iter_mut().filter_map(|c| c.addition()).collect();
                let ran = std::panic::catch_unwind(AssertUnwindSafe(|| additions::stage(conn, now, &mut run)));
                match ran {
                    Ok(Ok(outcomes)) => {
                        opening = Some(KEEP_AND_TAKE);
                        for (change, outcome) in current.drain(..).zip(outcomes) {
                            match outcome {
                                Ok(pending) => staged.push(Staged { change, pending }),
                                Err(error) => change.refused(error),
                            }
                        }
                    }
                    failed => {
                        if let Ok(Err(error)) = &failed {
                            tracing::warn!(error = %error, "additions staged together failed; staging them alone");
                        }
                        conn.batch_execute(UNDO)?;
                        opening = None;
                        alone = current.len();
                        while let Some(change) = current.pop() {
                            queue.push_front(change);
                        }
                    }
                }
                continue;
            }
            let change = current.last_mut().expect("the change under way");
            let mut ch = Change::new(conn, now);
            let ran = std::panic::catch_unwind(AssertUnwindSafe(|| change.stage(&mut ch)));
            let pending = ch.take_pending();
            match ran {
                Ok(Ok(())) => {
                    // Released with the next change's savepoint, or by the commit.
                    opening = Some(KEEP_AND_TAKE);
                    let change = current.pop().expect("the change under way");
                    staged.push(Staged { change, pending });
                }
                Ok(Err(error)) => {
                    conn.batch_execute(UNDO)?;
                    opening = None;
                    current.pop().expect("the change under way").refused(error);
                }
                Err(_) => {
                    tracing::error!("a database change panicked; rolling it back");
                    conn.batch_execute(UNDO)?;
                    opening = None;
                    let error = Error::Internal(anyhow::anyhow!("the change failed"));
                    current.pop().expect("the change under way").refused(error);
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
            // Nothing of the batch committed: every change staged, those under way, and every
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

    /// A migrated database with the probes' table `t`, and a connection to it.
    fn probe_db(connections: u32) -> (tempfile::TempDir, db::Pool, diesel::r2d2::PooledConnection<db::Manager>) {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::connect(&dir.path().join("p.db").display().to_string(), Some(connections)).unwrap();
        let mut conn = pool.get().unwrap();
        db::migrate(&mut conn).unwrap();
        conn.batch_execute("CREATE TABLE t (x BIGINT)").unwrap();
        (dir, pool, conn)
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
        let (_dir, _pool, mut conn) = probe_db(1);
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
        batch(&mut conn, changes, &mut || None).unwrap();
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

    /// Changes queued while the batch waited for the turn to write join it: one transaction, one
    /// run of ids after those it began with.
    #[test]
    fn changes_queued_meanwhile_join_the_batch() {
        let (_dir, _pool, mut conn) = probe_db(1);
        let (report, reports) = mpsc::channel();
        let probe = |x| {
            Box::new(Probe {
                x,
                events: 1,
                ends: "commits",
                report: report.clone(),
            }) as Box<dyn Queued>
        };
        let mut later = vec![probe(3), probe(2)];
        batch(&mut conn, vec![probe(1)], &mut || later.pop()).unwrap();
        drop(report);
        let mut outcomes: Vec<_> = reports.iter().collect();
        outcomes.sort_by_key(|(x, _)| *x);
        let ids: Vec<_> = outcomes.into_iter().map(|(x, r)| (x, r.unwrap())).collect();
        assert_eq!(ids, vec![(1, vec![1]), (2, vec![2]), (3, vec![3])]);
        let last: i64 = diesel::sql_query("SELECT COUNT(*) AS x FROM t")
            .load::<X>(&mut conn)
            .unwrap()[0]
            .x;
        assert_eq!(last, 3);
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
            let (_dir, pool, mut conn) = probe_db(2);
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
            assert!(batch(&mut conn, changes, &mut || None).is_err());
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

    /// A battery addition that reports how it ended, staged with its neighbours (`together`) or
    /// alone, as any other change.
    struct Adds {
        index: usize,
        addition: Addition,
        together: bool,
        report: mpsc::Sender<(usize, String, std::result::Result<Vec<Event>, String>)>,
    }

    impl Queued for Adds {
        fn stage(&mut self, ch: &mut Change) -> Result<()> {
            self.addition.stage_alone(ch)
        }
        fn addition(&mut self) -> Option<&mut Addition> {
            self.together.then_some(&mut self.addition)
        }
        fn committed(self: Box<Self>, events: Vec<Event>) {
            assert!(self.addition.made.is_some(), "a committed addition has its battery");
            let serial = self.addition.input.serial.as_str().to_owned();
            self.report.send((self.index, serial, Ok(events))).unwrap();
        }
        fn refused(self: Box<Self>, error: Error) {
            let serial = self.addition.input.serial.as_str().to_owned();
            let code = match &error {
                Error::Conflict { code, .. } => (*code).to_owned(),
                other => other.to_string(),
            };
            self.report.send((self.index, serial, Err(code))).unwrap();
        }
    }

    fn caller(id: i64, role: crate::domain::values::Role) -> crate::auth::Caller {
        crate::auth::Caller {
            id: crate::domain::ids::UserId(id),
            role,
            email: format!("u{id}@example.com"),
            display_name: format!("u{id}"),
        }
    }

    /// A database with an admin (1), an operator (2) of station 1, a station 2 without one, and a
    /// battery `OLD-1` at station 2.
    fn network() -> (tempfile::TempDir, db::Pool) {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::connect(&dir.path().join("a.db").display().to_string(), Some(2)).unwrap();
        let mut conn = pool.get().unwrap();
        db::migrate(&mut conn).unwrap();
        conn.batch_execute(
            "INSERT INTO users (id, email, display_name, role, password_hash, created_at) VALUES \
               (1, 'a@example.com', 'a', 'admin', 'x', 0), (2, 'o@example.com', 'o', 'operator', 'x', 0); \
             INSERT INTO stations (id, name, status, operator_id, created_at, updated_at) VALUES \
               (1, 'One', 'online', 2, 0, 0), (2, 'Two', 'online', NULL, 0, 0); \
             INSERT INTO batteries (station_id, serial, model, status, soc, soh, created_at, updated_at) VALUES \
               (2, 'OLD-1', 'M', 'available', 100, 100, 0, 0); \
             UPDATE stations SET available_batteries = 1, total_batteries = 1 WHERE id = 2;",
        )
        .unwrap();
        (dir, pool)
    }

    /// An addition's serial, and how many events it committed or why it was refused.
    type Answer = (String, std::result::Result<usize, String>);

    /// Runs `plan` (actor, station, serial, together) as one batch; each serial's outcome, and
    /// the `battery_added` counts (station, available, total) in the order of the log.
    fn add_in_one_batch(pool: &db::Pool, plan: &[(i64, i64, &str, bool)]) -> (Vec<Answer>, Vec<(i64, i64, i64)>) {
        use crate::domain::values::Role;
        let (report, reports) = mpsc::channel();
        let changes: Vec<Box<dyn Queued>> = plan
            .iter()
            .enumerate()
            .map(|(index, &(actor, station, serial, together))| {
                let role = if actor == 1 { Role::Admin } else { Role::Operator };
                let input = crate::domain::batteries::NewBatteryInput {
                    serial: crate::domain::values::Serial::parse(serial).unwrap(),
                    model: "M".into(),
                    soc: crate::domain::values::Percent::parse("soc", 90).unwrap(),
                    soh: crate::domain::values::Percent::parse("soh", 100).unwrap(),
                };
                Box::new(Adds {
                    index,
                    addition: Addition::new(caller(actor, role), StationId(station), input),
                    together,
                    report: report.clone(),
                }) as Box<dyn Queued>
            })
            .collect();
        let mut conn = pool.get().unwrap();
        batch(&mut conn, changes, &mut || None).unwrap();
        drop(report);
        let mut outcomes: Vec<_> = reports.iter().collect();
        outcomes.sort_by_key(|(index, _, _)| *index);
        let mut added = Vec::new();
        for event in events::log::after(&mut conn, 0, 1000).unwrap() {
            if let EventBody::BatteryAdded {
                station_id,
                available_batteries,
                total_batteries,
                ..
            } = event.body
            {
                added.push((station_id.0, available_batteries, total_batteries));
            }
        }
        let outcomes = outcomes
            .into_iter()
            .map(|(_, serial, r)| (serial, r.map(|events| events.len())))
            .collect();
        (outcomes, added)
    }

    #[derive(diesel::QueryableByName, Debug, PartialEq)]
    struct Counted {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        available_batteries: i32,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        total_batteries: i32,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        batteries: i64,
    }

    /// Each station's counts and its batteries counted.
    fn counted(pool: &db::Pool) -> Vec<(i64, i32, i32, i64)> {
        let rows: Vec<Counted> = diesel::sql_query(
            "SELECT s.id, s.available_batteries, s.total_batteries, \
                    (SELECT COUNT(*) FROM batteries b WHERE b.station_id = s.id) AS batteries \
             FROM stations s ORDER BY s.id",
        )
        .load(&mut pool.get().unwrap())
        .unwrap();
        rows.iter()
            .map(|r| (r.id, r.available_batteries, r.total_batteries, r.batteries))
            .collect()
    }

    /// Additions staged together are answered as one by one: each refusal its own (unknown
    /// station, not the station's staff, a serial taken before the batch or earlier in it — and
    /// free again when the addition that named it first was refused), each event with the counts
    /// right after its addition, across runs split by a change staged alone.
    #[test]
    fn additions_staged_together_answer_as_one_by_one() {
        let (_dir, pool) = network();
        let plan = [
            (1, 1, "NEW-1", true),
            (2, 2, "NEW-2", true),  // the operator of station 1 only
            (1, 2, "OLD-1", true),  // taken before the batch
            (1, 2, "NEW-1", true),  // taken earlier in the batch
            (1, 99, "NEW-3", true), // no such station
            (2, 1, "NEW-4", true),
            (1, 1, "NEW-5", false), // staged alone, between two runs
            (1, 2, "NEW-2", true),  // free: its first addition was refused
            (1, 1, "NEW-6", true),
        ];
        let (outcomes, added) = add_in_one_batch(&pool, &plan);
        let expected: Vec<Answer> = vec![
            ("NEW-1".into(), Ok(2)),
            (
                "NEW-2".into(),
                Err("Only admins and this station's operator may do this".into()),
            ),
            ("OLD-1".into(), Err("serial_taken".into())),
            ("NEW-1".into(), Err("serial_taken".into())),
            ("NEW-3".into(), Err("Station not found".into())),
            ("NEW-4".into(), Ok(2)),
            ("NEW-5".into(), Ok(2)),
            ("NEW-2".into(), Ok(2)),
            ("NEW-6".into(), Ok(2)),
        ];
        assert_eq!(outcomes.len(), expected.len(), "{outcomes:?}");
        for (got, want) in outcomes.iter().zip(&expected) {
            match (&got.1, &want.1) {
                (Ok(n), Ok(m)) => assert_eq!((&got.0, n), (&want.0, m)),
                (Err(e), Err(w)) => assert!(got.0 == want.0 && e.contains(w.as_str()), "{got:?} vs {want:?}"),
                _ => panic!("{got:?} vs {want:?}"),
            }
        }
        assert_eq!(added, vec![(1, 1, 1), (1, 2, 2), (1, 3, 3), (2, 2, 2), (1, 4, 4)]);
        assert_eq!(counted(&pool), vec![(1, 4, 4, 4), (2, 2, 2, 2)]);
    }

    /// A run of additions whose statement fails is rolled back and staged again one by one: the
    /// failing addition alone is refused, the others commit, counts and events as one by one.
    #[test]
    fn a_run_that_fails_together_is_staged_again_alone() {
        let (_dir, pool) = network();
        pool.get()
            .unwrap()
            .batch_execute(
                "CREATE TRIGGER no_bad BEFORE INSERT ON batteries WHEN NEW.serial = 'BAD-1' \
                 BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END;",
            )
            .unwrap();
        let plan = [(1, 1, "NEW-1", true), (1, 1, "BAD-1", true), (1, 2, "NEW-2", true)];
        let (outcomes, added) = add_in_one_batch(&pool, &plan);
        assert!(outcomes[0].1.is_ok() && outcomes[2].1.is_ok(), "{outcomes:?}");
        assert!(outcomes[1].1.is_err(), "{outcomes:?}");
        assert_eq!(added, vec![(1, 1, 1), (2, 2, 2)]);
        assert_eq!(counted(&pool), vec![(1, 1, 1, 1), (2, 2, 2, 2)]);
    }
}
