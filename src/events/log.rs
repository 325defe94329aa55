//! The event log: appended inside the transaction of the change it describes, read by audits, by resuming
//! clients, and by a hub that missed an event (a lost report, or another node's commit).
//!
//! Ids come from the single `event_counter` row, bumped inside the writing transaction. The row
//! lock it takes serializes event-producing commits, so ids become visible in increasing order: a
//! reader that has seen id N never later finds a committed id below N. (A PostgreSQL sequence hands
//! out ids at call time, so a slow transaction could commit a smaller id after a faster one.)

use diesel::prelude::*;

use super::{Audience, Event, EventBody};
use crate::db::models::EventRow;
use crate::db::schema::{event_counter, events};
use crate::db::DbConn;
use crate::domain::ids::{EventId, StationId, UserId};
use crate::error::{Error, Result};

/// Takes the turn to write events: on PostgreSQL the counter row's lock, first thing in every
/// transaction that may produce events, so such transactions run one after another and none
/// waits on another while holding what that one needs (SQLite's `BEGIN IMMEDIATE` already took the
/// database's one write lock).
pub fn take_turn(conn: &mut DbConn) -> Result<()> {
    if let DbConn::Pg(pg) = conn {
        event_counter::table
            .find(1)
            .select(event_counter::last_id)
            .for_update()
            .get_result::<i64>(pg)?;
    }
    Ok(())
}

/// Rows per insert statement: well within both backends' limits on bound values.
const ROWS_PER_INSERT: usize = 1_000;

/// Writes the pending events of one transaction (one change, or a batch of them in order) and
/// returns them with their ids, in order: one counter update and one insert per thousand events.
pub fn append(conn: &mut DbConn, at: i64, pending: Vec<(Audience, EventBody)>) -> Result<Vec<Event>> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let count = pending.len() as i64;
    let last: i64 = diesel::update(event_counter::table.find(1))
        .set(event_counter::last_id.eq(event_counter::last_id + count))
        .returning(event_counter::last_id)
        .get_result(conn)?;
    let first = last - count + 1;
    let mut rows = Vec::with_capacity(pending.len());
    let mut written = Vec::with_capacity(pending.len());
    for (offset, (audience, body)) in pending.into_iter().enumerate() {
        let (station_id, user_id) = match audience {
            Audience::Station(s) => (Some(s.0), None),
            Audience::User(u) => (None, Some(u.0)),
        };
        let id = first + offset as i64;
        rows.push(EventRow {
            id,
            kind: body.kind().to_owned(),
            station_id,
            user_id,
            payload: serde_json::to_string(&body).map_err(anyhow::Error::from)?,
            created_at: at,
        });
        written.push(Event {
            id: EventId(id),
            at,
            audience,
            body,
        });
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        match conn {
            DbConn::Sqlite(c) => diesel::insert_into(events::table).values(chunk).execute(c)?,
            DbConn::Pg(c) => diesel::insert_into(events::table).values(chunk).execute(c)?,
        };
    }
    Ok(written)
}

/// Events with id > `after`, oldest first.
pub fn after(conn: &mut DbConn, after: i64, limit: i64) -> Result<Vec<Event>> {
    events::table
        .filter(events::id.gt(after))
        .order(events::id.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .load(conn)?
        .into_iter()
        .map(decode)
        .collect()
}

/// The events with `from <= id <= to`, oldest first: what a node missed, fetched by id.
pub fn range(conn: &mut DbConn, from: i64, to: i64) -> Result<Vec<Event>> {
    events::table
        .filter(events::id.between(from, to))
        .order(events::id.asc())
        .select(EventRow::as_select())
        .load(conn)?
        .into_iter()
        .map(decode)
        .collect()
}

/// Which events a reader may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    AllStations,
    Station(StationId),
    User(UserId),
}

/// The events of one feed with id > `after`, oldest first.
pub fn after_in(conn: &mut DbConn, feed: Feed, after: i64, limit: i64) -> Result<Vec<Event>> {
    let query = events::table
        .filter(events::id.gt(after))
        .order(events::id.asc())
        .limit(limit)
        .into_boxed();
    let query = match feed {
        Feed::AllStations => query.filter(events::station_id.is_not_null()),
        Feed::Station(station) => query.filter(events::station_id.eq(station.0)),
        Feed::User(user) => query.filter(events::user_id.eq(user.0)),
    };
    query
        .select(EventRow::as_select())
        .load(conn)?
        .into_iter()
        .map(decode)
        .collect()
}

/// Whether every event after `after` is still in the log: ids are contiguous, so it is enough
/// that the oldest retained id is at most `after + 1` (and that `after` is an id this log issued).
pub fn can_resume_from(conn: &mut DbConn, after: i64) -> Result<bool> {
    let latest = latest_id(conn)?;
    if after < 0 || after > latest {
        return Ok(false);
    }
    let oldest: Option<i64> = events::table.select(diesel::dsl::min(events::id)).first(conn)?;
    Ok(oldest.map_or(after == latest, |oldest| oldest <= after + 1))
}

/// Forgets the events committed before `cutoff` (unix ms); returns how many.
///
/// The log always loses a prefix of its ids, never an event in the middle: what goes is every id
/// up to the newest one written before the cutoff, found by a binary search over ids (a few
/// primary-key reads). Ids and commit times rise together, and where two nodes' clocks disagree a
/// little the cut moves by that much but still leaves no hole — so a resume that
/// [`can_resume_from`] allows finds every event after it. It also spares every event insert an
/// index on `created_at`.
pub fn prune(conn: &mut DbConn, cutoff: i64) -> Result<usize> {
    let span: (Option<i64>, Option<i64>) = events::table
        .select((diesel::dsl::min(events::id), diesel::dsl::max(events::id)))
        .first(conn)?;
    let (Some(oldest), Some(newest)) = span else {
        return Ok(0);
    };
    // The time of the first event at or after `id` (ids are contiguous; this holds even if not).
    let mut written_at = |id: i64| -> Result<i64> {
        Ok(events::table
            .filter(events::id.ge(id))
            .order(events::id.asc())
            .select(events::created_at)
            .first(conn)?)
    };
    if written_at(oldest)? >= cutoff {
        return Ok(0);
    }
    // The newest id known to be before the cutoff, and the newest that may be.
    let (mut before, mut upto) = (oldest, newest);
    while before < upto {
        let mid = before + (upto - before + 1) / 2;
        if written_at(mid)? < cutoff {
            before = mid;
        } else {
            upto = mid - 1;
        }
    }
    Ok(diesel::delete(events::table.filter(events::id.le(before))).execute(conn)?)
}

/// The newest committed event id (0 before the first event).
pub fn latest_id(conn: &mut DbConn) -> Result<i64> {
    Ok(event_counter::table
        .find(1)
        .select(event_counter::last_id)
        .first(conn)?)
}

fn decode(row: EventRow) -> Result<Event> {
    let audience = match (row.station_id, row.user_id) {
        (_, Some(user)) => Audience::User(UserId(user)),
        (Some(station), None) => Audience::Station(StationId(station)),
        (None, None) => return Err(Error::Internal(anyhow::anyhow!("event {} has no audience", row.id))),
    };
    let body: EventBody = serde_json::from_str(&row.payload)
        .map_err(|e| Error::Internal(anyhow::anyhow!("event {} payload: {e}", row.id)))?;
    Ok(Event {
        id: EventId(row.id),
        at: row.created_at,
        audience,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db;
    use crate::domain::values::StationStatus;

    fn event() -> (Audience, EventBody) {
        (
            Audience::Station(StationId(1)),
            EventBody::StationStatus {
                station_id: StationId(1),
                station_name: "probe".into(),
                status: StationStatus::Online,
                message: String::new(),
            },
        )
    }

    fn ids(conn: &mut DbConn) -> Vec<i64> {
        after(conn, 0, 1_000).unwrap().iter().map(|e| e.id.0).collect()
    }

    /// Pruning forgets exactly the events written before the cutoff, and when a clock stepped back
    /// (two nodes that disagree) it still takes a prefix: no event after the cut is ever missing.
    #[test]
    fn pruning_takes_a_prefix_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::connect(&dir.path().join("p.db").display().to_string(), Some(1)).unwrap();
        let mut conn = pool.get().unwrap();
        db::migrate(&mut conn).unwrap();
        assert_eq!(prune(&mut conn, i64::MAX).unwrap(), 0, "an empty log");
        for at in [100, 100, 200, 300, 300, 300, 400] {
            append(&mut conn, at, vec![event()]).unwrap();
        }
        assert_eq!(prune(&mut conn, 100).unwrap(), 0, "nothing before the first");
        assert_eq!(prune(&mut conn, 300).unwrap(), 3);
        assert_eq!(ids(&mut conn), vec![4, 5, 6, 7]);
        assert!(can_resume_from(&mut conn, 3).unwrap());
        assert!(!can_resume_from(&mut conn, 2).unwrap());
        // A second node's clock behind: event 10 says 250, after one that says 600. Deleting by
        // time alone would take 10 and keep 9, a hole a resume from 8 would never see.
        for at in [500, 600, 250] {
            append(&mut conn, at, vec![event()]).unwrap();
        }
        prune(&mut conn, 550).unwrap();
        let left = ids(&mut conn);
        let first = left[0];
        assert_eq!(left, (first..=10).collect::<Vec<_>>(), "a suffix of the ids");
        assert_eq!(first, 9, "the cut stops at 9 (600), and 10 stays with it");
        assert_eq!(prune(&mut conn, i64::MAX).unwrap(), 2);
        assert!(ids(&mut conn).is_empty());
    }
}
