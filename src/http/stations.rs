//! `/api/stations/*` and `/api/batteries/*`: the network, its inventory, and battery changes.

use actix_web::http::Method;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::body::{self, double_option, Body, BATCH_BODY_BYTES};
use super::idempotency;
use crate::auth::extract::RequestCaller;
use crate::auth::policy;
use crate::domain::announcements::{self, Announcement};
use crate::domain::batteries::{self, AddBattery, BatteryPatch, ReturnInput};
use crate::domain::ids::{BatteryId, StationId, UserId};
use crate::domain::stations::{self, NewStationInput, StationPatch};
use crate::domain::telemetry;
use crate::domain::values::{Address, Level, Percent, Serial, StationName, StationStatus};
use crate::error::{Error, Result};
use crate::router::Router;
use crate::state::AppState;

pub fn routes(r: &mut impl Router) {
    r.route(Method::GET, "/network", network)
        .route(Method::GET, "/stations", list)
        .route(Method::POST, "/stations", create)
        .route(Method::GET, "/stations/{id}", get)
        .route(Method::PATCH, "/stations/{id}", update)
        .route(Method::GET, "/stations/{id}/batteries", list_batteries)
        .route(Method::POST, "/stations/{id}/batteries", add_battery)
        .route(Method::POST, "/stations/{id}/returns", record_return)
        .route(Method::POST, "/stations/{id}/announcements", announce)
        .route(Method::GET, "/stations/{id}/presence", presence)
        .route(Method::PATCH, "/batteries/{id}", update_battery)
        .route(Method::POST, "/telemetry", telemetry);
}

fn may_read(state: &AppState, caller: &RequestCaller) -> Result<()> {
    policy::may_read_stations(caller.0.as_ref(), state.settings.public_feeds)
}

async fn list(state: web::Data<AppState>, caller: RequestCaller, req: HttpRequest) -> Result<HttpResponse> {
    may_read(&state, &caller)?;
    let request = stations::StationQuery::parse(&body::query(&req)?)?;
    let listing = state.read(move |conn| stations::list(conn, &request)).await?;
    Ok(HttpResponse::Ok().json(listing))
}

async fn network(state: web::Data<AppState>, caller: RequestCaller) -> Result<HttpResponse> {
    may_read(&state, &caller)?;
    let now = crate::clock::now_ms();
    Ok(HttpResponse::Ok().json(state.read(move |conn| stations::network(conn, now)).await?))
}

async fn get(state: web::Data<AppState>, caller: RequestCaller, id: web::Path<i64>) -> Result<HttpResponse> {
    may_read(&state, &caller)?;
    let id = StationId(id.into_inner());
    Ok(HttpResponse::Ok().json(state.read(move |conn| stations::get(conn, id)).await?))
}

#[derive(Deserialize)]
struct CreateStation {
    name: String,
    address: Option<String>,
    status: Option<StationStatus>,
    operator_id: Option<i64>,
}

async fn create(state: web::Data<AppState>, caller: RequestCaller, body: Body<CreateStation>) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let input = body.value;
    let input = NewStationInput {
        name: StationName::parse(&input.name)?,
        address: input.address.as_deref().map(Address::parse).transpose()?,
        status: input.status.unwrap_or(StationStatus::Online),
        operator_id: input.operator_id.map(UserId),
    };
    let station = state.change(move |ch| stations::create(ch, &actor, &input)).await?;
    Ok(HttpResponse::Created().json(station))
}

#[derive(Deserialize)]
pub struct PatchStation {
    // `null` for a field that cannot be empty is a mistake to report, not an absent field.
    #[serde(default, deserialize_with = "double_option")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    address: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    status: Option<Option<StationStatus>>,
    #[serde(default, deserialize_with = "double_option")]
    operator_id: Option<Option<i64>>,
}

async fn update(
    state: web::Data<AppState>,
    caller: RequestCaller,
    id: web::Path<i64>,
    body: Body<PatchStation>,
) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let id = StationId(id.into_inner());
    let patch = body.value.parse()?;
    let (station, _) = state
        .change_then(
            move |ch| {
                let before = stations::operator_of(&stations::load(ch.conn, id)?);
                Ok((stations::update(ch, &actor, id, &patch)?, before))
            },
            |(station, before), hub| {
                hub.stations_changed();
                // Who operates a station decides who sees its bookers' emails: both operators'
                // live connections re-check.
                if *before != station.operator_id {
                    [*before, station.operator_id]
                        .into_iter()
                        .flatten()
                        .for_each(|u| hub.user_changed(u));
                }
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(station))
}

async fn list_batteries(
    state: web::Data<AppState>,
    caller: RequestCaller,
    id: web::Path<i64>,
    req: HttpRequest,
) -> Result<HttpResponse> {
    may_read(&state, &caller)?;
    let id = StationId(id.into_inner());
    let page = body::page(&body::query(&req)?)?;
    Ok(HttpResponse::Ok().json(state.read(move |conn| batteries::list(conn, id, page)).await?))
}

impl PatchStation {
    /// The one parse of a station change, for REST and WebSocket actions alike.
    pub fn parse(self) -> Result<StationPatch> {
        let required = |field: &str| Error::field(field, "cannot be null");
        let name = self.name.map(|n| n.ok_or_else(|| required("name"))).transpose()?;
        let status = self.status.map(|s| s.ok_or_else(|| required("status"))).transpose()?;
        Ok(StationPatch {
            name: name.as_deref().map(StationName::parse).transpose()?,
            address: self
                .address
                .map(|a| a.as_deref().map(Address::parse).transpose())
                .transpose()?,
            status,
            operator_id: self.operator_id.map(|o| o.map(UserId)),
        })
    }
}

async fn add_battery(
    state: web::Data<AppState>,
    caller: RequestCaller,
    req: HttpRequest,
    id: web::Path<i64>,
    body: Body<AddBattery>,
) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let id = StationId(id.into_inner());
    let input = body.value.parse()?;
    if idempotency::key_of(&req)?.is_none() {
        let made = state.add_battery(actor, id, input).await?;
        return Ok(HttpResponse::Created().json(made));
    }
    let who = actor.clone();
    idempotency::run(&state, &req, &body.raw, &who, StatusCode::CREATED, move |ch| {
        batteries::add(ch, &actor, id, &input)
    })
    .await
}

#[derive(Deserialize)]
struct AnnounceRequest {
    message: String,
    level: Option<Level>,
}

/// Who watches the station now, over every node (CONTRACT §4.5).
async fn presence(state: web::Data<AppState>, caller: RequestCaller, id: web::Path<i64>) -> Result<HttpResponse> {
    let id = StationId(id.into_inner());
    Ok(HttpResponse::Ok().json(state.presence(caller.0.as_ref(), id).await?))
}

/// A message to everyone watching the station, as the event `station_announcement` (CONTRACT
/// §4.5): 201 with the announcement.
async fn announce(
    state: web::Data<AppState>,
    caller: RequestCaller,
    req: HttpRequest,
    id: web::Path<i64>,
    body: Body<AnnounceRequest>,
) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let id = StationId(id.into_inner());
    let announcement = Announcement::parse(&body.value.message, body.value.level)?;
    let who = actor.clone();
    idempotency::run(&state, &req, &body.raw, &who, StatusCode::CREATED, move |ch| {
        announcements::announce(ch, &actor, id, &announcement)
    })
    .await
}

#[derive(Deserialize)]
struct ReturnBattery {
    serial: String,
    soc: i64,
}

async fn record_return(
    state: web::Data<AppState>,
    caller: RequestCaller,
    req: HttpRequest,
    id: web::Path<i64>,
    body: Body<ReturnBattery>,
) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let id = StationId(id.into_inner());
    let input = ReturnInput {
        serial: Serial::parse(&body.value.serial)?,
        soc: Percent::parse("soc", body.value.soc)?,
    };
    let who = actor.clone();
    idempotency::run(&state, &req, &body.raw, &who, StatusCode::CREATED, move |ch| {
        batteries::record_return(ch, &actor, id, &input)
    })
    .await
}

#[derive(Deserialize)]
struct PatchBattery {
    soc: Option<i64>,
    soh: Option<i64>,
    status: Option<String>,
}

async fn update_battery(
    state: web::Data<AppState>,
    caller: RequestCaller,
    id: web::Path<i64>,
    body: Body<PatchBattery>,
) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let id = BatteryId(id.into_inner());
    let input = body.value;
    let retire = match input.status.as_deref() {
        None => false,
        Some("retired") => true,
        Some(_) => {
            return Err(Error::field(
                "status",
                "only \"retired\" can be set; other statuses follow the battery's lifecycle",
            ))
        }
    };
    let patch = BatteryPatch {
        soc: input.soc.map(|v| Percent::parse("soc", v)).transpose()?,
        soh: input.soh.map(|v| Percent::parse("soh", v)).transpose()?,
        retire,
    };
    let charged_soc = state.settings.charged_soc;
    let battery = state
        .change(move |ch| batteries::update(ch, &actor, id, &patch, charged_soc))
        .await?;
    Ok(HttpResponse::Ok().json(battery))
}

#[derive(Deserialize)]
struct TelemetryBody {
    readings: Vec<serde_json::Value>,
}

/// Readings in a batch, judged one by one: 200 with what was accepted and what was refused.
async fn telemetry(
    state: web::Data<AppState>,
    caller: RequestCaller,
    body: Body<TelemetryBody, BATCH_BODY_BYTES>,
) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    policy::require_staff(&actor)?;
    let (readings, mut rejected) = telemetry::parse(&body.value.readings)?;
    let charged_soc = state.settings.charged_soc;
    let (accepted, changed, refused) = if readings.is_empty() {
        (0, 0, Vec::new())
    } else {
        state
            .change(move |ch| telemetry::apply(ch, &actor, &readings, charged_soc))
            .await?
    };
    rejected.extend(refused);
    rejected.sort_by_key(|r| r.index);
    Ok(HttpResponse::Ok().json(telemetry::Report {
        accepted,
        changed,
        rejected,
    }))
}
