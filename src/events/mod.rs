//! Events: what clients are told about a committed change.
//!
//! An [`EventBody`] has exactly the fields of its seed-001 message (the `type` tag included); the
//! event log stores it as JSON beside its [`Audience`], and `event_id` and `timestamp` are added
//! when it is read. No other module builds event JSON.

pub mod log;
pub mod wire;

use serde::{Deserialize, Serialize};

use crate::domain::ids::{BatteryId, BookingId, EventId, StationId, UserId};
use crate::domain::values::{BatteryStatus, Level, StationStatus};

/// Who an event is for: a station's subscribers, or one user's own connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    Station(StationId),
    User(UserId),
}

/// The `action` of seed 001's `inventory_update`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InventoryAction {
    Update,
    Add,
    Book,
    Collect,
    Snapshot,
}

/// A station's counts at the moment of an event (CONTRACT §1, "Inventory of a station").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub available_batteries: i64,
    pub booked_batteries: i64,
    pub total_batteries: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    InventoryUpdate {
        station_id: StationId,
        station_name: String,
        #[serde(flatten)]
        inventory: Inventory,
        action: InventoryAction,
    },
    BatteryAdded {
        station_id: StationId,
        station_name: String,
        battery_id: BatteryId,
        available_batteries: i64,
        total_batteries: i64,
    },
    BatteryBooked {
        station_id: StationId,
        station_name: String,
        battery_id: BatteryId,
        #[serde(flatten)]
        inventory: Inventory,
        /// The booking user's email: personal data, shown only to admins and the station's operator.
        user: String,
    },
    BatteryCollected {
        station_id: StationId,
        station_name: String,
        battery_id: BatteryId,
        #[serde(flatten)]
        inventory: Inventory,
    },
    BatteryUpdated {
        station_id: StationId,
        battery_id: BatteryId,
        serial: String,
        status: BatteryStatus,
        soc: i32,
        soh: i32,
    },
    StationStatus {
        station_id: StationId,
        station_name: String,
        status: StationStatus,
        message: String,
    },
    BookingConfirmed {
        booking_id: BookingId,
        station_name: String,
        battery_info: String,
        message: String,
    },
    BookingReady {
        booking_id: BookingId,
        station_name: String,
        message: String,
    },
    Notification {
        title: String,
        message: String,
        level: Level,
    },
    /// Staff to everyone watching a station (CONTRACT §4.5).
    StationAnnouncement {
        station_id: StationId,
        station_name: String,
        message: String,
        level: Level,
    },
}

impl EventBody {
    /// Every `type` an event can have (what `docs/asyncapi.json` must document), in declaration
    /// order; a unit test holds it to the variants.
    pub const KINDS: [&'static str; 10] = [
        "inventory_update",
        "battery_added",
        "battery_booked",
        "battery_collected",
        "battery_updated",
        "station_status",
        "booking_confirmed",
        "booking_ready",
        "notification",
        "station_announcement",
    ];

    /// The seed-001 `type`, also stored in the log's `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::InventoryUpdate { .. } => "inventory_update",
            EventBody::BatteryAdded { .. } => "battery_added",
            EventBody::BatteryBooked { .. } => "battery_booked",
            EventBody::BatteryCollected { .. } => "battery_collected",
            EventBody::BatteryUpdated { .. } => "battery_updated",
            EventBody::StationStatus { .. } => "station_status",
            EventBody::BookingConfirmed { .. } => "booking_confirmed",
            EventBody::BookingReady { .. } => "booking_ready",
            EventBody::Notification { .. } => "notification",
            EventBody::StationAnnouncement { .. } => "station_announcement",
        }
    }
}

/// A committed event, as read back from the log (and as nodes send it to each other).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    /// Unix milliseconds of the commit.
    pub at: i64,
    pub audience: Audience,
    pub body: EventBody,
}

/// The admin's view of the log (`GET /api/events`): the full, unfiltered message plus its routing.
#[derive(Serialize)]
pub struct EventRecord {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub station_id: Option<StationId>,
    pub user_id: Option<UserId>,
    pub created_at: String,
    pub payload: EventBody,
}

impl From<Event> for EventRecord {
    fn from(event: Event) -> EventRecord {
        let (station_id, user_id) = match event.audience {
            Audience::Station(s) => (Some(s), None),
            Audience::User(u) => (None, Some(u)),
        };
        EventRecord {
            event_id: event.id,
            kind: event.body.kind(),
            station_id,
            user_id,
            created_at: crate::clock::iso(event.at),
            payload: event.body,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// seed 001's `battery_booked` example, for tests here and in `wire`.
    pub(crate) fn booked_body() -> EventBody {
        EventBody::BatteryBooked {
            station_id: StationId(1),
            station_name: "Downtown Station".into(),
            battery_id: BatteryId(5),
            inventory: Inventory {
                available_batteries: 14,
                booked_batteries: 4,
                total_batteries: 18,
            },
            user: "user@example.com".into(),
        }
    }

    #[test]
    fn kinds_name_every_variant() {
        // serde lists an enum's variants when it meets an unknown one; that list is the variants
        // as they are, so a variant added without its kind fails here.
        let error = serde_json::from_value::<EventBody>(json!({"type": "no_such_kind"}))
            .unwrap_err()
            .to_string();
        let listed: Vec<&str> = error
            .split("expected one of ")
            .nth(1)
            .unwrap_or_else(|| panic!("no variant list in {error:?}"))
            .split(", ")
            .map(|name| name.trim_matches('`'))
            .collect();
        assert_eq!(listed, EventBody::KINDS);
    }

    #[test]
    fn bodies_serialize_with_seed_field_names() {
        let body = booked_body();
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"type": "battery_booked", "station_id": 1, "station_name": "Downtown Station",
                   "battery_id": 5, "available_batteries": 14, "booked_batteries": 4,
                   "total_batteries": 18, "user": "user@example.com"})
        );
        let back: EventBody = serde_json::from_value(serde_json::to_value(&body).unwrap()).unwrap();
        assert_eq!(back, body);
        assert_eq!(body.kind(), "battery_booked");
    }
}
