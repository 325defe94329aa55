//! Liveness and readiness, for load balancers and orchestrators.

use actix_web::{web, HttpResponse};
use diesel::connection::SimpleConnection;
use serde_json::json;

use crate::error::Result;
use crate::state::AppState;

/// The process is up and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// The process can do its work: the database answers (503 otherwise).
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse> {
    state.read(|conn| Ok(conn.batch_execute("SELECT 1")?)).await?;
    Ok(HttpResponse::Ok().json(json!({ "status": "ready", "database": "ok" })))
}
