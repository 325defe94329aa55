//! The REST API (CONTRACT §5) and health endpoints. Handlers parse input at the edge, call one
//! domain service through [`AppState::change`](crate::state::AppState::change) or
//! [`AppState::read`](crate::state::AppState::read), and return its value as JSON.

mod auth;
mod body;
mod bookings;
mod dashboard;
mod events;
mod health;
mod idempotency;
mod notifications;
mod realtime;
pub mod request_log;
pub mod stations;
mod users;

use actix_web::{web, HttpResponse};

use crate::error::{Error, Result};

pub use body::{from_value, MAX_BODY_BYTES};
pub use idempotency::prune as prune_idempotency_keys;

/// Registers every route. Paths are matched without a trailing slash (the app trims it).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PathConfig::default().error_handler(|_, _| Error::NotFound("Resource").into()))
        .app_data(
            web::QueryConfig::default()
                .error_handler(|_, _| Error::field("query", "is not a valid query string").into()),
        )
        .route("/", web::get().to(dashboard::page))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .service(
            web::scope("/api")
                .configure(auth::routes)
                .configure(stations::routes)
                .configure(bookings::routes)
                .configure(notifications::routes)
                .configure(users::routes)
                .configure(events::routes)
                .configure(realtime::routes),
        )
        .default_service(web::to(not_found));
}

async fn not_found() -> Result<HttpResponse> {
    Err(Error::NotFound("Route"))
}
