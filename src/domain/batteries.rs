//! Batteries: added to a station, reporting telemetry, charged, returned by drivers, retired.

use diesel::prelude::*;
use serde::Serialize;

use super::ids::{BatteryId, StationId};
use super::stations::{self, operator_of};
use super::values::{BatteryModel, BatteryStatus, Percent, Serial};
use super::{transition, Change, Listing, Page};
use crate::auth::policy;
use crate::auth::Caller;
use crate::clock::serialize_iso;
use crate::db::models::{Battery, BatteryChange, NewBattery, Station};
use crate::db::schema::batteries;
use crate::db::{on_unique_violation, DbConn};
use crate::error::{Error, Result};
use crate::events::{Audience, EventBody, Inventory, InventoryAction};

#[derive(Clone, Debug, Serialize)]
pub struct BatteryView {
    pub id: BatteryId,
    pub station_id: StationId,
    pub serial: String,
    pub model: String,
    pub status: BatteryStatus,
    pub soc: i32,
    pub soh: i32,
    #[serde(serialize_with = "serialize_iso")]
    pub created_at: i64,
    #[serde(serialize_with = "serialize_iso")]
    pub updated_at: i64,
}

impl BatteryView {
    pub fn from_row(row: Battery) -> Result<BatteryView> {
        Ok(BatteryView {
            id: BatteryId(row.id),
            station_id: StationId(row.station_id),
            status: BatteryStatus::from_db(&row.status)?,
            serial: row.serial,
            model: row.model,
            soc: row.soc,
            soh: row.soh,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

pub fn load(conn: &mut DbConn, id: BatteryId) -> Result<Battery> {
    batteries::table
        .find(id.0)
        .select(Battery::as_select())
        .first(conn)
        .optional()?
        .ok_or(Error::NotFound("Battery"))
}

pub fn list(conn: &mut DbConn, station: StationId, page: Page) -> Result<Listing<BatteryView>> {
    stations::load(conn, station)?;
    let mut query = batteries::table
        .filter(batteries::station_id.eq(station.0))
        .select(Battery::as_select())
        .order(batteries::id.asc())
        .limit(page.fetch())
        .into_boxed();
    if let Some(after) = page.after {
        query = query.filter(batteries::id.gt(after));
    }
    Listing::from_rows(page, query.load(conn)?, |b| b.id, BatteryView::from_row)
}

/// Emits `battery_updated` for a battery as it now is.
pub(super) fn announce_update(ch: &mut Change, battery: &Battery) -> Result<()> {
    ch.emit(
        Audience::Station(StationId(battery.station_id)),
        EventBody::BatteryUpdated {
            station_id: StationId(battery.station_id),
            battery_id: BatteryId(battery.id),
            serial: battery.serial.clone(),
            status: BatteryStatus::from_db(&battery.status)?,
            soc: battery.soc,
            soh: battery.soh,
        },
    );
    Ok(())
}

/// Emits the station's `inventory_update` after a change to its batteries.
pub fn announce_inventory(ch: &mut Change, station: &Station, action: InventoryAction) -> Result<()> {
    let (_, event) = stations::inventory_event(ch, station, action)?;
    ch.emit(Audience::Station(StationId(station.id)), event);
    Ok(())
}

/// A new battery is assumed full and healthy unless told otherwise.
const NEW_BATTERY_PERCENT: i64 = 100;

/// A new battery as a client sends it (REST body, `/ws` `add_battery` data).
#[derive(serde::Deserialize)]
pub struct AddBattery {
    serial: String,
    model: String,
    soc: Option<i64>,
    soh: Option<i64>,
}

impl AddBattery {
    /// The one parse of a new battery, for REST and WebSocket actions alike.
    pub fn parse(&self) -> Result<NewBatteryInput> {
        Ok(NewBatteryInput {
            serial: Serial::parse(&self.serial)?,
            model: BatteryModel::parse(&self.model)?,
            soc: Percent::parse("soc", self.soc.unwrap_or(NEW_BATTERY_PERCENT))?,
            soh: Percent::parse("soh", self.soh.unwrap_or(NEW_BATTERY_PERCENT))?,
        })
    }
}

pub struct NewBatteryInput {
    pub serial: Serial,
    pub model: String,
    pub soc: Percent,
    pub soh: Percent,
}

/// What a battery added to a station emits: `battery_added` and the station's `inventory_update`,
/// each with the station's counts right after the addition.
pub(super) fn added_events(station: &Station, battery: BatteryId, inventory: Inventory) -> [(Audience, EventBody); 2] {
    let station_id = StationId(station.id);
    [
        (
            Audience::Station(station_id),
            EventBody::BatteryAdded {
                station_id,
                station_name: station.name.clone(),
                battery_id: battery,
                available_batteries: inventory.available_batteries,
                total_batteries: inventory.total_batteries,
            },
        ),
        (
            Audience::Station(station_id),
            stations::inventory_update(station, inventory, InventoryAction::Add),
        ),
    ]
}

/// The refusal for a serial already in use (code, message).
const SERIAL_TAKEN: (&str, &str) = ("serial_taken", "A battery with this serial already exists");

/// The refusal for a serial already in use, whichever way an addition finds it (here, or staged
/// with others in [`super::additions`]).
pub(super) fn serial_taken() -> Error {
    Error::conflict(SERIAL_TAKEN.0, SERIAL_TAKEN.1)
}

pub fn add(ch: &mut Change, actor: &Caller, station_id: StationId, input: &NewBatteryInput) -> Result<BatteryView> {
    let station = stations::load(ch.conn, station_id)?;
    policy::require_station_staff(actor, operator_of(&station))?;
    let row: Battery = diesel::insert_into(batteries::table)
        .values(NewBattery {
            station_id: station.id,
            serial: input.serial.as_str(),
            model: &input.model,
            status: BatteryStatus::Available.as_str(),
            soc: input.soc.get(),
            soh: input.soh.get(),
            created_at: ch.now,
            updated_at: ch.now,
        })
        .returning(batteries::all_columns)
        .get_result(ch.conn)
        .map_err(on_unique_violation(SERIAL_TAKEN.0, SERIAL_TAKEN.1))?;
    transition::battery_added(ch, &row)?;
    let (inventory, _) = stations::inventory_event(ch, &station, InventoryAction::Add)?;
    for (audience, event) in added_events(&station, BatteryId(row.id), inventory) {
        ch.emit(audience, event);
    }
    BatteryView::from_row(row)
}

#[derive(Debug, Default)]
pub struct BatteryPatch {
    pub soc: Option<Percent>,
    pub soh: Option<Percent>,
    /// `status: retired` — the only status a client sets directly; the rest follow the lifecycle.
    pub retire: bool,
}

/// Which status a patch moves a battery in `current` to, or why it cannot: the rule, applied to the
/// state the battery was read in and again, by the transition, to the state a concurrent change
/// left it in.
pub(super) fn patched_status(current: BatteryStatus, patch: &BatteryPatch, charged_soc: i32) -> Result<BatteryStatus> {
    match current {
        BatteryStatus::Retired => Err(Error::conflict("battery_retired", "This battery is retired")),
        BatteryStatus::Booked if patch.retire => Err(Error::conflict(
            "battery_booked",
            "Cancel the booking holding this battery first",
        )),
        BatteryStatus::Collected if !patch.retire => Err(Error::conflict(
            "battery_not_at_station",
            "This battery is with a driver; record its return first",
        )),
        _ if patch.retire => Ok(BatteryStatus::Retired),
        BatteryStatus::Charging if patch.soc.is_some_and(|soc| soc.get() >= charged_soc) => {
            Ok(BatteryStatus::Available)
        }
        other => Ok(other),
    }
}

/// Telemetry (staff) and retirement (admins). A charging battery whose charge reaches
/// `charged_soc` becomes available.
pub fn update(
    ch: &mut Change,
    actor: &Caller,
    id: BatteryId,
    patch: &BatteryPatch,
    charged_soc: i32,
) -> Result<BatteryView> {
    if patch.soc.is_none() && patch.soh.is_none() && !patch.retire {
        return Err(Error::field("soc", "give soc, soh or status"));
    }
    let battery = load(ch.conn, id)?;
    let station = stations::load(ch.conn, StationId(battery.station_id))?;
    if patch.retire {
        policy::require_admin(actor)?;
    } else {
        policy::require_station_staff(actor, operator_of(&station))?;
    }
    let status = patched_status(BatteryStatus::from_db(&battery.status)?, patch, charged_soc)?;
    let change = BatteryChange {
        status: Some(status.as_str()),
        station_id: None,
        soc: patch.soc.map(Percent::get),
        soh: patch.soh.map(Percent::get),
        updated_at: ch.now,
    };
    let row = transition::battery(ch, &battery, &change, |now| {
        patched_status(now, patch, charged_soc).map(|_| ())
    })?;
    if !patch.retire {
        announce_update(ch, &row)?;
    }
    announce_inventory(ch, &station, InventoryAction::Update)?;
    BatteryView::from_row(row)
}

pub struct ReturnInput {
    pub serial: Serial,
    pub soc: Percent,
}

/// Only a battery a driver holds can be returned.
fn returnable(current: BatteryStatus) -> Result<()> {
    match current {
        BatteryStatus::Collected => Ok(()),
        _ => Err(Error::conflict(
            "battery_not_collected",
            "Only a collected battery can be returned",
        )),
    }
}

/// A driver brings a collected battery back to this station; it starts charging here.
pub fn record_return(
    ch: &mut Change,
    actor: &Caller,
    station_id: StationId,
    input: &ReturnInput,
) -> Result<BatteryView> {
    let station = stations::load(ch.conn, station_id)?;
    policy::require_station_staff(actor, operator_of(&station))?;
    let battery: Battery = batteries::table
        .filter(batteries::serial.eq(input.serial.as_str()))
        .select(Battery::as_select())
        .first(ch.conn)
        .optional()?
        .ok_or(Error::NotFound("Battery"))?;
    returnable(BatteryStatus::from_db(&battery.status)?)?;
    let change = BatteryChange {
        status: Some(BatteryStatus::Charging.as_str()),
        station_id: Some(station_id.0),
        soc: Some(input.soc.get()),
        soh: None,
        updated_at: ch.now,
    };
    let row = transition::battery(ch, &battery, &change, returnable)?;
    announce_update(ch, &row)?;
    announce_inventory(ch, &station, InventoryAction::Update)?;
    BatteryView::from_row(row)
}
