//! Bookings: a driver holds one available battery at a station until it is collected, cancelled,
//! or the hold time runs out.

use std::time::Duration;

use diesel::prelude::*;
use serde::Serialize;

use super::batteries::announce_inventory;
use super::ids::{BatteryId, BookingId, StationId, UserId};
use super::stations::{self, operator_of};
use super::values::{BatteryStatus, BookingStatus, StationStatus};
use super::{transition, Change, Listing, Page};
use crate::auth::policy;
use crate::auth::Caller;
use crate::clock::{serialize_iso, serialize_iso_opt};
use crate::db::models::{Battery, BatteryChange, Booking, NewBooking};
use crate::db::schema::{batteries, bookings};
use crate::db::{on_unique_violation, DbConn};
use crate::domain::values::Role;
use crate::error::{Error, Result};
use crate::events::{Audience, EventBody, InventoryAction};

#[derive(Clone, Debug, Serialize)]
pub struct BookingView {
    pub id: BookingId,
    pub user_id: UserId,
    pub station_id: StationId,
    pub battery_id: BatteryId,
    pub status: BookingStatus,
    #[serde(serialize_with = "serialize_iso")]
    pub created_at: i64,
    #[serde(serialize_with = "serialize_iso")]
    pub updated_at: i64,
    #[serde(serialize_with = "serialize_iso")]
    pub expires_at: i64,
    #[serde(serialize_with = "serialize_iso_opt")]
    pub ready_at: Option<i64>,
    #[serde(serialize_with = "serialize_iso_opt")]
    pub collected_at: Option<i64>,
    #[serde(serialize_with = "serialize_iso_opt")]
    pub cancelled_at: Option<i64>,
}

impl BookingView {
    pub fn from_row(row: Booking) -> Result<BookingView> {
        Ok(BookingView {
            id: BookingId(row.id),
            user_id: UserId(row.user_id),
            station_id: StationId(row.station_id),
            battery_id: BatteryId(row.battery_id),
            status: BookingStatus::from_db(&row.status)?,
            created_at: row.created_at,
            updated_at: row.updated_at,
            expires_at: row.expires_at,
            ready_at: row.ready_at,
            collected_at: row.collected_at,
            cancelled_at: row.cancelled_at,
        })
    }
}

fn load(conn: &mut DbConn, id: BookingId) -> Result<Booking> {
    bookings::table
        .find(id.0)
        .select(Booking::as_select())
        .first(conn)
        .optional()?
        .ok_or(Error::NotFound("Booking"))
}

/// Claims one available battery: the best charged first. The claim is a transition out of
/// `available`: a battery taken by a concurrent booking no longer matches, and the next candidate
/// is tried — for as long as one is left, since every loss is a battery another booking took (on
/// PostgreSQL a burst of bookings all pick the same best battery first; giving up after a few
/// losses would refuse a driver while batteries are free).
fn claim_battery(ch: &mut Change, station: StationId) -> Result<Battery> {
    loop {
        let candidate: Option<Battery> = batteries::table
            .filter(batteries::station_id.eq(station.0))
            .filter(batteries::status.eq(BatteryStatus::Available.as_str()))
            .order((batteries::soc.desc(), batteries::id.asc()))
            .select(Battery::as_select())
            .first(ch.conn)
            .optional()?;
        let Some(candidate) = candidate else { break };
        let booked = BatteryChange {
            status: Some(BatteryStatus::Booked.as_str()),
            station_id: None,
            soc: None,
            soh: None,
            updated_at: ch.now,
        };
        if let Some(battery) = transition::try_battery(ch, &candidate, &booked)? {
            return Ok(battery);
        }
    }
    Err(Error::conflict(
        "no_battery_available",
        "No battery is available at this station",
    ))
}

/// What a booking request needs to know beyond the request: from the settings.
#[derive(Clone, Copy, Debug)]
pub struct BookingRules {
    /// How long a booking holds its battery before it expires.
    pub hold: Duration,
    /// Live bookings a driver may hold at once; 0 = no limit.
    pub max_active: u32,
}

pub fn book(ch: &mut Change, actor: &Caller, station_id: StationId, rules: BookingRules) -> Result<BookingView> {
    let station = stations::load(ch.conn, station_id)?;
    if station.status != StationStatus::Online.as_str() {
        return Err(Error::conflict(
            "station_unavailable",
            format!("The station is {}", station.status),
        ));
    }
    let battery = claim_battery(ch, station_id)?;
    let row: Booking = diesel::insert_into(bookings::table)
        .values(NewBooking {
            user_id: actor.id.0,
            station_id: station_id.0,
            battery_id: battery.id,
            status: BookingStatus::Confirmed.as_str(),
            created_at: ch.now,
            updated_at: ch.now,
            expires_at: ch.now + rules.hold.as_millis() as i64,
        })
        .returning(bookings::all_columns)
        .get_result(ch.conn)
        .map_err(on_unique_violation(
            "no_battery_available",
            "No battery is available at this station",
        ))?;
    transition::take_booking_place(ch, actor.id, rules.max_active)?;
    let (inventory, update) = stations::inventory_event(ch, &station, InventoryAction::Book)?;
    ch.emit(
        Audience::Station(station_id),
        EventBody::BatteryBooked {
            station_id,
            station_name: station.name.clone(),
            battery_id: BatteryId(battery.id),
            inventory,
            user: actor.email.clone(),
        },
    );
    ch.emit(Audience::Station(station_id), update);
    ch.emit(
        Audience::User(actor.id),
        EventBody::BookingConfirmed {
            booking_id: BookingId(row.id),
            station_name: station.name.clone(),
            battery_info: battery.model.clone(),
            message: format!("Battery booked successfully at {}", station.name),
        },
    );
    BookingView::from_row(row)
}

#[derive(Debug, Default)]
pub struct BookingFilter {
    pub user_id: Option<UserId>,
    pub station_id: Option<StationId>,
    pub status: Option<BookingStatus>,
}

/// Newest first. Users see their own bookings; admins see all and may filter by user.
pub fn list(conn: &mut DbConn, actor: &Caller, filter: &BookingFilter, page: Page) -> Result<Listing<BookingView>> {
    let mut query = bookings::table
        .select(Booking::as_select())
        .order(bookings::id.desc())
        .limit(page.fetch())
        .into_boxed();
    if actor.role != Role::Admin {
        query = query.filter(bookings::user_id.eq(actor.id.0));
    } else if let Some(user) = filter.user_id {
        query = query.filter(bookings::user_id.eq(user.0));
    }
    if let Some(station) = filter.station_id {
        query = query.filter(bookings::station_id.eq(station.0));
    }
    if let Some(status) = filter.status {
        query = query.filter(bookings::status.eq(status.as_str()));
    }
    if let Some(after) = page.after {
        query = query.filter(bookings::id.lt(after));
    }
    Listing::from_rows(page, query.load(conn)?, |b| b.id, BookingView::from_row)
}

/// Loads a live booking whose station the actor staffs.
fn load_for_staff(ch: &mut Change, actor: &Caller, id: BookingId) -> Result<(Booking, crate::db::models::Station)> {
    let booking = load(ch.conn, id)?;
    let station = stations::load(ch.conn, StationId(booking.station_id))?;
    policy::require_station_staff(actor, operator_of(&station))?;
    Ok((booking, station))
}

/// Refuses unless the booking is in one of `from`.
fn require_state(booking: &Booking, from: &[BookingStatus]) -> Result<()> {
    if from.iter().any(|s| s.as_str() == booking.status) {
        Ok(())
    } else {
        Err(transition::wrong_booking_state(&booking.status))
    }
}

const LIVE: &[BookingStatus] = &[BookingStatus::Confirmed, BookingStatus::Ready];

pub fn mark_ready(ch: &mut Change, actor: &Caller, id: BookingId) -> Result<BookingView> {
    let (booking, station) = load_for_staff(ch, actor, id)?;
    require_state(&booking, &[BookingStatus::Confirmed])?;
    let row = transition::booking(ch, &booking, BookingStatus::Ready)?;
    ch.emit(
        Audience::User(UserId(booking.user_id)),
        EventBody::BookingReady {
            booking_id: id,
            station_name: station.name.clone(),
            message: format!("Your battery is ready for collection at {}", station.name),
        },
    );
    BookingView::from_row(row)
}

pub fn collect(ch: &mut Change, actor: &Caller, id: BookingId) -> Result<BookingView> {
    let (booking, station) = load_for_staff(ch, actor, id)?;
    require_state(&booking, LIVE)?;
    let row = finish(ch, &booking, BookingStatus::Collected, BatteryStatus::Collected)?;
    let (inventory, update) = stations::inventory_event(ch, &station, InventoryAction::Collect)?;
    ch.emit(
        Audience::Station(StationId(station.id)),
        EventBody::BatteryCollected {
            station_id: StationId(station.id),
            station_name: station.name.clone(),
            battery_id: BatteryId(booking.battery_id),
            inventory,
        },
    );
    ch.emit(Audience::Station(StationId(station.id)), update);
    BookingView::from_row(row)
}

pub fn cancel(ch: &mut Change, actor: &Caller, id: BookingId) -> Result<BookingView> {
    let booking = load(ch.conn, id)?;
    policy::require_owner_or_admin(actor, UserId(booking.user_id))?;
    require_state(&booking, LIVE)?;
    let station = stations::load(ch.conn, StationId(booking.station_id))?;
    let row = finish(ch, &booking, BookingStatus::Cancelled, BatteryStatus::Available)?;
    announce_inventory(ch, &station, InventoryAction::Update)?;
    BookingView::from_row(row)
}

/// Ends a live booking: the booking's transition is the guard, and only its winner goes on to
/// [`release`] what the booking held.
fn finish(ch: &mut Change, booking: &Booking, to: BookingStatus, battery_to: BatteryStatus) -> Result<Booking> {
    let row = transition::booking(ch, booking, to)?;
    release(ch, booking, battery_to)?;
    Ok(row)
}

/// What an ended booking held goes back: its battery moves on (`battery_to`) and its driver gets
/// the place back. The live booking held the battery `booked` (retirement refuses a booked
/// battery, telemetry keeps its status), so the battery's transition cannot lose; if it did, the
/// rows disagree and the change fails rather than write more on top.
fn release(ch: &mut Change, booking: &Booking, battery_to: BatteryStatus) -> Result<()> {
    let battery = batteries::table
        .find(booking.battery_id)
        .select(Battery::as_select())
        .first(ch.conn)?;
    let held = |status: BatteryStatus| match status {
        BatteryStatus::Booked => Ok(()),
        other => Err(Error::Internal(anyhow::anyhow!(
            "booking {} holds battery {} which is {other}",
            booking.id,
            booking.battery_id
        ))),
    };
    held(BatteryStatus::from_db(&battery.status)?)?;
    let change = BatteryChange {
        status: Some(battery_to.as_str()),
        station_id: None,
        soc: None,
        soh: None,
        updated_at: ch.now,
    };
    transition::battery(ch, &battery, &change, held)?;
    transition::give_booking_place_back(ch, UserId(booking.user_id))
}

/// Expires the oldest live booking whose hold ran out and frees its battery; returns how many
/// (0 or 1). The expiry is the same transition a collect or cancel makes, so the sweep and a
/// request racing it for one booking cannot both win. One booking per transaction, because only
/// then does the sweep take its rows in the order every request does: a batch would hold one
/// driver's row while it went for the next booking's battery and station, which a request of
/// that driver may hold while it waits for the row (PostgreSQL found exactly that deadlock).
pub fn expire_due(ch: &mut Change) -> Result<usize> {
    let due: Vec<Booking> = bookings::table
        .filter(bookings::status.eq_any([BookingStatus::Confirmed.as_str(), BookingStatus::Ready.as_str()]))
        .filter(bookings::expires_at.le(ch.now))
        .order(bookings::id.asc())
        .limit(1)
        .select(Booking::as_select())
        .load(ch.conn)?;
    let mut expired = Vec::with_capacity(due.len());
    for booking in due {
        match transition::booking(ch, &booking, BookingStatus::Expired) {
            Ok(_) => expired.push(booking),
            // Collected or cancelled since it was read: that request won, and nothing is due here.
            Err(Error::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    for booking in &expired {
        release(ch, booking, BatteryStatus::Available)?;
        let station = stations::load(ch.conn, StationId(booking.station_id))?;
        announce_inventory(ch, &station, InventoryAction::Update)?;
    }
    Ok(expired.len())
}
