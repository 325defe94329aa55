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

/// The process can do its work: the database answers (503 otherwise). The backplane is reported
/// but does not decide: while it is down this node still serves everything, other nodes' events
/// reaching it from the log a little later (README, "Running several nodes").
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse> {
    state.read(|conn| Ok(conn.batch_execute("SELECT 1")?)).await?;
    let backplane = match &state.hub.backplane {
        None => "off",
        Some(backplane) if backplane.connected() => "ok",
        Some(_) => "down",
    };
    Ok(HttpResponse::Ok().json(json!({
        "status": if backplane == "down" { "degraded" } else { "ready" },
        "database": "ok",
        "backplane": backplane,
        "node": &*state.hub.node,
    })))
}

/// Prometheus metrics in the text format; the pool and subscription gauges are read now.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let metrics = &state.hub.metrics;
    let pool = state.pool.state();
    metrics.db_pool_connections.set(i64::from(pool.connections));
    metrics.db_pool_idle.set(i64::from(pool.idle_connections));
    let stats = state.hub.registry.stats().await;
    metrics.subscriptions.set(stats.subscriptions as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render())
}
