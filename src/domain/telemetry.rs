//! Telemetry in batches (CONTRACT §5 v2): up to a thousand readings in one change. Each reading
//! is judged alone — a bad one is refused with its index and the rest apply — and a battery read
//! several times ends as its last reading says. One `battery_updated` per battery that changed
//! and one `inventory_update` per station whose counts changed, not one event per reading.
//!
//! The batteries are read with one query and written with one statement per backend, whatever
//! the batch holds: a fleet of a million batteries reporting each minute is some 18,000 readings
//! a second.

use std::collections::{BTreeMap, HashMap};

use diesel::prelude::*;
use serde::Serialize;
use serde_json::Value;

use super::batteries::{announce_inventory, announce_update, patched_status, BatteryPatch};
use super::transition::{shift_counts, Counts};
use super::values::{BatteryStatus, Percent, Serial};
use super::Change;
use crate::auth::{policy, Caller};
use crate::db::models::{Battery, Station};
use crate::db::schema::{batteries, stations};
use crate::db::DbConn;
use crate::error::{Error, Result};
use crate::events::InventoryAction;

/// Readings per request at most.
pub const MAX_READINGS: usize = 1_000;

/// One reading as it passed its own checks.
#[derive(Clone, Debug)]
pub struct Reading {
    pub index: usize,
    pub serial: Serial,
    pub soc: Percent,
    pub soh: Option<Percent>,
}

/// A reading refused, by its place in the request.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Rejected {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

/// What a batch did.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Readings applied (a reading that repeats a battery's values is applied and changes nothing).
    pub accepted: usize,
    /// Batteries whose values or status changed: one `battery_updated` each.
    pub changed: usize,
    pub rejected: Vec<Rejected>,
}

fn rejected(index: usize, code: &'static str, message: impl Into<String>) -> Rejected {
    Rejected {
        index,
        code,
        message: message.into(),
    }
}

/// Checks each reading's shape and ranges; the ones that pass, and the refusals.
pub fn parse(readings: &[Value]) -> Result<(Vec<Reading>, Vec<Rejected>)> {
    if readings.len() > MAX_READINGS {
        return Err(Error::field(
            "readings",
            format!("at most {MAX_READINGS} readings per request"),
        ));
    }
    let mut good = Vec::with_capacity(readings.len());
    let mut bad = Vec::new();
    for (index, reading) in readings.iter().enumerate() {
        match parse_one(index, reading) {
            Ok(reading) => good.push(reading),
            Err(refusal) => bad.push(refusal),
        }
    }
    Ok((good, bad))
}

fn parse_one(index: usize, reading: &Value) -> std::result::Result<Reading, Rejected> {
    let invalid = |message: &str| rejected(index, "invalid_reading", message);
    let Some(fields) = reading.as_object() else {
        return Err(invalid("a reading is an object {serial, soc, soh?}"));
    };
    let serial = fields
        .get("serial")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("serial must be a string"))?;
    let serial = Serial::parse(serial).map_err(|_| invalid("serial is not a battery serial"))?;
    let percent = |name: &str, raw: &Value| -> std::result::Result<Percent, Rejected> {
        let n = raw
            .as_i64()
            .ok_or_else(|| invalid(&format!("{name} must be an integer")))?;
        Percent::parse(name, n)
            .map_err(|_| rejected(index, "out_of_range", format!("{name} must be between 0 and 100")))
    };
    let soc = percent("soc", fields.get("soc").ok_or_else(|| invalid("soc is required"))?)?;
    let soh = match fields.get("soh") {
        None | Some(Value::Null) => None,
        Some(raw) => Some(percent("soh", raw)?),
    };
    Ok(Reading {
        index,
        serial,
        soc,
        soh,
    })
}

/// Applies the readings that passed [`parse`]: refuses those for unknown serials, for batteries
/// the caller may not report on, and for batteries that take no telemetry now (retired, with a
/// driver); writes the rest.
pub fn apply(
    ch: &mut Change,
    actor: &Caller,
    readings: &[Reading],
    charged_soc: i32,
) -> Result<(usize, usize, Vec<Rejected>)> {
    policy::require_staff(actor)?;
    let serials: Vec<&str> = readings.iter().map(|r| r.serial.as_str()).collect();
    let found: Vec<Battery> = batteries::table
        .filter(batteries::serial.eq_any(&serials))
        .select(Battery::as_select())
        .load(ch.conn)?;
    let mut station_ids: Vec<i64> = found.iter().map(|b| b.station_id).collect();
    station_ids.sort_unstable();
    station_ids.dedup();
    let operators: HashMap<i64, Option<i64>> = stations::table
        .filter(stations::id.eq_any(&station_ids))
        .select((stations::id, stations::operator_id))
        .load::<(i64, Option<i64>)>(ch.conn)?
        .into_iter()
        .collect();
    // Each battery as read, and as the readings leave it.
    let mut batteries: HashMap<String, (Battery, Battery)> =
        found.into_iter().map(|b| (b.serial.clone(), (b.clone(), b))).collect();

    let mut accepted = 0;
    let mut refused = Vec::new();
    for reading in readings {
        let Some((_, now)) = batteries.get_mut(reading.serial.as_str()) else {
            refused.push(rejected(reading.index, "unknown_serial", "No battery has this serial"));
            continue;
        };
        let operator = operators
            .get(&now.station_id)
            .copied()
            .flatten()
            .map(super::ids::UserId);
        if !policy::is_station_staff(actor, operator) {
            refused.push(rejected(
                reading.index,
                "forbidden",
                "Not a battery of a station you operate",
            ));
            continue;
        }
        let patch = BatteryPatch {
            soc: Some(reading.soc),
            soh: reading.soh,
            retire: false,
        };
        match patched_status(BatteryStatus::from_db(&now.status)?, &patch, charged_soc) {
            Ok(status) => {
                now.status = status.as_str().to_owned();
                now.soc = reading.soc.get();
                if let Some(soh) = reading.soh {
                    now.soh = soh.get();
                }
                accepted += 1;
            }
            Err(Error::Conflict { code, message }) => refused.push(rejected(reading.index, code, message)),
            Err(other) => return Err(other),
        }
    }

    let mut changed: Vec<(Battery, Battery)> = batteries
        .into_values()
        .filter(|(was, now)| (was.soc, was.soh, &was.status) != (now.soc, now.soh, &now.status))
        .collect();
    changed.sort_by_key(|(was, _)| was.id);
    for (_, now) in &mut changed {
        now.updated_at = ch.now;
    }
    write(ch.conn, &changed)?;

    let mut shifts: BTreeMap<i64, Counts> = BTreeMap::new();
    for (was, now) in &changed {
        if was.status != now.status {
            let shift = shifts.entry(was.station_id).or_default();
            *shift = shift.plus(Counts::of(&was.status, -1)).plus(Counts::of(&now.status, 1));
        }
    }
    for (station, counts) in &shifts {
        shift_counts(ch, *station, *counts)?;
    }
    for (_, now) in &changed {
        announce_update(ch, now)?;
    }
    let moved: Vec<i64> = shifts
        .into_iter()
        .filter(|(_, c)| *c != Counts::default())
        .map(|(s, _)| s)
        .collect();
    let stations_moved: Vec<Station> = stations::table
        .filter(stations::id.eq_any(&moved))
        .order(stations::id.asc())
        .select(Station::as_select())
        .load(ch.conn)?;
    for station in &stations_moved {
        announce_inventory(ch, station, InventoryAction::Update)?;
    }
    refused.sort_by_key(|r| r.index);
    Ok((accepted, changed.len(), refused))
}

/// Writes the changed batteries with one statement, guarded by the status each was read in: the
/// transaction holds the turn to write (no other change ran since the read), so every row must
/// match; one that does not is a bug, and the whole batch is refused.
fn write(conn: &mut DbConn, changed: &[(Battery, Battery)]) -> Result<()> {
    if changed.is_empty() {
        return Ok(());
    }
    let rows: Vec<Value> = changed
        .iter()
        .map(|(was, now)| {
            serde_json::json!({"id": now.id, "was": was.status, "status": now.status, "soc": now.soc,
                               "soh": now.soh, "at": now.updated_at})
        })
        .collect();
    let rows = Value::Array(rows).to_string();
    let sql = match conn {
        DbConn::Pg(_) => {
            "UPDATE batteries AS b SET status = v.status, soc = v.soc, soh = v.soh, updated_at = v.at \
             FROM json_to_recordset($1::json) AS v(id BIGINT, was TEXT, status TEXT, soc INTEGER, soh INTEGER, at BIGINT) \
             WHERE b.id = v.id AND b.status = v.was"
        }
        DbConn::Sqlite(_) => {
            "UPDATE batteries SET status = v.status, soc = v.soc, soh = v.soh, updated_at = v.at \
             FROM (SELECT value ->> 'id' AS id, value ->> 'was' AS was, value ->> 'status' AS status, \
                          value ->> 'soc' AS soc, value ->> 'soh' AS soh, value ->> 'at' AS at \
                   FROM json_each(?)) AS v \
             WHERE batteries.id = v.id AND batteries.status = v.was"
        }
    };
    let written = diesel::sql_query(sql)
        .bind::<diesel::sql_types::Text, _>(&rows)
        .execute(conn)?;
    if written != changed.len() {
        return Err(Error::Internal(anyhow::anyhow!(
            "telemetry wrote {written} of {} batteries",
            changed.len()
        )));
    }
    Ok(())
}
