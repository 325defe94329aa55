//! Battery additions staged together: the additions next to each other in a batch of the group
//! commit ([`super::commit`]) are written with three statements between them — one read of their
//! stations, one insert of their batteries, one update of their stations' counts — instead of
//! three per addition. On PostgreSQL, where the one writer holding the event counter's row pays a
//! round trip per statement, that is the difference between a statement per addition and one per
//! batch.
//!
//! Each addition is still judged alone and answered as [`batteries::add`] would answer it, in the
//! order of the batch: an unknown station, a caller who is not the station's staff, a serial
//! already taken (by an earlier battery or by an earlier addition of the same batch) refuse that
//! addition and no other. Each one's events carry the counts as they stood right after it, as if
//! the additions had run one after another.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text};
use serde_json::json;

use super::batteries::{self, serial_taken, BatteryView, NewBatteryInput};
use super::ids::{BatteryId, StationId};
use super::stations::operator_of;
use super::values::BatteryStatus;
use crate::auth::{policy, Caller};
use crate::db::models::{Battery, Station};
use crate::db::schema::stations;
use crate::db::DbConn;
use crate::error::{Error, Result};
use crate::events::{Audience, EventBody, Inventory};

/// One battery addition waiting in the writer's queue, and the battery it made once staged.
pub struct Addition {
    pub actor: Caller,
    pub station: StationId,
    pub input: NewBatteryInput,
    pub made: Option<BatteryView>,
}

impl Addition {
    pub fn new(actor: Caller, station: StationId, input: NewBatteryInput) -> Addition {
        Addition {
            actor,
            station,
            input,
            made: None,
        }
    }

    /// Stages this addition alone, as any other change.
    pub fn stage_alone(&mut self, ch: &mut super::Change) -> Result<()> {
        self.made = Some(batteries::add(ch, &self.actor, self.station, &self.input)?);
        Ok(())
    }
}

/// The events of one addition staged with others.
pub type Pending = Vec<(Audience, EventBody)>;

/// Stages `additions` in the open transaction, in order: each one's events, or why it was refused
/// (a refused addition wrote nothing). `Err` when a statement failed: then what the statements
/// wrote must be rolled back, and the additions staged one by one to learn whose it was.
pub fn stage(conn: &mut DbConn, now: i64, additions: &mut [&mut Addition]) -> Result<Vec<Result<Pending>>> {
    let mut ids: Vec<i64> = additions.iter().map(|a| a.station.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let found: HashMap<i64, Station> = stations::table
        .filter(stations::id.eq_any(&ids))
        .select(Station::as_select())
        .load(conn)?
        .into_iter()
        .map(|s| (s.id, s))
        .collect();

    // Judged alone, in order; a serial is taken by the first addition that may have it.
    let mut outcomes: Vec<Result<()>> = Vec::with_capacity(additions.len());
    let mut claimed: HashMap<&str, usize> = HashMap::new();
    for (i, addition) in additions.iter().enumerate() {
        let judged = match found.get(&addition.station.0) {
            None => Err(Error::NotFound("Station")),
            Some(station) => policy::require_station_staff(&addition.actor, operator_of(station)),
        }
        .and_then(|()| match claimed.entry(addition.input.serial.as_str()) {
            std::collections::hash_map::Entry::Occupied(_) => Err(serial_taken()),
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert(i);
                Ok(())
            }
        });
        outcomes.push(judged);
    }

    let inserted = insert(conn, now, additions, &outcomes)?;
    let mut rows: Vec<Option<Battery>> = vec![None; additions.len()];
    for row in inserted {
        let i = claimed
            .get(row.serial.as_str())
            .copied()
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("a battery inserted for no addition")))?;
        rows[i] = Some(row);
    }
    // A serial that was free in the batch but not in the table: the insert skipped it.
    for (outcome, row) in outcomes.iter_mut().zip(&rows) {
        if outcome.is_ok() && row.is_none() {
            *outcome = Err(serial_taken());
        }
    }

    // Each station's counts after all of its additions, then back to each one's moment.
    let mut added: HashMap<i64, i64> = HashMap::new();
    for row in rows.iter().flatten() {
        *added.entry(row.station_id).or_default() += 1;
    }
    let counts = shift(conn, &added)?;
    let mut still_to_come = added;

    let mut staged = Vec::with_capacity(additions.len());
    for ((addition, outcome), row) in additions.iter_mut().zip(outcomes).zip(rows) {
        staged.push(outcome.and_then(|()| {
            let row = row.ok_or_else(|| Error::Internal(anyhow::anyhow!("an addition without its battery")))?;
            let station = &found[&row.station_id];
            let after = counts
                .get(&row.station_id)
                .ok_or_else(|| Error::Internal(anyhow::anyhow!("a station's counts were not returned")))?;
            let later = still_to_come.get_mut(&row.station_id).expect("counted above");
            *later -= 1;
            let inventory = Inventory {
                available_batteries: after.available_batteries - *later,
                booked_batteries: after.booked_batteries,
                total_batteries: after.total_batteries - *later,
            };
            let pending = batteries::added_events(station, BatteryId(row.id), inventory).into();
            addition.made = Some(BatteryView::from_row(row)?);
            Ok(pending)
        }));
    }
    Ok(staged)
}

/// Inserts the batteries of the additions that passed their checks, in one statement; a serial
/// already in the table is skipped, not an error. Returns the rows inserted.
fn insert(conn: &mut DbConn, now: i64, additions: &[&mut Addition], outcomes: &[Result<()>]) -> Result<Vec<Battery>> {
    let rows: Vec<serde_json::Value> = additions
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| outcome.is_ok())
        .map(|(a, _)| {
            json!({"station_id": a.station.0, "serial": a.input.serial.as_str(), "model": a.input.model,
                   "soc": a.input.soc.get(), "soh": a.input.soh.get()})
        })
        .collect();
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let rows = serde_json::Value::Array(rows).to_string();
    let sql = match conn {
        DbConn::Pg(_) => {
            "INSERT INTO batteries (station_id, serial, model, status, soc, soh, created_at, updated_at) \
             SELECT v.station_id, v.serial, v.model, $2, v.soc, v.soh, $3, $3 \
             FROM json_to_recordset($1::json) AS v(station_id BIGINT, serial TEXT, model TEXT, soc INTEGER, soh INTEGER) \
             ON CONFLICT (serial) DO NOTHING \
             RETURNING id, station_id, serial, model, status, soc, soh, created_at, updated_at"
        }
        // `WHERE true`: SQLite's parser needs it between a SELECT and an upsert clause.
        DbConn::Sqlite(_) => {
            "INSERT INTO batteries (station_id, serial, model, status, soc, soh, created_at, updated_at) \
             SELECT value ->> 'station_id', value ->> 'serial', value ->> 'model', ?2, \
                    value ->> 'soc', value ->> 'soh', ?3, ?3 \
             FROM json_each(?1) WHERE true \
             ON CONFLICT (serial) DO NOTHING \
             RETURNING id, station_id, serial, model, status, soc, soh, created_at, updated_at"
        }
    };
    Ok(diesel::sql_query(sql)
        .bind::<Text, _>(&rows)
        .bind::<Text, _>(BatteryStatus::Available.as_str())
        .bind::<BigInt, _>(now)
        .load(conn)?)
}

#[derive(QueryableByName)]
struct CountsRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Integer)]
    available_batteries: i32,
    #[diesel(sql_type = Integer)]
    booked_batteries: i32,
    #[diesel(sql_type = Integer)]
    total_batteries: i32,
}

/// Adds `added[station]` available batteries to each station's counts, in one statement; the
/// counts as they now stand.
fn shift(conn: &mut DbConn, added: &HashMap<i64, i64>) -> Result<HashMap<i64, Inventory>> {
    if added.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<serde_json::Value> = added.iter().map(|(id, n)| json!({"id": id, "n": n})).collect();
    let rows = serde_json::Value::Array(rows).to_string();
    let sql = match conn {
        DbConn::Pg(_) => {
            "UPDATE stations AS s SET available_batteries = s.available_batteries + v.n, \
                                      total_batteries = s.total_batteries + v.n \
             FROM json_to_recordset($1::json) AS v(id BIGINT, n INTEGER) WHERE s.id = v.id \
             RETURNING s.id, s.available_batteries, s.booked_batteries, s.total_batteries"
        }
        DbConn::Sqlite(_) => {
            "UPDATE stations SET available_batteries = available_batteries + v.n, \
                                 total_batteries = total_batteries + v.n \
             FROM (SELECT value ->> 'id' AS id, value ->> 'n' AS n FROM json_each(?)) AS v \
             WHERE stations.id = v.id \
             RETURNING stations.id AS id, available_batteries, booked_batteries, total_batteries"
        }
    };
    let now: Vec<CountsRow> = diesel::sql_query(sql).bind::<Text, _>(&rows).load(conn)?;
    if now.len() != added.len() {
        return Err(Error::Internal(anyhow::anyhow!(
            "counts moved for {} of {} stations",
            now.len(),
            added.len()
        )));
    }
    Ok(now
        .into_iter()
        .map(|r| {
            (
                r.id,
                Inventory {
                    available_batteries: r.available_batteries.into(),
                    booked_batteries: r.booked_batteries.into(),
                    total_batteries: r.total_batteries.into(),
                },
            )
        })
        .collect())
}
