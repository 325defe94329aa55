//! The REST API (CONTRACT §5), health endpoints and the protocol documents. Handlers parse input at
//! the edge, call one domain service through [`AppState::change`](crate::state::AppState::change)
//! or [`AppState::read`](crate::state::AppState::read), and return its value as JSON. Every route
//! is declared once, against [`Router`], so the routes can be listed as well as served.

mod auth;
mod body;
mod bookings;
mod dashboard;
mod docs;
mod events;
mod health;
mod idempotency;
mod notifications;
mod realtime;
pub mod request_log;
pub mod stations;
mod users;

use actix_web::http::Method;
use actix_web::{web, HttpResponse};

use crate::error::{Error, Result};
pub use crate::router::{Recorder, Router, Served};
pub use body::MAX_BODY_BYTES;
pub use idempotency::prune as prune_idempotency_keys;

/// Registers every route on the app, and what the routes share: extractor errors in the
/// contract's form, and the contract's 404 for any other path.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PathConfig::default().error_handler(|_, _| Error::NotFound("Resource").into()))
        .app_data(
            web::QueryConfig::default()
                .error_handler(|_, _| Error::field("query", "is not a valid query string").into()),
        );
    routes(&mut Served::new(cfg));
    cfg.default_service(web::to(not_found));
}

/// Every HTTP route, declared once. Paths are matched without a trailing slash (the app trims it).
pub fn routes(r: &mut impl Router) {
    r.route(Method::GET, "/", dashboard::page)
        .route(Method::GET, "/client.js", dashboard::client)
        .route(Method::GET, "/console", dashboard::console)
        .route(Method::GET, "/healthz", health::healthz)
        .route(Method::GET, "/readyz", health::readyz)
        .route(Method::GET, "/metrics", health::metrics)
        .scope("/api", |r| {
            auth::routes(r);
            stations::routes(r);
            bookings::routes(r);
            notifications::routes(r);
            users::routes(r);
            events::routes(r);
            realtime::routes(r);
            docs::routes(r);
        });
}

/// The HTTP routes the server serves, as `(method, full path)` with `{name}` path parameters:
/// what `docs/openapi.json` must document, no more and no less.
pub fn http_routes() -> Vec<(Method, String)> {
    Recorder::record(routes)
}

/// The app's 404 for a path no route serves (or a method a path does not take). Its message,
/// "Route not found", tells it from a missing resource ("Station not found", …).
async fn not_found() -> Result<HttpResponse> {
    Err(Error::NotFound("Route"))
}
