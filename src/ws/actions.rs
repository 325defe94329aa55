//! Requests over `/ws` (`{"type":"request","request_id",…,"action",…,"data":{…}}`): the same
//! input parsing, domain services and authorization as their REST twins, answered with the same
//! error codes.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::auth::extract::load_caller;
use crate::auth::{policy, Identity};
use crate::clock::now_ms;
use crate::domain::announcements::{self, Announcement};
use crate::domain::batteries::AddBattery;
use crate::domain::ids::{BookingId, StationId};
use crate::domain::input::from_value;
use crate::domain::stations::StationPatch;
use crate::domain::values::{Level, StationStatus};
use crate::domain::{bookings, stations};
use crate::error::{Error, Result};
use crate::state::AppState;

#[derive(Deserialize)]
struct StationRef {
    station_id: i64,
}

#[derive(Deserialize)]
struct BookingRef {
    booking_id: i64,
}

#[derive(Deserialize)]
struct ListStations {
    limit: Option<i64>,
    cursor: Option<String>,
    q: Option<String>,
    status: Option<String>,
    available_min: Option<i64>,
    sort: Option<String>,
}

impl ListStations {
    /// The same parameters as `GET /api/stations`, parsed by the same rule.
    fn query(self) -> Result<stations::StationQuery> {
        let numbers = [("limit", self.limit), ("available_min", self.available_min)];
        let texts = [
            ("cursor", self.cursor),
            ("q", self.q),
            ("status", self.status),
            ("sort", self.sort),
        ];
        let params = numbers
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_string())))
            .chain(texts.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))))
            .collect();
        stations::StationQuery::parse(&params)
    }
}

#[derive(Deserialize)]
struct SetStatus {
    station_id: i64,
    status: StationStatus,
}

#[derive(Deserialize)]
struct AnnounceRequest {
    station_id: i64,
    message: String,
    level: Option<Level>,
}

#[derive(Deserialize)]
struct AddBatteryRequest {
    station_id: i64,
    #[serde(flatten)]
    battery: AddBattery,
}

fn to_value<T: serde::Serialize>(value: T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| Error::Internal(e.into()))
}

/// Runs one request as the connection's caller as they are now: the role and state REST would
/// read (through the same cache, forgotten on every change), and never past the token's `exp`.
pub async fn perform(state: Arc<AppState>, identity: Option<Identity>, action: String, data: Value) -> Result<Value> {
    let actor = match identity {
        None => None,
        Some(identity) => {
            if identity.credentials.expires_at * 1000 <= now_ms() {
                return Err(Error::TokenExpired);
            }
            Some(load_caller(&state, identity.credentials).await?)
        }
    };
    let signed_in = || actor.clone().ok_or(Error::Unauthenticated);
    match action.as_str() {
        "list_stations" => {
            policy::may_read_stations(actor.as_ref(), state.settings.public_feeds)?;
            let request = from_value::<ListStations>(data)?.query()?;
            to_value(state.read(move |conn| stations::list(conn, &request)).await?)
        }
        "get_station" => {
            policy::may_read_stations(actor.as_ref(), state.settings.public_feeds)?;
            let StationRef { station_id } = from_value(data)?;
            to_value(
                state
                    .read(move |conn| stations::get(conn, StationId(station_id)))
                    .await?,
            )
        }
        "book_battery" => {
            let actor = signed_in()?;
            let StationRef { station_id } = from_value(data)?;
            let rules = state.settings.booking_rules();
            to_value(
                state
                    .change(move |ch| bookings::book(ch, &actor, StationId(station_id), rules))
                    .await?,
            )
        }
        "cancel_booking" | "mark_ready" | "collect_booking" => {
            let actor = signed_in()?;
            let BookingRef { booking_id } = from_value(data)?;
            let step = match action.as_str() {
                "cancel_booking" => bookings::cancel,
                "mark_ready" => bookings::mark_ready,
                _ => bookings::collect,
            };
            to_value(state.change(move |ch| step(ch, &actor, BookingId(booking_id))).await?)
        }
        "set_station_status" => {
            let actor = signed_in()?;
            let SetStatus { station_id, status } = from_value(data)?;
            let patch = StationPatch {
                status: Some(status),
                ..StationPatch::default()
            };
            to_value(
                state
                    .change(move |ch| stations::update(ch, &actor, StationId(station_id), &patch))
                    .await?,
            )
        }
        "add_battery" => {
            let actor = signed_in()?;
            let request: AddBatteryRequest = from_value(data)?;
            let input = request.battery.parse()?;
            let station = StationId(request.station_id);
            to_value(state.add_battery(actor, station, input).await?)
        }
        "announce" => {
            let actor = signed_in()?;
            let request: AnnounceRequest = from_value(data)?;
            let announcement = Announcement::parse(&request.message, request.level)?;
            let station = StationId(request.station_id);
            to_value(
                state
                    .change(move |ch| announcements::announce(ch, &actor, station, &announcement))
                    .await?,
            )
        }
        other => Err(Error::field("action", format!("unknown action {other:?}"))),
    }
}
