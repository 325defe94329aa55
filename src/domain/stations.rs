//! Stations: the network's places, their status, their operator, and their inventory counts.

use std::collections::HashMap;

use diesel::prelude::*;
use serde::Serialize;

use super::ids::{StationId, UserId};
use super::values::{Role, StationStatus};
use super::{transition, users, Change, Listing, Page};
use crate::auth::policy;
use crate::auth::Caller;
use crate::clock::serialize_iso;
use crate::db::models::{NewStation, Station, StationChange};
use crate::db::schema::stations;
use crate::db::{unicode_lower, DbConn};
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
    /// Beside the seed's three counts: batteries on their chargers.
    pub charging_batteries: i64,
    #[serde(serialize_with = "serialize_iso")]
    pub created_at: i64,
    #[serde(serialize_with = "serialize_iso")]
    pub updated_at: i64,
}

impl StationView {
    pub fn new(row: Station) -> Result<StationView> {
        Ok(StationView {
            inventory: counts_of(&row),
            charging_batteries: row.charging_batteries.into(),
            id: StationId(row.id),
            status: StationStatus::from_db(&row.status)?,
            name: row.name,
            address: row.address,
            operator_id: row.operator_id.map(UserId),
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// The counts the station's row carries (kept by `transition`, in the transaction of each change).
fn counts_of(row: &Station) -> Inventory {
    Inventory {
        available_batteries: row.available_batteries.into(),
        booked_batteries: row.booked_batteries.into(),
        total_batteries: row.total_batteries.into(),
    }
}

/// The station's counts as of now (inside a transaction: including its own changes). One row by
/// its key, however many batteries the station has.
pub fn inventory(conn: &mut DbConn, station: StationId) -> Result<Inventory> {
    Ok(counts_of(&load(conn, station)?))
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
    StationView::new(load(conn, id)?)
}

diesel::define_sql_function! {
    fn coalesce(x: diesel::sql_types::Nullable<diesel::sql_types::Text>, y: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// The orders `GET /stations` lists in (`?sort=`); each ends on the id, so a cursor is exact.
/// Every order is an index read in one direction: `-available` breaks ties by the newest id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StationSort {
    Id,
    Name,
    Available,
    MostAvailable,
}

/// Where the previous page ended, in the order it was sorted by.
#[derive(Clone, Debug, PartialEq, Eq)]
enum After {
    Id(i64),
    Name(String, i64),
    Available(i64, i64),
}

/// A `GET /stations` request: filters, order, and page.
#[derive(Clone, Debug)]
pub struct StationQuery {
    /// Lower-cased; name or address contains it.
    pub q: Option<String>,
    pub status: Option<StationStatus>,
    pub available_min: Option<i64>,
    pub sort: StationSort,
    pub limit: i64,
    after: Option<After>,
}

impl StationQuery {
    /// Parses the query parameters; a bad one is a 422 naming it.
    pub fn parse(query: &HashMap<String, String>) -> Result<StationQuery> {
        let limit = Page::parse(query.get("limit").map(String::as_str), None)?.limit;
        let sort = match query.get("sort").map(String::as_str) {
            None | Some("") | Some("id") => StationSort::Id,
            Some("name") => StationSort::Name,
            Some("available") => StationSort::Available,
            Some("-available") => StationSort::MostAvailable,
            Some(_) => return Err(Error::field("sort", "must be one of name, available, -available")),
        };
        let status = match query.get("status").map(String::as_str) {
            None | Some("") => None,
            Some(raw) => Some(
                StationStatus::from_db(raw)
                    .map_err(|_| Error::field("status", "must be online, offline or maintenance"))?,
            ),
        };
        let available_min = match query.get("available_min") {
            None => None,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if n >= 0 => Some(n),
                _ => return Err(Error::field("available_min", "must be a whole number, 0 or more")),
            },
        };
        let q = query
            .get("q")
            .map(|q| q.trim().to_lowercase())
            .filter(|q| !q.is_empty());
        let after = match query.get("cursor").map(String::as_str) {
            None | Some("") => None,
            Some(raw) => Some(
                After::parse(sort, raw)
                    .ok_or_else(|| Error::field("cursor", "is not a cursor this server issued for this sort"))?,
            ),
        };
        Ok(StationQuery {
            q,
            status,
            available_min,
            sort,
            limit,
            after,
        })
    }
}

impl After {
    /// The cursor after `row` in `sort`'s order: the sort key and the id, so that a station
    /// changed meanwhile neither repeats nor hides the rest of the list.
    fn of(sort: StationSort, row: &Station) -> String {
        use base64::Engine;
        match sort {
            StationSort::Id => row.id.to_string(),
            StationSort::Name => format!(
                "n.{}.{}",
                row.id,
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&row.name)
            ),
            StationSort::Available => format!("a.{}.{}", row.available_batteries, row.id),
            StationSort::MostAvailable => format!("d.{}.{}", row.available_batteries, row.id),
        }
    }

    fn parse(sort: StationSort, raw: &str) -> Option<After> {
        use base64::Engine;
        let mut parts = raw.splitn(3, '.');
        let (tag, first, second) = (parts.next()?, parts.next(), parts.next());
        match (sort, tag, first, second) {
            (StationSort::Id, id, None, None) => id.parse().ok().map(After::Id),
            (StationSort::Name, "n", Some(id), Some(name)) => {
                let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(name).ok()?;
                Some(After::Name(String::from_utf8(name).ok()?, id.parse().ok()?))
            }
            (StationSort::Available, "a", Some(n), Some(id)) | (StationSort::MostAvailable, "d", Some(n), Some(id)) => {
                Some(After::Available(n.parse().ok()?, id.parse().ok()?))
            }
            _ => None,
        }
    }
}

/// `%`, `_` and the escape itself match literally in a LIKE pattern.
fn contains_pattern(q: &str) -> String {
    let mut pattern = String::with_capacity(q.len() + 2);
    pattern.push('%');
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A page of stations, filtered and sorted. Reads station rows only (their counts are on them):
/// at most one pass over the stations, never over their batteries.
pub fn list(conn: &mut DbConn, request: &StationQuery) -> Result<Listing<StationView>> {
    let mut query = stations::table.select(Station::as_select()).into_boxed();
    if let Some(q) = &request.q {
        let pattern = contains_pattern(q);
        query = query.filter(
            unicode_lower(stations::name)
                .like(pattern.clone())
                .escape('\\')
                .or(unicode_lower(coalesce(stations::address, ""))
                    .like(pattern)
                    .escape('\\')),
        );
    }
    if let Some(status) = request.status {
        query = query.filter(stations::status.eq(status.as_str()));
    }
    if let Some(min) = request.available_min {
        let min = i32::try_from(min).unwrap_or(i32::MAX);
        query = query.filter(stations::available_batteries.ge(min));
    }
    let available = |n: i64| i32::try_from(n).unwrap_or(if n < 0 { i32::MIN } else { i32::MAX });
    query = match &request.after {
        None => query,
        Some(After::Id(id)) => query.filter(stations::id.gt(*id)),
        Some(After::Name(name, id)) => query.filter(
            stations::name
                .gt(name.clone())
                .or(stations::name.eq(name.clone()).and(stations::id.gt(*id))),
        ),
        Some(After::Available(n, id)) if request.sort == StationSort::MostAvailable => query.filter(
            stations::available_batteries
                .lt(available(*n))
                .or(stations::available_batteries
                    .eq(available(*n))
                    .and(stations::id.lt(*id))),
        ),
        Some(After::Available(n, id)) => query.filter(
            stations::available_batteries
                .gt(available(*n))
                .or(stations::available_batteries
                    .eq(available(*n))
                    .and(stations::id.gt(*id))),
        ),
    };
    query = match request.sort {
        StationSort::Id => query.order(stations::id.asc()),
        StationSort::Name => query.order((stations::name.asc(), stations::id.asc())),
        StationSort::Available => query.order((stations::available_batteries.asc(), stations::id.asc())),
        // Ties newest first: the (available, id) index read backwards serves the order.
        StationSort::MostAvailable => query.order((stations::available_batteries.desc(), stations::id.desc())),
    };
    let mut rows: Vec<Station> = query.limit(request.limit + 1).load(conn)?;
    let next_cursor = if rows.len() as i64 > request.limit {
        rows.truncate(request.limit as usize);
        rows.last().map(|row| After::of(request.sort, row))
    } else {
        None
    };
    Ok(Listing {
        items: rows.into_iter().map(StationView::new).collect::<Result<_>>()?,
        next_cursor,
    })
}

/// Every station, for the snapshot of an all-stations subscription.
pub fn all(conn: &mut DbConn) -> Result<Vec<StationView>> {
    stations::table
        .select(Station::as_select())
        .order(stations::id.asc())
        .load(conn)?
        .into_iter()
        .map(StationView::new)
        .collect()
}

/// The station's `inventory_update`: its counts as this change left them (without a read when the
/// change updated them, see [`Change::counted`]).
pub fn inventory_event(
    ch: &mut super::Change,
    station: &Station,
    action: InventoryAction,
) -> Result<(Inventory, EventBody)> {
    let inventory = match ch.counts_of(station.id) {
        Some(counted) => counted,
        None => inventory(ch.conn, StationId(station.id))?,
    };
    Ok((inventory.clone(), inventory_update(station, inventory, action)))
}

/// An `inventory_update` of a station with the given counts.
pub fn inventory_update(station: &Station, inventory: Inventory, action: InventoryAction) -> EventBody {
    EventBody::InventoryUpdate {
        station_id: StationId(station.id),
        station_name: station.name.clone(),
        inventory,
        action,
    }
}

/// Marks the station rows changed without an event (see migration 6): the next all-stations
/// snapshot is read afresh. The transaction holds the event counter's row already
/// (`events::log::take_turn`).
pub fn touched(conn: &mut DbConn) -> Result<()> {
    use crate::db::schema::event_counter;
    diesel::update(event_counter::table.find(1))
        .set(event_counter::stations_revision.eq(event_counter::stations_revision + 1))
        .execute(conn)?;
    Ok(())
}

/// Where the station rows stand: the newest event and the revision of changes without one.
pub fn revision(conn: &mut DbConn) -> Result<(i64, i64)> {
    use crate::db::schema::event_counter;
    Ok(event_counter::table
        .find(1)
        .select((event_counter::last_id, event_counter::stations_revision))
        .first(conn)?)
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
    touched(ch.conn)?;
    StationView::new(row)
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
    touched(ch.conn)?;
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
    StationView::new(row)
}

/// The whole network at a glance: stations by status, and every station's counts summed — sums
/// over the station rows, which carry their counts, so the cost follows the number of stations and
/// never the number of batteries.
#[derive(Debug, Serialize)]
pub struct NetworkView {
    pub stations: i64,
    pub stations_by_status: HashMap<&'static str, i64>,
    pub available_batteries: i64,
    pub booked_batteries: i64,
    pub charging_batteries: i64,
    pub total_batteries: i64,
    /// Events committed in each of the last 60 whole minutes, oldest first, and the minute each
    /// count starts at (unix ms).
    pub events_per_minute: Vec<i64>,
    pub since: i64,
    pub latest_event_id: i64,
}

type StatusSums = (String, i64, Option<i64>, Option<i64>, Option<i64>, Option<i64>);

pub fn network(conn: &mut DbConn, now: i64) -> Result<NetworkView> {
    use diesel::dsl::{count_star, sum};

    use crate::db::schema::events;
    crate::db::read_consistent(conn, |conn| {
        let rows: Vec<StatusSums> = stations::table
            .group_by(stations::status)
            .select((
                stations::status,
                count_star(),
                sum(stations::available_batteries),
                sum(stations::booked_batteries),
                sum(stations::charging_batteries),
                sum(stations::total_batteries),
            ))
            .load(conn)?;
        let mut view = NetworkView {
            stations: 0,
            stations_by_status: StationStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect(),
            available_batteries: 0,
            booked_batteries: 0,
            charging_batteries: 0,
            total_batteries: 0,
            events_per_minute: Vec::with_capacity(60),
            since: 0,
            latest_event_id: crate::events::log::latest_id(conn)?,
        };
        for (status, n, available, booked, charging, total) in rows {
            let status = StationStatus::from_db(&status)?;
            view.stations += n;
            *view.stations_by_status.entry(status.as_str()).or_default() += n;
            view.available_batteries += available.unwrap_or(0);
            view.booked_batteries += booked.unwrap_or(0);
            view.charging_batteries += charging.unwrap_or(0);
            view.total_batteries += total.unwrap_or(0);
        }
        const MINUTE: i64 = 60_000;
        let this_minute = now - now.rem_euclid(MINUTE);
        view.since = this_minute - 59 * MINUTE;
        for minute in 0..60 {
            let from = view.since + minute * MINUTE;
            let n: i64 = events::table
                .filter(events::created_at.ge(from).and(events::created_at.lt(from + MINUTE)))
                .count()
                .get_result(conn)?;
            view.events_per_minute.push(n);
        }
        Ok(view)
    })
}
