//! Liveness and readiness, for load balancers and orchestrators.

use actix_web::{web, HttpResponse};
use diesel::connection::SimpleConnection;
use serde_json::json;

use crate::error::Result;
use crate::realtime::messages::StatsQuery;
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

/// Prometheus metrics in the text format; the pool and subscription gauges are read now.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let metrics = &state.hub.metrics;
    let pool = state.pool.state();
    metrics.db_pool_connections.set(i64::from(pool.connections));
    metrics.db_pool_idle.set(i64::from(pool.idle_connections));
    match state.hub.registry.send(StatsQuery).await {
        Ok(stats) => metrics.subscriptions.set(stats.subscriptions as i64),
        Err(e) => tracing::warn!(error = %e, "registry unavailable for metrics"),
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render())
}
