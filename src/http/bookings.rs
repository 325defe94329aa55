//! `/api/bookings/*`: booking a battery and moving the booking through its lifecycle.

use actix_web::http::Method;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::body::{self, Body, NoBody};
use super::idempotency;
use crate::auth::extract::RequestCaller;
use crate::auth::Caller;
use crate::domain::bookings::{self, BookingFilter, BookingView};
use crate::domain::ids::{BookingId, StationId, UserId};
use crate::domain::values::BookingStatus;
use crate::domain::Change;
use crate::error::{Error, Result};
use crate::router::Router;
use crate::state::AppState;

pub fn routes(r: &mut impl Router) {
    r.route(Method::POST, "/bookings", book)
        .route(Method::GET, "/bookings", list)
        .route(Method::POST, "/bookings/{id}/ready", ready)
        .route(Method::POST, "/bookings/{id}/collect", collect)
        .route(Method::POST, "/bookings/{id}/cancel", cancel);
}

#[derive(Deserialize)]
struct BookRequest {
    station_id: i64,
}

async fn book(
    state: web::Data<AppState>,
    caller: RequestCaller,
    req: HttpRequest,
    body: Body<BookRequest>,
) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let station = StationId(body.value.station_id);
    let rules = state.settings.booking_rules();
    let who = actor.clone();
    idempotency::run(&state, &req, &body.raw, &who, StatusCode::CREATED, move |ch| {
        bookings::book(ch, &actor, station, rules)
    })
    .await
}

async fn list(state: web::Data<AppState>, caller: RequestCaller, req: HttpRequest) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let query = body::query(&req)?;
    let page = body::page(&query)?;
    let status = match query.get("status") {
        None => None,
        Some(raw) => Some(
            BookingStatus::ALL
                .iter()
                .copied()
                .find(|s| s.as_str() == raw)
                .ok_or_else(|| Error::field("status", "is not a booking status"))?,
        ),
    };
    let filter = BookingFilter {
        user_id: body::int_param(&query, "user_id")?.map(UserId),
        station_id: body::int_param(&query, "station_id")?.map(StationId),
        status,
    };
    let listing = state
        .read(move |conn| bookings::list(conn, &actor, &filter, page))
        .await?;
    Ok(HttpResponse::Ok().json(listing))
}

/// The three lifecycle steps share their shape: an actor, a booking id, a change.
async fn step(
    state: web::Data<AppState>,
    caller: RequestCaller,
    id: web::Path<i64>,
    op: fn(&mut Change, &Caller, BookingId) -> Result<BookingView>,
) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let id = BookingId(id.into_inner());
    let booking = state.change(move |ch| op(ch, &actor, id)).await?;
    Ok(HttpResponse::Ok().json(booking))
}

async fn ready(
    state: web::Data<AppState>,
    caller: RequestCaller,
    id: web::Path<i64>,
    _: NoBody,
) -> Result<HttpResponse> {
    step(state, caller, id, bookings::mark_ready).await
}

async fn collect(
    state: web::Data<AppState>,
    caller: RequestCaller,
    id: web::Path<i64>,
    _: NoBody,
) -> Result<HttpResponse> {
    step(state, caller, id, bookings::collect).await
}

async fn cancel(
    state: web::Data<AppState>,
    caller: RequestCaller,
    id: web::Path<i64>,
    _: NoBody,
) -> Result<HttpResponse> {
    step(state, caller, id, bookings::cancel).await
}
