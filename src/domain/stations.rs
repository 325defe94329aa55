//! Stations: the network's places, their status, their operator, and their inventory counts.

use diesel::dsl::count_star;
use diesel::prelude::*;
use serde::Serialize;

use super::ids::{StationId, UserId};
use super::values::{BatteryStatus, Role, StationStatus};
use super::{transition, users, Change, Listing, Page};
use crate::auth::policy;
use crate::auth::Caller;
use crate::clock::serialize_iso;
use crate::db::models::{NewStation, Station, StationChange};
use crate::db::schema::{batteries, stations};
use crate::db::DbConn;
use crate::error::{Error, Result};
use crate::events::{Audience, EventBody, Inventory, InventoryAction};

/// A station as the API shows it, with its inventory counts.
#[derive(Clone, Debug, Serialize)]
pub struct StationView {
    pub id: StationId,
    pub name: String,
    pub address: Option<String>,
    pub status: StationStatus,
    pub operator_id: Option<UserId>,
    #[serde(flatten)]
    pub inventory: Inventory,
    #[serde(serialize_with = "serialize_iso")]
    pub created_at: i64,
    #[serde(serialize_with = "serialize_iso")]
    pub updated_at: i64,
}

impl StationView {
    fn new(row: Station, inventory: Inventory) -> Result<StationView> {
        Ok(StationView {
            id: StationId(row.id),
            status: StationStatus::from_db(&row.status)?,
            name: row.name,
            address: row.address,
            operator_id: row.operator_id.map(UserId),
            inventory,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// Counts batteries by status into the contract's three numbers.
fn tally<'a>(rows: impl IntoIterator<Item = (&'a str, i64)>) -> Inventory {
    let mut inventory = Inventory {
        available_batteries: 0,
        booked_batteries: 0,
        total_batteries: 0,
    };
    for (status, n) in rows {
        match status {
            "available" => inventory.available_batteries += n,
            "booked" => inventory.booked_batteries += n,
            _ => {}
        }
        if status != BatteryStatus::Retired.as_str() && status != BatteryStatus::Collected.as_str() {
            inventory.total_batteries += n;
        }
    }
    inventory
}

/// The station's counts as of now (inside a transaction: including its own changes).
pub fn inventory(conn: &mut DbConn, station: StationId) -> Result<Inventory> {
    let rows: Vec<(String, i64)> = batteries::table
        .filter(batteries::station_id.eq(station.0))
        .group_by(batteries::status)
        .select((batteries::status, count_star()))
        .load(conn)?;
    Ok(tally(rows.iter().map(|(s, n)| (s.as_str(), *n))))
}

pub fn load(conn: &mut DbConn, id: StationId) -> Result<Station> {
    stations::table
        .find(id.0)
        .select(Station::as_select())
        .first(conn)
        .optional()?
        .ok_or(Error::NotFound("Station"))
}

/// (station, its operator) for every station the given caller operates; admins and anonymous
/// callers get none (admins see everything anyway).
pub fn operated_by(conn: &mut DbConn, actor: Option<&Caller>) -> Result<Vec<(StationId, Option<UserId>)>> {
    let Some(actor) = actor.filter(|a| a.role == Role::Operator) else {
        return Ok(Vec::new());
    };
    let rows: Vec<(i64, Option<i64>)> = stations::table
        .filter(stations::operator_id.eq(actor.id.0))
        .select((stations::id, stations::operator_id))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, op)| (StationId(id), op.map(UserId)))
        .collect())
}

pub fn operator_of(station: &Station) -> Option<UserId> {
    station.operator_id.map(UserId)
}

pub fn get(conn: &mut DbConn, id: StationId) -> Result<StationView> {
    let row = load(conn, id)?;
    let inventory = inventory(conn, id)?;
    StationView::new(row, inventory)
}

pub fn list(conn: &mut DbConn, page: Page) -> Result<Listing<StationView>> {
    let mut query = stations::table
        .select(Station::as_select())
        .order(stations::id.asc())
        .limit(page.fetch())
        .into_boxed();
    if let Some(after) = page.after {
        query = query.filter(stations::id.gt(after));
    }
    let mut rows: Vec<Station> = query.load(conn)?;
    let next_cursor = if rows.len() as i64 > page.limit {
        rows.truncate(page.limit as usize);
        rows.last().map(|s| s.id.to_string())
    } else {
        None
    };
    Ok(Listing {
        items: with_inventory(conn, rows)?,
        next_cursor,
    })
}

/// Every station, for the snapshot of an all-stations subscription.
pub fn all(conn: &mut DbConn) -> Result<Vec<StationView>> {
    let rows = stations::table
        .select(Station::as_select())
        .order(stations::id.asc())
        .load(conn)?;
    with_inventory(conn, rows)
}

/// Adds inventory counts to rows ordered by id, in one grouped query over their id range.
fn with_inventory(conn: &mut DbConn, rows: Vec<Station>) -> Result<Vec<StationView>> {
    let counts: Vec<(i64, String, i64)> = match (rows.first(), rows.last()) {
        (Some(first), Some(last)) => batteries::table
            .filter(
                batteries::station_id
                    .ge(first.id)
                    .and(batteries::station_id.le(last.id)),
            )
            .group_by((batteries::station_id, batteries::status))
            .select((batteries::station_id, batteries::status, count_star()))
            .load(conn)?,
        _ => Vec::new(),
    };
    rows.into_iter()
        .map(|row| {
            let id = row.id;
            let of_station = counts
                .iter()
                .filter(|(station, _, _)| *station == id)
                .map(|(_, s, n)| (s.as_str(), *n));
            StationView::new(row, tally(of_station))
        })
        .collect()
}

/// Builds an `inventory_update` for a station as it stands inside the change.
pub fn inventory_event(
    conn: &mut DbConn,
    station: &Station,
    action: InventoryAction,
) -> Result<(Inventory, EventBody)> {
    let inventory = inventory(conn, StationId(station.id))?;
    let event = EventBody::InventoryUpdate {
        station_id: StationId(station.id),
        station_name: station.name.clone(),
        inventory: inventory.clone(),
        action,
    };
    Ok((inventory, event))
}

/// An operator assignment must name a user whose role is `operator` (CONTRACT §6: else 422).
fn check_operator(conn: &mut DbConn, operator: Option<UserId>) -> Result<()> {
    if let Some(id) = operator {
        let is_operator = users::find(conn, id)?.is_some_and(|u| u.role == Role::Operator.as_str());
        if !is_operator {
            return Err(Error::field(
                "operator_id",
                "must be the id of a user with role operator",
            ));
        }
    }
    Ok(())
}

pub struct NewStationInput {
    pub name: String,
    pub address: Option<String>,
    pub status: StationStatus,
    pub operator_id: Option<UserId>,
}

pub fn create(ch: &mut Change, actor: &Caller, input: &NewStationInput) -> Result<StationView> {
    policy::require_admin(actor)?;
    check_operator(ch.conn, input.operator_id)?;
    let row: Station = diesel::insert_into(stations::table)
        .values(NewStation {
            name: &input.name,
            address: input.address.as_deref(),
            status: input.status.as_str(),
            operator_id: input.operator_id.map(|u| u.0),
            created_at: ch.now,
            updated_at: ch.now,
        })
        .returning(stations::all_columns)
        .get_result(ch.conn)?;
    let inventory = inventory(ch.conn, StationId(row.id))?;
    StationView::new(row, inventory)
}

/// `None` leaves a field alone; `Some(None)` clears an optional one.
#[derive(Debug, Default)]
pub struct StationPatch {
    pub name: Option<String>,
    pub address: Option<Option<String>>,
    pub status: Option<StationStatus>,
    pub operator_id: Option<Option<UserId>>,
}

/// Admins change anything; a station's operator changes its name, address and status but cannot
/// reassign it. A status change announces itself with `station_status`.
pub fn update(ch: &mut Change, actor: &Caller, id: StationId, patch: &StationPatch) -> Result<StationView> {
    let current = load(ch.conn, id)?;
    policy::require_station_staff(actor, operator_of(&current))?;
    if let Some(operator) = patch.operator_id {
        policy::require_admin(actor)?;
        check_operator(ch.conn, operator)?;
    }
    let change = StationChange {
        name: patch.name.as_deref(),
        address: patch.address.as_ref().map(Option::as_deref),
        status: patch.status.map(StationStatus::as_str),
        operator_id: patch.operator_id.map(|o| o.map(|u| u.0)),
        updated_at: ch.now,
    };
    let row = transition::station(ch, &current, &change)?;
    // Only this request's own status change is announced: its transition proved the station was
    // still in the status it was read in.
    if let Some(status) = patch.status.filter(|s| s.as_str() != current.status) {
        ch.emit(
            Audience::Station(id),
            EventBody::StationStatus {
                station_id: id,
                station_name: row.name.clone(),
                status,
                message: status.announcement().to_owned(),
            },
        );
    }
    let inventory = inventory(ch.conn, id)?;
    StationView::new(row, inventory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_excludes_retired_and_collected() {
        let inv = tally([
            ("available", 3),
            ("booked", 2),
            ("charging", 1),
            ("retired", 4),
            ("collected", 5),
        ]);
        assert_eq!(
            inv,
            Inventory {
                available_batteries: 3,
                booked_batteries: 2,
                total_batteries: 6
            }
        );
    }
}
