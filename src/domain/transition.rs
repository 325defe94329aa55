//! The one way a booking, a battery or a station leaves a state (CONTRACT §1 v2: every transition
//! is exclusive).
//!
//! A service reads the row, decides from its state what happens and which events say so, and then
//! moves the row with a conditional update naming the state it decided on —
//! `UPDATE … SET … WHERE id = ? AND status = <the state read>` — and checks that it matched. When a
//! concurrent transaction moved the row first, the update matches nothing: the service refuses
//! with 409, its transaction rolls back, and it changes and emits nothing. On PostgreSQL (READ
//! COMMITTED) the second writer waits for the first one's row lock and then evaluates the condition
//! against the committed row, so of two requests leaving one state exactly one wins; on SQLite
//! writes are serial and the condition is simply true. One idiom, exact on both backends.
//!
//! Conditional updates rather than `SELECT … FOR UPDATE`, because SQLite has no row locks and the
//! same statement must be the guard on both.
//!
//! Every transaction that may produce events takes the event counter's row first
//! (`events::log::take_turn`), so on PostgreSQL such transactions — each a batch of changes, see
//! [`super::commit`] — run one after another and never wait on each other. Within one, the rows are
//! still taken in one order — bookings, then batteries, then their stations' counts, then the
//! driver's row.
//!
//! A station's inventory counts move here too, with every battery that enters, leaves or changes
//! state: no read or change ever counts a station's batteries (CONTRACT §5 v2).

use diesel::prelude::*;

use super::ids::UserId;
use super::values::{BatteryStatus, BookingStatus, StationStatus};
use super::Change;
use crate::db::models::{Battery, BatteryChange, Booking, BookingChange, Station, StationChange};
use crate::db::schema::{batteries, bookings, stations, users};
use crate::error::{Error, Result};

/// The refusal for a booking that is not in a state the request can move it from.
pub fn wrong_booking_state(status: &str) -> Error {
    Error::conflict("invalid_booking_state", format!("The booking is {status}"))
}

/// Moves a booking from the state it was read in to `to`, stamping the time of the step; refuses
/// with `invalid_booking_state` when another transaction moved it first. A booking that stops
/// being live must then give its battery and its driver's place back
/// ([`give_booking_place_back`]), in that order — the lock order above.
pub fn booking(ch: &mut Change, row: &Booking, to: BookingStatus) -> Result<Booking> {
    let stamp = |status: BookingStatus| (to == status).then_some(ch.now);
    let change = BookingChange {
        status: to.as_str(),
        updated_at: ch.now,
        ready_at: stamp(BookingStatus::Ready),
        collected_at: stamp(BookingStatus::Collected),
        cancelled_at: stamp(BookingStatus::Cancelled),
    };
    let moved: Option<Booking> = diesel::update(bookings::table.find(row.id).filter(bookings::status.eq(&row.status)))
        .set(&change)
        .returning(bookings::all_columns)
        .get_result(ch.conn)
        .optional()?;
    let Some(moved) = moved else {
        let now: String = bookings::table.find(row.id).select(bookings::status).first(ch.conn)?;
        return Err(wrong_booking_state(&now));
    };
    Ok(moved)
}

/// Moves a battery from the state it was read in, or `None` when another transaction moved it
/// first. For callers that try another row on a loss (claiming a battery for a booking).
pub fn try_battery(ch: &mut Change, row: &Battery, change: &BatteryChange) -> Result<Option<Battery>> {
    let moved: Option<Battery> =
        diesel::update(batteries::table.find(row.id).filter(batteries::status.eq(&row.status)))
            .set(change)
            .returning(batteries::all_columns)
            .get_result(ch.conn)
            .optional()?;
    if let Some(moved) = &moved {
        recount(
            ch,
            Some((row.station_id, &row.status)),
            Some((moved.station_id, &moved.status)),
        )?;
    }
    Ok(moved)
}

/// A battery has just been inserted: its station counts it.
pub fn battery_added(ch: &mut Change, row: &Battery) -> Result<()> {
    recount(ch, None, Some((row.station_id, &row.status)))
}

/// What one battery adds to its station's counts, by status: collected batteries are with a
/// driver and retired ones are gone, so neither is counted.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Counts {
    pub available: i32,
    pub booked: i32,
    pub charging: i32,
    pub total: i32,
}

impl Counts {
    pub fn of(status: &str, n: i32) -> Counts {
        let mut counts = Counts::default();
        match status {
            "available" => counts.available = n,
            "booked" => counts.booked = n,
            "charging" => counts.charging = n,
            _ => return counts,
        }
        counts.total = n;
        counts
    }

    pub fn plus(self, other: Counts) -> Counts {
        Counts {
            available: self.available + other.available,
            booked: self.booked + other.booked,
            charging: self.charging + other.charging,
            total: self.total + other.total,
        }
    }

    fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// Adds `counts` to a station's counts (negative numbers take away). The CHECK constraints turn a
/// miscount below zero into a failed transaction rather than a silent drift.
pub fn shift_counts(ch: &mut Change, station: i64, counts: Counts) -> Result<()> {
    if counts.is_zero() {
        return Ok(());
    }
    let now: Option<(i32, i32, i32)> = diesel::update(stations::table.find(station))
        .set((
            stations::available_batteries.eq(stations::available_batteries + counts.available),
            stations::booked_batteries.eq(stations::booked_batteries + counts.booked),
            stations::charging_batteries.eq(stations::charging_batteries + counts.charging),
            stations::total_batteries.eq(stations::total_batteries + counts.total),
        ))
        .returning((
            stations::available_batteries,
            stations::booked_batteries,
            stations::total_batteries,
        ))
        .get_result(ch.conn)
        .optional()?;
    if let Some((available, booked, total)) = now {
        ch.counted(
            station,
            crate::events::Inventory {
                available_batteries: available.into(),
                booked_batteries: booked.into(),
                total_batteries: total.into(),
            },
        );
    }
    Ok(())
}

/// Moves one battery's weight in the counts from (station, status) to (station, status).
fn recount(ch: &mut Change, from: Option<(i64, &str)>, to: Option<(i64, &str)>) -> Result<()> {
    let leaving = from.map(|(station, status)| (station, Counts::of(status, -1)));
    let entering = to.map(|(station, status)| (station, Counts::of(status, 1)));
    match (leaving, entering) {
        (Some((a, out)), Some((b, into))) if a == b => shift_counts(ch, a, out.plus(into)),
        (leaving, entering) => {
            // Two stations (a return elsewhere): in id order, so two returns crossing each other
            // cannot wait on each other's station.
            let mut both: Vec<(i64, Counts)> = leaving.into_iter().chain(entering).collect();
            both.sort_by_key(|(station, _)| *station);
            for (station, counts) in both {
                shift_counts(ch, station, counts)?;
            }
            Ok(())
        }
    }
}

/// Moves a battery from the state it was read in. On a loss the request is refused as `check` —
/// the same rule the service applied to the state it read — refuses the state the battery is in
/// now, or, when that state would have allowed the request, with `invalid_battery_state`: the
/// request was decided on a state that no longer holds.
pub fn battery(
    ch: &mut Change,
    row: &Battery,
    change: &BatteryChange,
    check: impl FnOnce(BatteryStatus) -> Result<()>,
) -> Result<Battery> {
    if let Some(moved) = try_battery(ch, row, change)? {
        return Ok(moved);
    }
    let now: String = batteries::table.find(row.id).select(batteries::status).first(ch.conn)?;
    let now = BatteryStatus::from_db(&now)?;
    check(now)?;
    Err(Error::conflict(
        "invalid_battery_state",
        format!("The battery became {now} while this request ran"),
    ))
}

/// Updates a station. A change of status is a transition: it applies only if the station is still
/// in the status it was read in, else `invalid_station_state`. Other fields are written as given
/// and never rewrite the status a concurrent request set.
pub fn station(ch: &mut Change, row: &Station, change: &StationChange) -> Result<Station> {
    let mut update = diesel::update(stations::table.find(row.id)).set(change).into_boxed();
    if change.status.is_some() {
        update = update.filter(stations::status.eq(&row.status));
    }
    let moved: Option<Station> = update.returning(stations::all_columns).get_result(ch.conn).optional()?;
    match moved {
        Some(moved) => Ok(moved),
        None => {
            let now: Option<String> = stations::table
                .find(row.id)
                .select(stations::status)
                .first(ch.conn)
                .optional()?;
            let now = StationStatus::from_db(&now.ok_or(Error::NotFound("Station"))?)?;
            Err(Error::conflict(
                "invalid_station_state",
                format!("The station became {now} while this request ran"),
            ))
        }
    }
}

/// Takes one of a driver's places for a live booking, or refuses with `booking_limit_reached`
/// when they hold `limit` already (`0`: no limit). The count lives on the driver's row and moves
/// by a conditional update, so concurrent bookings by one driver queue on that row and each sees
/// the others' places — a count of their bookings would read the same old number in each.
pub fn take_booking_place(ch: &mut Change, user: UserId, limit: u32) -> Result<()> {
    let target = users::table.find(user.0);
    let taken = if limit == 0 {
        diesel::update(target)
            .set(users::active_bookings.eq(users::active_bookings + 1))
            .execute(ch.conn)?
    } else {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        diesel::update(target.filter(users::active_bookings.lt(limit)))
            .set(users::active_bookings.eq(users::active_bookings + 1))
            .execute(ch.conn)?
    };
    if taken == 0 {
        return Err(Error::conflict(
            "booking_limit_reached",
            format!("A driver holds at most {limit} active bookings; collect or cancel one first"),
        ));
    }
    Ok(())
}

/// Gives back the place [`take_booking_place`] took, when a booking stops being live.
pub fn give_booking_place_back(ch: &mut Change, user: UserId) -> Result<()> {
    // The CHECK (active_bookings >= 0) turns a miscount into a failed transaction, not a silent drift.
    diesel::update(users::table.find(user.0))
        .set(users::active_bookings.eq(users::active_bookings - 1))
        .execute(ch.conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn collected_and_retired_batteries_are_in_no_count() {
        assert_eq!(
            Counts::of("available", 1),
            Counts {
                available: 1,
                total: 1,
                ..Counts::default()
            }
        );
        assert_eq!(
            Counts::of("booked", -1),
            Counts {
                booked: -1,
                total: -1,
                ..Counts::default()
            }
        );
        assert_eq!(
            Counts::of("charging", 1),
            Counts {
                charging: 1,
                total: 1,
                ..Counts::default()
            }
        );
        assert_eq!(Counts::of("collected", 1), Counts::default());
        assert_eq!(Counts::of("retired", 1), Counts::default());
    }
}
